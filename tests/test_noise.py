"""Noise models (operators/noise.py) and their place on the operators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eit_manifold.operators.blur import GaussianBlur
from eit_manifold.operators.noise import GaussianNoise, RelativeNoise


def test_gaussian_noise_statistics_numpy_and_torch() -> None:
    model = GaussianNoise(0.1)
    clean = np.full((200, 500), 3.0)
    noisy = model.sample(clean, np.random.default_rng(0))
    noise = noisy - clean
    # mean within 5 standard errors, std within 2 %
    assert abs(noise.mean()) < 5 * 0.1 / np.sqrt(noise.size)
    assert noise.std() == pytest.approx(0.1, rel=0.02)
    t = model.sample(torch.zeros(200, 500, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert t.dtype == torch.float64 and float(t.std()) == pytest.approx(0.1, rel=0.02)
    np.testing.assert_array_equal(model.std(clean), np.full(clean.shape, 0.1))


def test_relative_noise_scales_with_each_rows_rms() -> None:
    model = RelativeNoise(0.01)
    clean = np.stack([np.linspace(1, 2, 4000), 100 * np.linspace(-1, 1, 4000)])
    rms = np.sqrt(np.mean(clean**2, axis=1))
    np.testing.assert_allclose(model.std(clean), np.repeat(0.01 * rms[:, None], 4000, axis=1))
    noise = model.sample(clean, np.random.default_rng(1)) - clean
    rel = np.linalg.norm(noise, axis=1) / np.linalg.norm(clean, axis=1)
    np.testing.assert_allclose(rel, 0.01, rtol=0.05)
    tclean = torch.from_numpy(clean)
    torch.testing.assert_close(model.std(tclean), torch.from_numpy(np.ascontiguousarray(model.std(clean))))


def test_noise_is_deterministic_under_a_seed_and_differs_across_seeds() -> None:
    for model in (GaussianNoise(0.2), RelativeNoise(0.05)):
        clean = np.ones((3, 16))
        a = model.sample(clean, np.random.default_rng(5))
        b = model.sample(clean, np.random.default_rng(5))
        c = model.sample(clean, np.random.default_rng(6))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        ta = model.sample(torch.ones(3, 16), torch.Generator().manual_seed(5))
        tb = model.sample(torch.ones(3, 16), torch.Generator().manual_seed(5))
        assert torch.equal(ta, tb)


def test_zero_level_is_noise_free_and_bad_levels_fail() -> None:
    clean = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(RelativeNoise(0.0).sample(clean, np.random.default_rng(0)), clean)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise"):
            GaussianNoise(bad)
        with pytest.raises(ValueError, match="noise level"):
            RelativeNoise(bad)
    with pytest.raises(TypeError, match="torch.Generator"):
        GaussianNoise(0.1).sample(torch.zeros(3), np.random.default_rng(0))
    with pytest.raises(TypeError, match="numpy"):
        GaussianNoise(0.1).sample(np.zeros(3), torch.Generator())


def test_blur_operator_carries_its_noise_model() -> None:
    op = GaussianBlur.paper(64, background=0.5, noise_std=0.1)
    assert op.noise_model == GaussianNoise(0.1)
    x = torch.full((2, 64, 64), 0.5, dtype=torch.float64)
    y = op.measure(x, torch.Generator().manual_seed(0))
    expected = op(x) + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    torch.testing.assert_close(y, expected)
