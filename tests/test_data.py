"""Datasets: determinism, disjoint splits, true distances, image families."""

from __future__ import annotations

import numpy as np
import pytest

from eit_manifold.data import DATASETS, distance_to_manifold, heldout_image, make_dataset
from eit_manifold.data.images import (
    BALL_BACKGROUND,
    BALL_EXTENT,
    BALL_GAP,
    BALL_OFFSET,
    BALL_RADII,
    BALL_VALUE,
    BAR_BACKGROUND,
    BAR_CONTRAST,
    KTC_MARGIN,
    KTC_MAX_TARGETS,
    KTC_RADII,
    MIXED_CONTRAST,
    SIGNED_BACKGROUND,
    angle_error,
    make_images,
    paper_disks,
    pixel_grid,
    render,
    render_bar,
)
from eit_manifold.data.toy import TOY_DATASETS


@pytest.mark.parametrize("name", DATASETS)
def test_datasets_are_deterministic_and_splits_differ(name: str) -> None:
    a = make_dataset(name, 20, "train", seed=3, size=32)
    b = make_dataset(name, 20, "train", seed=3, size=32)
    test = make_dataset(name, 20, "test", seed=3, size=32)
    other = make_dataset(name, 20, "train", seed=4, size=32)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    flat = lambda x: {tuple(np.round(v.ravel(), 6)) for v in x}  # noqa: E731
    assert not flat(a) & flat(test)
    assert not flat(a) & flat(other)


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_samples_lie_on_their_manifold(name: str) -> None:
    x = make_dataset(name, 300)
    assert distance_to_manifold(name, x).max() < 1e-3
    # pushing points along a random direction by 0.3 moves most of them off the manifold
    rng = np.random.default_rng(0)
    v = rng.standard_normal(x.shape)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert np.median(distance_to_manifold(name, x + 0.3 * v)) > 0.05


def test_known_distances() -> None:
    pts = np.array([[0.0, 0.0], [1.5, 0.0], [2.5, 0.0], [-1.5, 3.0]])
    np.testing.assert_allclose(distance_to_manifold("two-circles", pts), [0.5, 1.0, 0.0, 2.0])
    np.testing.assert_allclose(distance_to_manifold("sphere", np.array([[0, 0, 3.0]])), [2.0])
    np.testing.assert_allclose(distance_to_manifold("torus", np.array([[1.0, 0, 0]])), [0.4])
    np.testing.assert_allclose(distance_to_manifold("ring", np.array([[0, 0, 0.0]])), [0.5])
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        distance_to_manifold("sphere", np.zeros((4, 2)))
    with pytest.raises(ValueError, match="unknown"):
        make_dataset("moebius", 3)


def test_bars_angle_and_values() -> None:
    images, params = make_images("bars", 10, size=64)
    assert images.shape == (10, 64, 64)
    assert images.min() >= BAR_BACKGROUND - 1e-6
    assert images.max() <= BAR_BACKGROUND + BAR_CONTRAST + 1e-6
    for img, p in zip(images, params, strict=True):
        assert 0 <= p["angle"] < np.pi
        np.testing.assert_allclose(img, render_bar(p["angle"] + np.pi), atol=1e-5)
    horizontal = render_bar(0.0, 64)
    assert horizontal[32, 20] > horizontal[20, 32]  # the bar lies along x at angle 0
    assert angle_error(0.05, np.pi - 0.05) == pytest.approx(0.1)


