"""Training: two circles (coverage and sample quality), exact resume, CLI smoke test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eit_manifold.data import distance_to_manifold, make_dataset
from eit_manifold.manifold import load_atlas
from eit_manifold.manifold.training import AtlasTrainConfig, seed_neighbourhoods
from eit_manifold.pipelines.train import default_job, evaluate, run_train


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_seed_neighbourhoods_stay_on_one_circle() -> None:
    data = torch.from_numpy(make_dataset("two-circles", 1000))
    seeds, assign = seed_neighbourhoods(data, 4)
    assert len(set(seeds.tolist())) == 4
    side = (data[:, 0] > 0).long()
    for k in range(4):
        members = side[assign == k]
        assert len(members) > 100
        assert members.min() == members.max(), "a neighbourhood spans both circles"


def test_two_circles_k4(tmp_path) -> None:
    job = default_job("two-circles", seed=0)  # K=4, d=1, 2000 points, 40 epochs
    summary = run_train(job, tmp_path, progress=False, plots=False)
    atlas = load_atlas(tmp_path)
    samples = atlas.sample(2000, torch.Generator().manual_seed(0)).detach().numpy()
    within = (distance_to_manifold("two-circles", samples) < 0.1).mean()
    assert within >= 0.95, f"only {within:.1%} of samples within 0.1 of the circles"
    test = torch.from_numpy(make_dataset("two-circles", 500, "test"))
    with torch.no_grad():
        dist = (atlas.project(test) - test).norm(dim=1)
    assert dist.max() < 0.15
    assert summary["evaluation"]["projection_distance_max"] == pytest.approx(dist.max().item())


@pytest.mark.slow
def test_single_chart_cannot_cover_two_circles(tmp_path) -> None:
    job = default_job("two-circles", charts=1, seed=0)
    run_train(job, tmp_path, progress=False, plots=False)
    ev = evaluate(load_atlas(tmp_path), "two-circles")
    # an interval cannot be mapped injectively onto two circles: either samples leave the
    # circles or some held-out points are far from their projection
    assert ev["sample_within_0.1"] < 0.95 or ev["projection_distance_max"] > 0.15


def _small_job(**kw):
    return default_job(
        "two-circles",
        n_train=200,
        epochs=5,
        pretrain_epochs=1,
        lipschitz_epochs=2,
        overlap_epochs=1,
        checkpoint_every=1,
        hidden=16,
        blocks=2,
        batch_size=64,
        seed=3,
        **kw,
    )


@pytest.mark.parametrize("calibrate_every", [0, 1])
def test_resume_reproduces_uninterrupted_run(tmp_path, calibrate_every: int) -> None:
    job = _small_job(calibrate_every=calibrate_every)
    run_train(job, tmp_path / "full", progress=False, plots=False)
    partial = run_train(job, tmp_path / "split", stop_after=2, progress=False, plots=False)
    assert not partial["finished"] and not (tmp_path / "split" / "atlas.pt").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        run_train(job, tmp_path / "split", progress=False, plots=False)
    resumed = run_train(job, tmp_path / "split", resume=True, progress=False, plots=False)
    assert resumed["finished"]
    full, split = load_atlas(tmp_path / "full"), load_atlas(tmp_path / "split")
    a, b = full.state_dict(), split.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    import json

    full_history = json.loads((tmp_path / "full" / "train.json").read_text())["history"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full_history]


def test_time_boxed_run_saves_the_atlas_it_has_and_resumes(tmp_path) -> None:
    job = _small_job()
    full = run_train(job, tmp_path / "full", progress=False, plots=False)
    boxed = run_train(job, tmp_path / "boxed", stop_after=3, save_partial=True, progress=False, plots=False)
    assert not boxed["finished"] and boxed["stopped_after"] == 3 and "evaluation" in boxed
    checkpoint = torch.load(tmp_path / "boxed" / "checkpoint.pt", weights_only=False)
    saved = load_atlas(tmp_path / "boxed").state_dict()
    for key, value in checkpoint["atlas"].items():
        assert torch.equal(saved[key], value), key  # the atlas is the state at the stop
    resumed = run_train(job, tmp_path / "boxed", resume=True, progress=False, plots=False)
    assert resumed["finished"] and "stopped_after" not in resumed
    a, b = load_atlas(tmp_path / "full").state_dict(), load_atlas(tmp_path / "boxed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["finished"]


def test_resume_rejects_other_config_and_corrupt_checkpoint(tmp_path) -> None:
    job = _small_job()
    run_train(job, tmp_path, stop_after=1, progress=False, plots=False)
    with pytest.raises(ValueError, match="job differs"):
        run_train(_small_job(lr=1e-2), tmp_path, resume=True, progress=False, plots=False)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        run_train(job, tmp_path, resume=True, progress=False, plots=False)


def test_train_config_phases() -> None:
    cfg = AtlasTrainConfig(epochs=10, pretrain_epochs=2, lipschitz_epochs=3, overlap_epochs=2)
    phases = [cfg.phase(e) for e in range(10)]
    assert phases == ["seed"] * 2 + ["mixture"] * 6 + ["overlap"] * 2
    assert [cfg.lipschitz_on(e) for e in range(10)] == [False] * 2 + [True] * 3 + [False] * 5
    assert not any(cfg.recalibrate(e) for e in range(10))
    every2 = AtlasTrainConfig(epochs=10, pretrain_epochs=2, calibrate_every=2)
    assert [e for e in range(10) if every2.recalibrate(e)] == [4, 6, 8]
    with pytest.raises(ValueError, match="epochs"):
        AtlasTrainConfig(epochs=0)


def test_cli_train_and_plot(tmp_path) -> None:
    from typer.testing import CliRunner

    from eit_manifold.cli import app

    out = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "ring",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--n-train",
        "128",
        "--pretrain-epochs",
        "1",
        "--lipschitz-epochs",
        "1",
        "--overlap-epochs",
        "0",
        "--hidden",
        "8",
        "--blocks",
        "1",
        "--seed",
        "1",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "projection_rel_error_mean" in result.output
    for name in ("config.json", "atlas.pt", "checkpoint.pt", "train.json", "loss.png", "atlas.png"):
        assert (out / name).is_file(), name
    result = CliRunner().invoke(app, ["atlas-plot", str(out), "--out", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert np.isfinite(load_atlas(out).weights.numpy()).all()
