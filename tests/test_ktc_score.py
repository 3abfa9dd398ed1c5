"""The KTC2023 score (checked against a separable direct convolution) and the segmentation rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ktc_paths import ktc_dir

from eit_manifold.ktc.data import read_truth
from eit_manifold.ktc.score import C1, C2, class_scores, ktc_score, mask_ssim
from eit_manifold.ktc.segmentation import otsu_threshold, otsu_two_thresholds, segment


def _direct_ssim(t: np.ndarray, r: np.ndarray) -> float:
    """Reference: zero-padded 'same' Gaussian convolutions done separably with np.convolve."""
    ws = math.ceil(160)
    g = np.exp(-0.5 * np.arange(-ws, ws + 1) ** 2 / 80.0**2)

    def same(v: np.ndarray) -> np.ndarray:  # full direct convolution, centre part of the input's length
        full = np.convolve(v, g, mode="full")
        return full[ws : ws + v.size]

    def conv(a: np.ndarray) -> np.ndarray:
        return np.apply_along_axis(same, 1, np.apply_along_axis(same, 0, a))

    corr = conv(np.ones_like(t))
    mt, mr = conv(t) / corr, conv(r) / corr
    vt, vr = conv(t * t) / corr - mt**2, conv(r * r) / corr - mr**2
    vtr = conv(t * r) / corr - mt * mr
    return float(np.mean((2 * mt * mr + C1) * (2 * vtr + C2) / ((mt**2 + mr**2 + C1) * (vt + vr + C2))))


def _disk(cx: float, cy: float, rad: float) -> np.ndarray:
    y, x = np.mgrid[0:256, 0:256]
    return (x - cx) ** 2 + (y - cy) ** 2 < rad**2


def test_identical_segmentations_score_one():
    for k in range(1, 5):
        truth = read_truth(ktc_dir() / f"true{k}.mat")
        assert ktc_score(truth, truth) == pytest.approx(1.0, abs=1e-12)


def test_matches_direct_convolution():
    t = _disk(100, 120, 30).astype(float)
    r = _disk(110, 125, 25).astype(float)
    assert mask_ssim(t, r) == pytest.approx(_direct_ssim(t, r), abs=1e-9)


def test_score_properties():
    truth = np.zeros((256, 256), dtype=np.uint8)
    truth[_disk(90, 90, 30)] = 1
    truth[_disk(170, 170, 25)] = 2
    empty = np.zeros_like(truth)
    near = np.roll(truth, 5, axis=1)
    far = np.roll(truth, 60, axis=1)
    s_near, s_far, s_empty = ktc_score(truth, near), ktc_score(truth, far), ktc_score(truth, empty)
    assert 1 > s_near > s_far
    assert s_near > s_empty
    assert ktc_score(near, truth) == pytest.approx(s_near)  # symmetric
    swapped = truth.copy()
    swapped[truth == 1], swapped[truth == 2] = 2, 1
    assert ktc_score(truth, swapped) < s_near  # classes matter
    scores = class_scores(truth, near)
    assert ktc_score(truth, near) == pytest.approx(0.5 * (scores[1] + scores[2]))
    # A class absent from both truth and reconstruction scores 1.
    only_res = np.where(truth == 2, 0, truth).astype(np.uint8)
    assert class_scores(only_res, only_res)[2] == pytest.approx(1.0)


def test_score_rejects_bad_input():
    good = np.zeros((256, 256), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"shape \(256, 256\)"):
        ktc_score(good, np.zeros((128, 128)))
    with pytest.raises(ValueError, match="only the classes 0, 1, 2"):
        ktc_score(good, np.full((256, 256), 3))


def test_otsu_separates_clusters():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0, 0.1, 1000), rng.normal(5, 0.1, 200)])
    t = otsu_threshold(v)
    assert v[:1000].max() < t < v[1000:].min()
    w = np.concatenate([v, rng.normal(-5, 0.1, 200)])
    t1, t2 = otsu_two_thresholds(w)
    assert w[1200:].max() < t1 < w[:1000].min() and w[:1000].max() < t2 < w[1000:1200].min()


@pytest.mark.parametrize("rule", ["otsu-abs", "otsu3"])
def test_segment_signs(rule):
    y, x = np.mgrid[0:64, 0:64]
    inside = (x - 31.5) ** 2 + (y - 31.5) ** 2 < 31**2
    img = np.zeros((64, 64))
    img[(x - 20) ** 2 + (y - 30) ** 2 < 36] = -1.0
    img[(x - 44) ** 2 + (y - 30) ** 2 < 36] = 2.0
    img += 0.01 * np.random.default_rng(1).standard_normal(img.shape)
    seg = segment(img, inside, rule)
    assert seg[30, 20] == 1 and seg[30, 44] == 2 and seg[50, 32] == 0 and seg[0, 0] == 0
    with pytest.raises(ValueError, match="unknown segmentation rule"):
        segment(img, inside, "kmeans")
