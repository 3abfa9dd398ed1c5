"""Levels as subsets of level 1, the removed-electrode map, the calibration cache, the presence rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ktc_paths import ktc_dir

from eit_manifold.ktc.calibration import Calibration
from eit_manifold.ktc.calibration_cache import cached_calibration, calibration_from_dict, default_cache_dir
from eit_manifold.ktc.data import read_ktc, removed_electrodes
from eit_manifold.ktc.levels import electrode_mask, level_rows, removed_map, restrict_level
from eit_manifold.ktc.segmenter import apply_presence_rule, fit_presence_rule, presence_errors, presence_features


@pytest.mark.parametrize("level", [1, 2, 4, 7])
def test_restrict_level_equals_reading_the_level(level):
    full = read_ktc(ktc_dir() / "data2.mat", 1)
    direct = read_ktc(ktc_dir() / "data2.mat", level)
    sub = restrict_level(full, level)
    assert np.array_equal(sub.patterns, direct.patterns) and np.array_equal(sub.measurements, direct.measurements)
    assert np.array_equal(sub.data, direct.data) and np.array_equal(sub.currents, direct.currents)
    # level_rows finds the same values in the flattened level-1 vector
    assert np.array_equal(full.data.ravel()[level_rows(full, sub)], direct.data.ravel())
    mask = electrode_mask(sub)
    assert not mask[removed_electrodes(level) - 1].any() and mask[2 * (level - 1):].all()


def test_files_with_nan_give_the_same_level_subset(tmp_path):
    """The challenge's own level files hold NaN where electrodes are removed; the reader drops them."""
    import scipy.io

    raw = scipy.io.loadmat(ktc_dir() / "data1.mat")
    u = raw["Uel"].reshape(76, 31).copy()
    level = 3
    sub = read_ktc(ktc_dir() / "data1.mat", level)
    nan = np.ones_like(u, dtype=bool)
    nan[np.ix_(sub.patterns, sub.measurements)] = False
    u[nan] = np.nan
    scipy.io.savemat(tmp_path / "d.mat", {"Inj": raw["Inj"], "Mpat": raw["Mpat"], "Uel": u.reshape(-1, 1)})
    again = read_ktc(tmp_path / "d.mat", level)
    assert np.array_equal(again.data, sub.data) and np.array_equal(again.patterns, sub.patterns)
    with pytest.raises(ValueError, match="no level-1 subset"):
        restrict_level(sub, 1)


def test_removed_map_marks_the_removed_side():
    mask = np.ones(32, dtype=bool)
    assert np.all(removed_map(mask, 16) == 0)
    assert np.allclose(removed_map(~mask, 16)[np.hypot(*np.meshgrid(np.arange(16) - 7.5, np.arange(16) - 7.5)) < 7],
                       1.0)
    mask[:12] = False  # level 7: electrodes 1-12, from the top (90 degrees) counter-clockwise
    image = removed_map(mask, 32)
    assert image.shape == (32, 32) and 0 <= image.min() and image.max() <= 1
    # electrodes 1-12 span 90-214 degrees: the upper left is gone (150 degrees: pixel 9, 4), the lower
    # right kept (-45 degrees: pixel 24, 24), the top (88 degrees, between electrodes 32 and 1) is the edge
    assert image[9, 4] > 0.9 and image[24, 24] < 0.05 and 0.3 < image[2, 16] < 0.9
    with pytest.raises(ValueError, match="shape"):
        removed_map(np.ones(16, bool), 8)


def _toy_calibration() -> Calibration:
    return Calibration(0.73, np.linspace(1e-4, 2e-4, 32), 0.019, electrode_width=np.full(32, 0.015),
                       angle_offsets=np.linspace(0, 1e-3, 32), offsets=np.arange(31) * 1e-3, currents="nominal",
                       stages=[{"stage": "shared", "sigma": 0.7}])