@pytest.mark.parametrize(("size", "length", "width"), [(128, 50, 10), (64, 25, 5)])
def test_bars_have_the_papers_size(size: int, length: int, width: int) -> None:
    horizontal = render_bar(0.0, size)
    assert set(np.unique(horizontal)) <= {0.5, 0.5625, 0.625, 0.75}  # half pixels at 64 (odd 25, 5)
    inside = (horizontal - BAR_BACKGROUND) / BAR_CONTRAST
    assert np.sum(inside) == pytest.approx(length * width)
    assert np.count_nonzero(inside.sum(axis=0)) == length + length % 2  # columns touched
    assert np.sum(inside, axis=0).max() == pytest.approx(width)
    assert np.isclose(inside.max(), 1.0)
    for angle in (0.3, 1.1, 2.5):  # any angle: the same area, centred in the image
        img = (render_bar(angle, size) - BAR_BACKGROUND) / BAR_CONTRAST
        assert img.sum() == pytest.approx(length * width, rel=5e-3)
        rows, cols = np.indices(img.shape)
        assert (img * rows).sum() / img.sum() == pytest.approx((size - 1) / 2, abs=1e-4)
        assert (img * cols).sum() / img.sum() == pytest.approx((size - 1) / 2, abs=1e-4)


def test_signed_balls_inside_tank_and_in_range() -> None:
    images, params = make_images("balls-signed", 30, size=64)
    assert 0.0 <= images.min() and images.max() <= 1.0
    for p in params:
        centres, radii = np.asarray(p["centres"]), np.asarray(p["radii"])
        assert np.all(np.linalg.norm(centres, axis=1) + radii <= 0.9 + 1e-9)
        assert np.linalg.norm(centres[0] - centres[1]) >= radii.sum()
        np.testing.assert_array_equal(p["values"], [0.9, 0.1])
    assert np.isclose(np.median(images), SIGNED_BACKGROUND)
    assert images.min() == pytest.approx(0.1) and images.max() == pytest.approx(0.9)


def test_paper_balls_values_at_128_and_halving_at_64() -> None:
    """The paper's grey levels (127/255 and 207/255) at 128x128; 64x64 is the same family halved."""
    big, params = make_images("balls", 10, size=128)
    small, _ = make_images("balls", 10, size=64)
    x, y = pixel_grid(128)
    for img, p in zip(big, params, strict=True):
        centres, radii = np.asarray(p["centres"]), np.asarray(p["radii"])
        d = np.stack([np.hypot(x - cx, y - cy) - r for (cx, cy), r in zip(centres, radii, strict=True)])
        background = d.min(axis=0) > 2 / 64  # more than a pixel outside both disks
        inside = d.min(axis=0) < -2 / 64
        np.testing.assert_allclose(img[background], 127 / 255, atol=1e-6)
        np.testing.assert_allclose(img[inside], 207 / 255, atol=1e-6)
        # each disk's area in pixels is pi r^2 with r in the paper's pixels (64 px = 1)
        excess = (img - BALL_BACKGROUND).sum() / (BALL_VALUE - BALL_BACKGROUND)
        assert excess == pytest.approx(np.pi * np.sum((64 * radii) ** 2), rel=0.01)
    # halving every length: the 2x2 means of the 128 image are the 64 image up to the edge ramps
    pooled = big.reshape(10, 64, 2, 64, 2).mean(axis=(2, 4))
    assert np.abs(pooled - small).mean() < 2e-3
    assert np.median(np.abs(pooled - small)) < 1e-6


