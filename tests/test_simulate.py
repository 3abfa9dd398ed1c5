"""The simulate job and its measurement file: keys, validation, no partial output on errors."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from eit_manifold.cli import app
from eit_manifold.operators.eit.data_file import read_measurements
from eit_manifold.pipelines.simulate import SimulateConfig, simulate

runner = CliRunner()


def _simulate(tmp_path, **kw):
    cfg = SimulateConfig(mesh_size=0.15, out=str(tmp_path / "d.npz"), **kw)
    simulate(cfg)
    return read_measurements(cfg.out)


def test_simulate_writes_documented_keys(tmp_path):
    data = _simulate(tmp_path, noise=0.0, plot=str(tmp_path / "p.png"))
    assert data.currents.shape == (16, 16) and data.measurements.shape == (16, 16)
    assert data.measurement_matrix.shape == (16, 16)
    assert np.allclose(data.electrode_potentials.sum(axis=1), 0, atol=1e-12)
    assert np.allclose(data.measurements, data.electrode_potentials @ data.measurement_matrix.T)
    assert data.extras["conductivity"].min() < 1 < data.extras["conductivity"].max()
    assert data.extras["conductivity_image"].shape == (64, 64)
    assert data.tank().to_dict()["n_electrodes"] == 16
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_noise_level_and_seed(tmp_path):
    a = _simulate(tmp_path, noise=0.05, seed=3)
    b = _simulate(tmp_path, noise=0.05, seed=3)
    c = _simulate(tmp_path, noise=0.05, seed=4)
    assert np.array_equal(a.measurements, b.measurements)
    assert not np.array_equal(a.measurements, c.measurements)
    clean = a.extras["measurements_clean"]
    rel = np.linalg.norm(a.measurements - clean, axis=1) / np.linalg.norm(clean, axis=1)
    assert 0.03 < rel.mean() < 0.07


def test_image_phantom_maps_to_sigma_range(tmp_path):
    img = np.zeros((32, 32))
    img[:16] = 1.0  # top half bright
    np.save(tmp_path / "img.npy", img)
    data = _simulate(tmp_path, phantom="image", phantom_image=str(tmp_path / "img.npy"), noise=0.0)
    s = data.extras["conductivity_image"]
    assert np.nanmax(s) == pytest.approx(1.8) and np.nanmin(s) == pytest.approx(0.2)
    assert np.isnan(s[0, 0])  # corner outside the tank


# Bad options and files of simulate (one line, exit 2, nothing written): tests/test_bad_inputs.py.


def test_reading_bad_files(tmp_path):
    data = _simulate(tmp_path, noise=0.0)
    arrays = {k: getattr(data, k) for k in ("currents", "electrode_potentials", "measurements",
                                             "measurement_matrix", "electrode_angles", "electrode_width",
                                             "contact_impedance", "radius", "noise_level")}
    missing = dict(arrays)
    del missing["measurement_matrix"]
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match="measurement_matrix"):
        read_measurements(tmp_path / "missing.npz")
    bad = dict(arrays, measurements=arrays["measurements"][:, :5])
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="'measurements'"):
        read_measurements(tmp_path / "bad.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="corrupt.npz"):
        read_measurements(tmp_path / "corrupt.npz")


def test_cli_help_lists_simulate_options():
    result = runner.invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0
    for opt in ("--electrodes", "--electrode-width", "--contact-impedance", "--injection", "--noise", "--seed"):
        assert opt in result.output