def test_calibration_cache_reuses_checks_and_recomputes(tmp_path, monkeypatch):
    import eit_manifold.ktc.calibration_cache as cc

    calls = []

    def fake(ref, mesh=None, per_electrode=True, **kw):
        calls.append(per_electrode)
        return _toy_calibration()

    monkeypatch.setattr(cc, "calibrate", fake)
    monkeypatch.setattr(cc, "ktc_mesh", lambda *a, **k: None)
    ref_path = tmp_path / "ref.mat"
    ref_path.write_bytes((ktc_dir() / "ref.mat").read_bytes())
    ref = read_ktc(ref_path, 1)
    a, hit_a = cached_calibration(ref, ref_path, cache_dir=tmp_path / "c")
    b, hit_b = cached_calibration(ref, ref_path, cache_dir=tmp_path / "c")
    assert (hit_a, hit_b) == (False, True) and len(calls) == 1
    assert b.to_dict() == a.to_dict() and b.mesh_options == a.mesh_options
    # another setting, another level or another file content: computed again, never the stale entry
    cached_calibration(ref, ref_path, per_electrode=False, cache_dir=tmp_path / "c")
    cached_calibration(read_ktc(ref_path, 2), ref_path, cache_dir=tmp_path / "c")
    assert len(calls) == 3
    ref_path.write_bytes(ref_path.read_bytes() + b"\0")
    assert cached_calibration(ref, ref_path, cache_dir=tmp_path / "c")[1] is False and len(calls) == 4
    # a corrupt or foreign entry is recomputed and replaced
    for entry in (tmp_path / "c").glob("*.json"):
        entry.write_text("{not json")
    assert cached_calibration(ref, ref_path, cache_dir=tmp_path / "c")[1] is False
    entry = next(e for e in (tmp_path / "c").glob("*.json") if e.read_text().startswith("{\n"))
    stored = json.loads(entry.read_text())
    stored["provenance"]["settings"]["per_electrode"] = "other"
    entry.write_text(json.dumps(stored))
    n = len(calls)
    assert cached_calibration(ref, ref_path, cache_dir=tmp_path / "c")[1] is False and len(calls) == n + 1
    # disabled: always computed, nothing written
    assert cached_calibration(ref, ref_path, cache_dir=tmp_path / "d", use_cache=False)[1] is False
    assert not (tmp_path / "d").exists()
    monkeypatch.setenv("EIT_MANIFOLD_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env" / "ktc-calibration"
    monkeypatch.delenv("EIT_MANIFOLD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "eit-manifold" / "ktc-calibration"


def test_calibration_round_trips_through_its_dict():
    from dataclasses import asdict

    cal = _toy_calibration()
    again = calibration_from_dict({**cal.to_dict(), "mesh_options": asdict(cal.mesh_options)})
    assert again.to_dict() == cal.to_dict() and again.tank() == cal.tank()


def test_presence_rule_is_fitted_and_applied():
    rng = np.random.default_rng(0)
    truths = np.zeros((40, 32, 32), np.uint8)
    labels = np.zeros_like(truths)
    prob = np.full((40, 3, 32, 32), 1 / 3, np.float32)
    for i in range(40):
        if i % 2:  # a true conductive target, found
            truths[i, 5:15, 5:15] = 2
            labels[i, 6:15, 5:15] = 2
            prob[i, 2, 6:15, 5:15] = 0.9
        else:  # no conductive target; the network leaves a small unsure speck on some
            n = int(rng.integers(0, 4))
            labels[i, 20:20 + n, 20:22] = 2
            prob[i, 2, 20:20 + n, 20:22] = 0.4
    features = presence_features(labels, prob)
    assert features["area"][1, 1] == 90 and np.isclose(features["mass"][1, 1], 81.0)
    rule = fit_presence_rule(features, truths)
    assert rule["errors"][1] == 0 and rule["errors_before"][1] > 0
    assert presence_errors(rule, features, truths) == [0, 0]
    fixed = apply_presence_rule(labels, prob, rule)
    assert not (fixed[::2] == 2).any() and np.array_equal(fixed[1::2], labels[1::2])
    assert apply_presence_rule(labels, prob, None) is labels
