"""The posterior command (blur and EIT), its bad-input errors, and the Gaussian baselines."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from eit_manifold.baselines.laplace import tikhonov_posterior
from eit_manifold.operators.blur import GaussianBlur

CLI = [sys.executable, "-c", "from eit_manifold.cli import main; main()"]
FAST = ["--samples", "12", "--burn-in", "6", "--chains", "2", "--descent-iter", "2", "--importance-samples", "16"]


def test_blur_posterior_command_writes_every_output(tmp_path):
    out = tmp_path / "post"
    proc = subprocess.run([*CLI, "posterior", "--operator", "blur", "--heldout", "2", *FAST, "--seed", "1",
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = {k: np.load(out / f"{k}.npy") for k in ("mean", "std", "q05", "q95")}
    assert all(v.shape == (64, 64) and np.isfinite(v).all() for v in stats.values())
    assert (stats["std"] >= 0).all() and (stats["q05"] <= stats["q95"] + 1e-12).all()
    probs = np.load(out / "chart_probabilities.npy")
    assert probs.shape == (2,) and abs(probs.sum() - 1) < 1e-12
    samples = np.load(out / "samples.npz")
    assert samples["images"].shape[1:] == (64, 64) and abs(samples["weights"].sum() - 1) < 1e-9
    diag = json.loads((out / "diagnostics.json").read_text())
    assert {"ess_min", "rhat_max", "acceptance_rate", "seconds"} <= set(diag["charts"][0])
    # 12 draws per chain cannot reach 100 effective samples: the warning must say so
    assert any("ESS" in w for w in diag["warnings"]) and "warning: chart" in proc.stdout
    assert 0 <= diag["truth"]["coverage_90"] <= 1
    assert (out / "posterior.png").stat().st_size > 10_000


def test_bad_blur_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, data=np.zeros((64, 64)), kernel_size=20, kernel_std=7.5, background=0.5)
    out = tmp_path / "never"
    proc = subprocess.run([*CLI, "posterior", "--operator", "blur", "--data", str(bad), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "noise_std" in proc.stderr and str(bad) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
    np.savez(bad, data=np.zeros((64, 64)), noise_std=-1.0, kernel_size=20, kernel_std=7.5, background=0.5)
    proc = subprocess.run([*CLI, "posterior", "--operator", "blur", "--data", str(bad), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "'noise_std'" in proc.stderr and "-1.0" in proc.stderr
    proc = subprocess.run([*CLI, "posterior", "--operator", "blur", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "--heldout" in proc.stderr


def test_blur_file_round_trip(tmp_path):
    from eit_manifold.data.images import heldout_image
    from eit_manifold.pipelines.posterior import PosteriorConfig, blur_problem, write_blur_file

    truth, _ = heldout_image("bars", 0, 64)
    write_blur_file(tmp_path / "b.npz", truth, 0.1, seed=3)
    prob = blur_problem(PosteriorConfig(data=str(tmp_path / "b.npz"), operator="blur"))
    assert np.array_equal(prob.truth, truth) and prob.info["noise_std"] == 0.1
    # the residual of the truth is the (whitened) noise: about N(0, 1) per pixel
    r = prob.residual(torch.as_tensor(truth)[None])
    assert 0.9 < float(r.std()) < 1.1


def test_eit_posterior_command_on_a_small_mesh(tmp_path):
    sim = tmp_path / "d.npz"
    subprocess.run([*CLI, "simulate", "--phantom", "balls", "--seed", "1", "--mesh-size", "0.2", "--out", str(sim)],
                   check=True, capture_output=True)
    out = tmp_path / "post"
    proc = subprocess.run([*CLI, "posterior", "--data", str(sim), "--mesh-size", "0.25", *FAST, "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mean = np.load(out / "mean.npy")
    outside = np.isnan(mean)
    assert 0.15 < outside.mean() < 0.25  # 1 - pi/4 of the square lies outside the tank
    assert np.nanmin(mean) >= 0.2 - 1e-9 and np.nanmax(mean) <= 1.8 + 1e-9  # conductivities in the bounds
    assert np.array_equal(np.isnan(np.load(out / "std.npy")), outside)
    diag = json.loads((out / "diagnostics.json").read_text())
    assert diag["problem"]["noise_level"] == 0.01 and "coverage_90" in diag["truth"]


def test_tikhonov_posterior_is_the_exact_gaussian_posterior():
    op = GaussianBlur(5, 1.2, background=0.5)
    y = 0.5 + 0.1 * torch.randn(12, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    post = tikhonov_posterior(y, op, noise_std=0.1, alpha=0.05)
    A = np.kron(op.matrix_1d(12).numpy(), op.matrix_1d(10).numpy())  # row-major vec(K_H X K_W^T)
    cov = 0.1**2 * np.linalg.inv(A.T @ A + post["alpha"] * np.eye(120))
    mean = 0.5 + cov @ A.T @ (y.numpy().ravel() - 0.5) / 0.1**2
    assert np.allclose(post["std"].ravel(), np.sqrt(np.diag(cov)), rtol=1e-8)
    assert np.allclose(post["mean"].ravel(), mean, atol=1e-8)
    assert np.allclose(post["q95"] - post["q05"], 2 * 1.6448536269514722 * post["std"])


@pytest.mark.slow
def test_gauss_newton_laplace_is_most_certain_near_the_electrodes(tmp_path):
    from eit_manifold.baselines.laplace import gauss_newton_laplace
    from eit_manifold.pipelines.reconstruct import load_problem

    sim = tmp_path / "d.npz"
    subprocess.run([*CLI, "simulate", "--phantom", "balls", "--seed", "1", "--mesh-size", "0.1", "--out", str(sim)],
                   check=True, capture_output=True)
    prob = load_problem(sim, (64, 64), mesh_size=0.12)
    lap = gauss_newton_laplace(prob)
    std = lap["std"]
    assert np.array_equal(np.isnan(std), ~prob.inside) and np.nanmin(std) > 0
    yy, xx = np.mgrid[0:64, 0:64]
    r = np.hypot((xx + 0.5) / 32 - 1, (yy + 0.5) / 32 - 1)
    assert np.nanmean(std[r > 0.85]) < np.nanmean(std[r < 0.3])  # EIT sensitivity decays inwards


def test_eit_posterior_with_smc_init_on_a_small_mesh(tmp_path):
    sim = tmp_path / "d.npz"
    subprocess.run([*CLI, "simulate", "--phantom", "balls", "--seed", "1", "--mesh-size", "0.2", "--out", str(sim)],
                   check=True, capture_output=True)
    out = tmp_path / "post"
    proc = subprocess.run([*CLI, "posterior", "--data", str(sim), "--mesh-size", "0.25", "--init", "smc",
                           "--particles", "8", "--samples", "8", "--chains", "2", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    diag = json.loads((out / "diagnostics.json").read_text())
    for c in diag["charts"]:
        smc = c["smc"]
        assert smc["particles"] == 8 and smc["temperatures"][-1] == 1.0 and len(smc["rounds"]) >= 1
        assert np.isfinite(smc["log_evidence"]) and c["draws_per_chain"] == 8
    assert np.isfinite(np.load(out / "mean.npy")).any()


@pytest.mark.parametrize(("extra", "needle"), [(["--init", "tempering"], "'tempering'"),
                                               (["--init", "smc", "--local-steps", "1"], "--local-steps"),
                                               (["--particles", "4"], "--particles")])
def test_bad_init_options_are_one_line_errors(tmp_path, extra, needle):
    out = tmp_path / "never"
    proc = subprocess.run([*CLI, "posterior", "--operator", "blur", "--heldout", "0", *extra, "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
