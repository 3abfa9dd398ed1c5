"""simulate --dim 3 and reconstruct on 3-D files: format, errors, Gauss-Newton and TV on voxels, voxel gradient."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from eit_manifold.cli import app
from eit_manifold.operators.eit import MeshOptions, Tank
from eit_manifold.operators.eit.data_file import read_measurements
from eit_manifold.operators.eit3d import CylinderTank, create_cylinder_mesh

runner = CliRunner()
TANK_ARGS = ["--dim", "3", "--electrodes", "8", "--electrode-width", "0.3", "--height", "1.0", "--water-level", "0.8",
             "--electrode-bottom", "0.2", "--electrode-top", "0.5"]


TANK = CylinderTank(Tank(n_electrodes=8, electrode_width=0.3), height=1.0, water_level=0.8, electrode_bottom=0.2,
                    electrode_top=0.5)


def test_simulate_3d_writes_the_measurement_format_and_reconstructs(tmp_path):
    # small user meshes (.msh): simulation and reconstruction meshes differ
    create_cylinder_mesh(TANK, MeshOptions(0.2, 3.0, 2.0), msh_file=tmp_path / "sim.msh")
    create_cylinder_mesh(TANK, MeshOptions(0.3, 2.0, 2.0), msh_file=tmp_path / "rec.msh")
    out = tmp_path / "d.npz"
    res = runner.invoke(app, ["simulate", *TANK_ARGS, "--mesh", str(tmp_path / "sim.msh"), "--noise", "0.001",
                              "--seed", "1",
                              "--out", str(out), "--xdmf", str(tmp_path / "d.xdmf"), "--plot", str(tmp_path / "d.png")])
    assert res.exit_code == 0, res.output
    data = read_measurements(out)  # validated like every measurement file
    assert data.measurements.shape == (8, 8)
    tank = CylinderTank.from_dict(json.loads(str(data.extras["tank3d"])))
    assert np.allclose(tank.electrode_heights, [[0.2, 0.5]] * 8) and tank.water_level == 0.8
    assert np.allclose(data.electrode_potentials.sum(axis=1), 0, atol=1e-12)
    assert (tmp_path / "d.h5").is_file() and (tmp_path / "d.png").stat().st_size > 1000
    rec = tmp_path / "rec"
    res = runner.invoke(app, ["reconstruct", "--data", str(out), "--method", "gauss-newton",
                              "--mesh", str(tmp_path / "rec.msh"),
                              "--iterations", "2", "--out", str(rec)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((rec / "metrics.json").read_text())
    voxels = np.load(rec / "conductivity.npy")
    assert voxels.ndim == 3 and metrics["dim"] == 3
    # the fit explains the data better than the best homogeneous conductivity
    assert metrics["details"]["whitened_residual"][-1] < metrics["details"]["whitened_residual"][0]
    assert metrics["metrics"]["relative_l2"] < 0.5
    # TV on the same voxels: also better than homogeneous, and a different image than Gauss-Newton
    res = runner.invoke(app, ["reconstruct", "--data", str(out), "--method", "tv", "--mesh", str(tmp_path / "rec.msh"),
                              "--iterations", "2", "--out", str(tmp_path / "tv")])
    assert res.exit_code == 0, res.output
    tv = json.loads((tmp_path / "tv" / "metrics.json").read_text())
    assert tv["details"]["method"] == "tv" and tv["metrics"]["relative_l2"] < 0.5
    assert tv["details"]["whitened_residual"][-1] < tv["details"]["whitened_residual"][0]
    assert not np.allclose(np.load(tmp_path / "tv" / "conductivity.npy"), voxels, equal_nan=True)
    res = runner.invoke(app, ["reconstruct", "--data", str(out), "--method", "constant", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "gauss-newton or tv" in str(res.exception or res.output)


def test_voxel_gradient_is_exact_on_linear_fields():
    from eit_manifold.baselines.eit3d import voxel_basis, voxel_gradient
    from eit_manifold.operators.eit.forward import CEMForwardModel
    from eit_manifold.operators.eit3d import tank_mesh_3d

    model = CEMForwardModel(tank_mesh_3d(TANK, MeshOptions(0.4, 2.0, 2.0)))
    basis = voxel_basis(model, (3, 6, 6))
    G = voxel_gradient(basis)
    n = basis.size
    assert G.shape == (3 * n, n)
    z, y, x = basis.centres[:, 2], basis.centres[:, 1], basis.centres[:, 0]
    g = G @ (2.0 * z - 3.0 * y + 5.0 * x)
    for block, value in zip(g.reshape(3, n), (2.0, 3.0, 5.0), strict=True):
        # each difference is either the field's slope along its axis or 0 (no active neighbour);
        # the y axis counts rows downwards (row 0 at the top), hence +3 for -3 y
        nonzero = block[np.abs(block) > 1e-9]
        assert nonzero.size > 0 and np.allclose(np.abs(nonzero), value)
    assert np.allclose(G @ np.ones(n), 0)


def test_3d_options_without_dim_3_are_an_error(tmp_path):
    out = tmp_path / "d.npz"
    res = runner.invoke(app, ["simulate", "--electrode-top", "0.5", "--out", str(out)])
    # a ValueError, which the CLI's main prints in one line with exit status 2 (tests/test_simulate.py)
    assert isinstance(res.exception, ValueError) and "--dim 3" in str(res.exception)
    res = runner.invoke(app, ["simulate", *TANK_ARGS[:-2], "--electrode-top", "1.5", "--out", str(out)])
    assert isinstance(res.exception, ValueError) and "electrode heights" in str(res.exception)
    assert not out.exists()
