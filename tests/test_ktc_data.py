"""Reading KTC2023 files, the challenge levels (electrodes removed by hand here) and NaN handling."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from ktc_paths import ktc_dir

from eit_manifold.ktc.calibration import ktc_tank
from eit_manifold.ktc.data import (
    read_ktc,
    read_raw,
    read_truth,
    removed_electrodes,
    restrict_like,
    select_level,
    to_measurement_data,
)
from eit_manifold.operators.eit.data_file import read_measurements, write_measurements


def test_read_reference_shapes_and_patterns():
    inj, mpat, u = read_raw(ktc_dir() / "ref.mat")
    assert inj.shape == (76, 32) and mpat.shape == (31, 32) and u.shape == (76, 31)
    assert np.allclose(inj.sum(axis=1), 0)
    # Adjacent differences: row m is e_m - e_{m+1}.
    assert np.array_equal(mpat, np.eye(32)[:31] - np.eye(32, k=1)[:31])
    # Only odd electrodes (1-based) inject; the first pattern drives 1 -> 3.
    assert np.all(inj[:, 1::2] == 0)
    assert inj[0, 0] > 0 and inj[0, 2] < 0
    assert np.all(np.isfinite(u))


def test_data_file_matches_reference_layout():
    ref = read_ktc(ktc_dir() / "ref.mat")
    data = read_ktc(ktc_dir() / "data1.mat")
    assert data.shape == ref.shape == (76, 31)
    assert np.allclose(data.currents, ref.currents)
    assert not np.allclose(data.data, ref.data)  # targets change the voltages


def _expected_kept(inj: np.ndarray, level: int) -> tuple[list[int], list[int]]:
    """Independent bookkeeping with loops: which patterns / measurements survive level ``level``."""
    gone = set(range(1, 2 * (level - 1) + 1))
    patterns = [p for p in range(76) if not any(inj[p, e - 1] != 0 for e in gone)]
    measurements = [m for m in range(31) if (m + 1) not in gone and (m + 2) not in gone]
    return patterns, measurements


@pytest.mark.parametrize("level", [1, 2, 4, 7])
def test_level_removes_electrodes_like_the_challenge(level):
    inj, mpat, u = read_raw(ktc_dir() / "data2.mat")
    patterns, measurements = _expected_kept(inj, level)
    clean = select_level(inj, mpat, u, level)
    assert clean.patterns.tolist() == patterns
    assert clean.measurements.tolist() == measurements
    assert np.array_equal(clean.data, u[np.ix_(patterns, measurements)])
    # The challenge's files mark removed values with NaN: the same result, no NaN used as data.
    nan = u.copy()
    nan[[p for p in range(76) if p not in patterns]] = np.nan
    nan[:, [m for m in range(31) if m not in measurements]] = np.nan
    marked = select_level(inj, mpat, nan, level)
    assert np.array_equal(marked.data, clean.data)
    assert np.all(np.isfinite(marked.data))
    removed = removed_electrodes(level) - 1
    assert np.all(marked.currents[:, removed] == 0)
    assert np.all(marked.measurement_matrix[:, removed] == 0)


def test_level_two_counts():
    inj, mpat, u = read_raw(ktc_dir() / "ref.mat")
    kept = select_level(inj, mpat, u, 2)
    assert removed_electrodes(2).tolist() == [1, 2]
    assert kept.shape[1] == 29  # measurements 1 (e1-e2) and 2 (e2-e3) go
    assert kept.shape[0] == 76 - int(np.sum(inj[:, 0] != 0))  # every pattern through electrode 1 goes


def test_stray_nan_is_an_error_not_data():
    inj, mpat, u = read_raw(ktc_dir() / "ref.mat")
    u = u.copy()
    u[10, 20] = np.nan
    with pytest.raises(ValueError, match="non-finite value.*pattern 11 measurement 21"):
        select_level(inj, mpat, u, 1)


@pytest.mark.parametrize("level", [0, 8, -1, 1.5, True])
def test_level_out_of_range(level):
    with pytest.raises(ValueError, match=r"1\.\.7"):
        read_ktc(ktc_dir() / "ref.mat", level)


def test_missing_key_and_bad_shape_are_named(tmp_path):
    bad = tmp_path / "bad.mat"
    scipy.io.savemat(bad, {"Inj": np.zeros((32, 76)), "Mpat": np.zeros((32, 31))})
    with pytest.raises(ValueError, match="lacks key.*Uel"):
        read_raw(bad)
    scipy.io.savemat(bad, {"Inj": np.zeros((32, 75)), "Mpat": np.zeros((32, 31)), "Uel": np.zeros((2356, 1))})
    with pytest.raises(ValueError, match=r"'Inj' must have shape \(32, 76\), got \(32, 75\)"):
        read_raw(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_raw(tmp_path / "none.mat")


def test_truth_reading():
    truth = read_truth(ktc_dir() / "true1.mat")
    assert truth.shape == (256, 256)
    assert set(np.unique(truth).tolist()) <= {0, 1, 2}
    assert truth[128, 128] in (0, 1, 2) and (truth == 0).mean() > 0.5


def test_restrict_and_project_format_round_trip(tmp_path):
    data = read_ktc(ktc_dir() / "data3.mat", 3)
    ref = restrict_like(read_ktc(ktc_dir() / "ref.mat", 1), data)
    assert ref.shape == data.shape and np.array_equal(ref.patterns, data.patterns)
    md = to_measurement_data(data, ktc_tank())
    write_measurements(tmp_path / "d.npz", md)
    back = read_measurements(tmp_path / "d.npz")
    assert np.array_equal(back.measurements, data.data)
    assert int(back.extras["level"]) == 3
    assert back.tank().n_electrodes == 32
