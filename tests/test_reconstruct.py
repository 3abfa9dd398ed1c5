"""EIT reconstruction: on-atlas recovery, the reconstruct command end to end, baselines, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from eit_manifold.manifold import load_atlas
from eit_manifold.operators.eit import EITOperator, MeshOptions, Tank, image_to_conductivity
from eit_manifold.operators.eit.data_file import MeasurementData
from eit_manifold.pipelines.reconstruct import (
    ReconstructConfig,
    make_problem,
    reconstruct_problem,
)

CLI = [sys.executable, "-c", "from eit_manifold.cli import main; main()"]


@pytest.fixture(scope="module")
def tiny_atlas(tmp_path_factory):
    """A small balls atlas (32x32, K=1, d=6), trained in a few seconds."""
    out = tmp_path_factory.mktemp("atlas") / "tiny"
    proc = subprocess.run(
        [*CLI, "train", "--dataset", "balls", "--out", str(out), "--size", "32", "--n-train", "256", "--epochs", "6",
         "--charts", "1", "--latent-dim", "6", "--conv-hidden", "16", "--hidden", "32", "--blocks", "2",
         "--pretrain-epochs", "1", "--lipschitz-epochs", "1", "--overlap-epochs", "1", "--no-progress"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def operator():
    return EITOperator(Tank(), mesh=MeshOptions(0.12, 5.0, 3.0), image_shape=(32, 32))


def _data(op: EITOperator, measurements: np.ndarray, truth: np.ndarray | None = None) -> MeasurementData:
    tank = op.tank
    extras = {} if truth is None else {"conductivity_image": truth}
    return MeasurementData(
        currents=op.model.currents, electrode_potentials=np.zeros_like(op.model.currents), measurements=measurements,
        measurement_matrix=op.model.measurement_matrix, electrode_angles=tank.electrode_angles,
        electrode_width=tank.widths.copy(), contact_impedance=tank.impedances.copy(), radius=tank.radius,
        noise_level=0.0, extras=extras,
    )


def test_phantom_on_the_atlas_is_recovered(tiny_atlas, operator):
    atlas = load_atlas(tiny_atlas)
    with torch.no_grad():
        x0 = atlas.charts[0].decode(torch.tensor([[0.3, -0.4, 0.2, 0.5, -0.1, 0.0]]))
    sigma0 = image_to_conductivity(x0, 0.2, 1.8, clip=True)
    data = _data(operator, operator(sigma0)[0].numpy(), sigma0[0].numpy())
    config = ReconstructConfig(data="-", atlas=str(tiny_atlas), starts=4, iterations=60, image_size=32, seed=0)
    result = reconstruct_problem(make_problem(data, operator), config)
    assert result["metrics"]["relative_l2"] < 1e-2
    assert result["metrics"]["relative_data_misfit"] < 1e-3


def test_reconstruct_command_end_to_end(tiny_atlas, tmp_path):
    # a phantom the small atlas can represent, simulated on a finer mesh than the reconstruction's
    with torch.no_grad():
        x0 = load_atlas(tiny_atlas).charts[0].decode(torch.tensor([[-0.5, 0.2, 0.4, -0.3, 0.1, 0.6]]))
    np.save(tmp_path / "x.npy", x0[0].clamp(0, 1).numpy().astype(float))
    data = tmp_path / "d.npz"
    sim = subprocess.run([*CLI, "simulate", "--phantom", "image", "--phantom-image", str(tmp_path / "x.npy"),
                          "--mesh-size", "0.08", "--noise", "0.001", "--out", str(data)],
                         capture_output=True, text=True)
    assert sim.returncode == 0, sim.stderr[-2000:]
    out = tmp_path / "rec"
    proc = subprocess.run([*CLI, "reconstruct", "--data", str(data), "--atlas", str(tiny_atlas), "--image-size", "32",
                           "--mesh-size", "0.12", "--starts", "2", "--iterations", "20", "--no-warm-start",
                           "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = np.load(out / "conductivity.npy")
    assert image.shape == (32, 32) and np.isnan(image[0, 0]) and np.all(np.isfinite(image[16, 4:28]))
    assert 0.2 <= np.nanmin(image) and np.nanmax(image) <= 1.8
    summary = json.loads((out / "metrics.json").read_text())
    details = summary["details"]
    # the data misfit (the square root of the objective) falls at least tenfold from the start
    assert np.sqrt(details["objective_start"] / details["objective_final"]) >= 10
    assert (out / "reconstruction.png").stat().st_size > 1000 and (out / "conductivity.xdmf").is_file()


def test_gauss_newton_baseline_improves_on_homogeneous(operator):
    truth = torch.full((1, 32, 32), 1.0, dtype=torch.float64)
    truth[0, 8:14, 18:26] = 1.7
    data = _data(operator, operator(truth)[0].numpy(), truth[0].numpy())
    data.noise_level = 0.001
    result = reconstruct_problem(make_problem(data, operator), ReconstructConfig(data="-", method="gauss-newton",
                                                                                  image_size=32, iterations=3))
    homogeneous = np.linalg.norm(truth[0].numpy() - result["details"]["sigma0"]) / np.linalg.norm(truth[0].numpy())
    assert result["metrics"]["relative_l2"] < 0.8 * homogeneous
    assert result["metrics"]["relative_data_misfit"] < 0.01


def test_mismatched_file_is_a_clear_error(operator, tmp_path):
    tank8 = Tank(n_electrodes=8, electrode_width=0.3)
    small = EITOperator(tank8, mesh=MeshOptions(0.3, 3.0, 2.0), image_shape=(32, 32))
    data = _data(small, np.zeros(small.data_shape))
    with pytest.raises(ValueError, match="8 electrodes"):
        make_problem(data, operator)
    from eit_manifold.operators.eit.mesh import create_tank_mesh

    create_tank_mesh(tank8, MeshOptions(0.3, 3.0, 2.0), msh_file=tmp_path / "m8.msh")
    sim = tmp_path / "d.npz"
    subprocess.run([*CLI, "simulate", "--mesh-size", "0.3", "--out", str(sim)], check=True, capture_output=True)
    proc = subprocess.run([*CLI, "reconstruct", "--data", str(sim), "--method", "gauss-newton", "--mesh",
                           str(tmp_path / "m8.msh"), "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2 and "electrodes" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_same_mesh_warns_of_inverse_crime(operator):
    data = _data(operator, np.ones(operator.data_shape))
    data.extras["conductivity"] = np.ones(operator.n_cells)
    with pytest.warns(UserWarning, match="inverse crime"):
        problem = make_problem(data, operator)
    assert any("inverse crime" in note for note in problem.warnings)  # also recorded in metrics.json


def test_report_writes_tables_for_every_case_and_method(tmp_path):
    from eit_manifold.pipelines.report import ReportConfig, run_report

    config = ReportConfig(n=2, noise=(0.01,), out=str(tmp_path), out_of_family=("disk",),
                          methods={"gauss-newton": ("gauss-newton", "balls"), "tv": ("tv", "balls")})
    summary = run_report(config)
    items = json.loads((tmp_path / "results.json").read_text())["items"]
    assert sorted((i["case"], i["method"]) for i in items) == [(c, m) for c in range(3) for m in ("gauss-newton", "tv")]
    stats = summary["balls (held-out)"]["0.01"]["gauss-newton"]["relative_l2"]
    assert len(stats["values"]) == 2 and 0 < stats["mean"] < 0.5
    assert "| 0.01 | tv |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "reconstructions.png").stat().st_size > 1000


def test_heldout_problems_are_the_reports_phantoms() -> None:
    # The validation scripts' problems: the phantom's truth, data with the stated noise, the
    # coarse operator; the same index gives the same data.
    from eit_manifold.pipelines.reconstruct import heldout_problems

    (i, a), (j, b) = list(heldout_problems([101, 101]))
    assert i == j == 101
    assert a.truth is not None and np.nanmax(a.truth) > np.nanmin(a.truth)
    assert a.operator.n_cells < 20_000  # coarse, not the simulation mesh
    assert np.array_equal(a.data.measurements, b.data.measurements)
    clean = a.operator(torch.from_numpy(np.nan_to_num(a.truth, nan=1.0))[None]).numpy()[0]
    rel = np.linalg.norm(a.data.measurements - clean) / np.linalg.norm(clean)
    assert 0.005 < rel < 0.05  # 1 % noise plus the model difference between the meshes


def test_atlas_picks_its_end_point_by_the_posterior_under_the_files_noise(tiny_atlas, operator):
    import math

    from eit_manifold.operators.noise import RelativeNoise
    from eit_manifold.pipelines.reconstruct import neg_log_likelihood

    with torch.no_grad():
        x0 = load_atlas(tiny_atlas).charts[0].decode(torch.tensor([[0.3, -0.4, 0.2, 0.5, -0.1, 0.0]]))
    sigma0 = image_to_conductivity(x0, 0.2, 1.8, clip=True)
    clean = operator(sigma0)[0].numpy()
    data = _data(operator, RelativeNoise(0.01).sample(clean, np.random.default_rng(0)), sigma0[0].numpy())
    for unknown in (0.0, float("nan")):  # no noise level: no likelihood, the descent keeps the lowest misfit
        data.noise_level = unknown
        assert neg_log_likelihood(make_problem(data, operator), 0.2, 1.8) is None
    config = ReconstructConfig(data="-", atlas=str(tiny_atlas), starts=2, iterations=3, image_size=32,
                               warm_start=False)
    assert reconstruct_problem(make_problem(data, operator), config)["details"]["selection"] == "objective"
    data.noise_level = 0.01
    problem = make_problem(data, operator)
    # at the truth the whitened misfit is half a chi-square with m degrees of freedom
    m = clean.size
    nll = float(neg_log_likelihood(problem, 0.2, 1.8)(x0.double())[0])
    assert abs(nll - m / 2) < 4 * math.sqrt(m / 2)
    details = reconstruct_problem(problem, config)["details"]
    assert details["selection"] == "posterior" and 0 <= details["best_start"] < len(details["objective_per_start"])
    objective = reconstruct_problem(problem, ReconstructConfig(**{**config.__dict__, "select": "objective"}))
    assert objective["details"]["selection"] == "objective"
    with pytest.raises(ValueError, match="--select"):
        ReconstructConfig(data="-", select="best")


def test_atlas_mean_recovers_an_atlas_phantom_and_needs_a_noise_level(tiny_atlas, operator, monkeypatch, tmp_path):
    import eit_manifold.pipelines.reconstruct as rec
    from eit_manifold.operators.noise import RelativeNoise
    from eit_manifold.validation import InputError

    # a shorter chain than the default keeps the test fast; the estimator is the same
    monkeypatch.setattr(rec, "MEAN_BURN_IN", 40)
    monkeypatch.setattr(rec, "MEAN_DRAWS", 40)
    with torch.no_grad():
        x0 = load_atlas(tiny_atlas).charts[0].decode(torch.tensor([[0.3, -0.4, 0.2, 0.5, -0.1, 0.0]]))
    sigma0 = image_to_conductivity(x0, 0.2, 1.8, clip=True)
    clean = operator(sigma0)[0].numpy()
    data = _data(operator, RelativeNoise(0.002).sample(clean, np.random.default_rng(1)), sigma0[0].numpy())
    data.noise_level = 0.002
    config = ReconstructConfig(data="-", method="atlas-mean", atlas=str(tiny_atlas), starts=2, image_size=32,
                               warm_start=False)
    assert config.iterations == 20  # descent steps that move the chains' starts
    result = reconstruct_problem(make_problem(data, operator), config)
    d = result["details"]
    assert d["sampler"] == {"chains": 4, "burn_in": 40, "draws": 40, "starts": 2, "descent_iter": 20}
    assert abs(sum(d["chart_probabilities"]) - 1) < 1e-9
    assert result["metrics"]["relative_l2"] < 0.05  # the truth is an atlas image, noise 0.2 %
    assert 0.2 <= np.nanmin(result["image"]) and np.nanmax(result["image"]) <= 1.8
    # a file without a noise level has no likelihood: a one-line input error before any work
    path = tmp_path / "no_noise.npz"
    np.savez(path, currents=operator.model.currents, electrode_potentials=np.zeros_like(operator.model.currents),
             measurements=clean, measurement_matrix=operator.model.measurement_matrix,
             electrode_angles=operator.tank.electrode_angles, electrode_width=operator.tank.widths,
             contact_impedance=operator.tank.impedances, radius=operator.tank.radius, noise_level=0.0)
    with pytest.raises(InputError, match=r"no_noise\.npz: key 'noise_level' is 0\.0"):
        rec.check_inputs([str(path)], ReconstructConfig(data=str(path), method="atlas-mean", atlas=str(tiny_atlas),
                                                        image_size=32, out=str(tmp_path / "o")))