def test_paper_balls_radii_offsets_and_separation() -> None:
    """The paper's rejection sampler: bounds, separation and the law of the first disk's radius."""
    rng = np.random.default_rng(0)
    draws = [paper_disks(rng) for _ in range(3000)]
    centres = np.stack([c for c, _ in draws])
    radii = np.stack([r for _, r in draws])
    offsets = np.linalg.norm(centres, axis=2)
    assert np.all((radii >= BALL_RADII[0]) & (radii <= BALL_RADII[1]))
    assert np.all(offsets <= BALL_OFFSET) and np.all(offsets + radii < BALL_EXTENT)
    gaps = np.linalg.norm(centres[:, 0] - centres[:, 1], axis=1) - radii.sum(axis=1)
    assert gaps.min() >= BALL_GAP and gaps.min() < BALL_GAP + 0.02  # the bound is reached
    assert 64 * BALL_RADII[0] == 12 and 64 * BALL_RADII[1] == 25 and 64 * BALL_GAP == 6
    # first disk: r ~ U[12, 25] px and rho ~ U[0, 45] px, kept when rho + r < 62, so the accepted
    # radius has density proportional to min(1, (62 - r) / 45) (in px); Kolmogorov-Smirnov check
    grid = np.linspace(12, 25, 2001)
    density = np.minimum(1.0, (62 - grid) / 45)
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    cdf /= cdf[-1]
    r0 = np.sort(64 * radii[:, 0])
    ks = np.max(np.abs(np.interp(r0, grid, cdf) - np.arange(1, len(r0) + 1) / len(r0)))
    assert ks < 1.63 / np.sqrt(len(r0))  # 1 % level
    # the offset of the first disk is uniform in [0, 45] px given r <= 17 px (never rejected)
    small = 64 * offsets[64 * radii[:, 0] <= 17, 0]
    assert abs(small.mean() - 22.5) < 1.0 and small.max() > 44


def test_mixed_balls_signs_and_contrasts() -> None:
    _, params = make_images("balls-mixed", 200, size=16)
    values = np.concatenate([p["values"] for p in params])
    contrast = np.abs(values - BALL_BACKGROUND)
    assert np.all((contrast >= MIXED_CONTRAST[0]) & (contrast <= MIXED_CONTRAST[1]))
    assert 0.4 < np.mean(values > BALL_BACKGROUND) < 0.6  # conductive and resistive equally often
    same_geometry = make_images("balls", 200, size=16)[1]
    for a, b in zip(params, same_geometry, strict=True):
        np.testing.assert_array_equal(a["radii"], b["radii"])  # paper's geometry, same stream


def test_heldout_images_are_test_items_and_128_works() -> None:
    test = make_dataset("balls", 3, "test", size=32)
    img, params = heldout_image("balls", 2, size=32)
    np.testing.assert_array_equal(img, test[2])
    assert set(params) == {"centres", "radii", "values"}
    assert make_dataset("bars", 2, size=128).shape == (2, 128, 128)


def test_ktc_family_values_targets_and_disk() -> None:
    images, params = make_images("ktc", 60, size=64)
    assert images.shape == (60, 64, 64) and images.dtype == np.float32
    assert -1.0 <= images.min() and images.max() <= 1.0
    x, y = pixel_grid(64)
    # every target lies inside the disk of radius 1 - KTC_MARGIN (plus the one-pixel edge ramp)
    outside = np.hypot(x, y) > 1 - KTC_MARGIN + 2 / 64
    assert np.all(images[:, outside] == 0.0)
    counts, signs = set(), set()
    for img, p in zip(images, params, strict=True):
        n = len(p["radii"])
        counts.add(n)
        assert 1 <= n <= KTC_MAX_TARGETS and len(p["vertices"]) == n
        assert np.all((KTC_RADII[0] <= p["radii"]) & (p["radii"] <= KTC_RADII[1]))
        for (cx, cy), value, vertices in zip(p["centres"], p["values"], p["vertices"], strict=True):
            signs.add(value)
            # the target's value is reached at its centre (interior pixel nearest to it)
            i, j = np.unravel_index(np.argmin(np.hypot(x - cx, y - cy)), x.shape)
            if vertices is None:
                assert img[i, j] == value
            else:
                edges = np.roll(vertices, -1, axis=0) - vertices
                cross = edges[:, 0] * np.roll(edges[:, 1], -1) - edges[:, 1] * np.roll(edges[:, 0], -1)
                assert np.all(cross > 0)  # convex and counter-clockwise
                assert np.sign(img[i, j]) == value
    assert counts == {1, 2, 3} and signs == {-1.0, 1.0}
    np.testing.assert_array_equal(render("ktc", params[0], 64), images[0])
