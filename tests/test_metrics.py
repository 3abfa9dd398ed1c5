"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eit_manifold.metrics import angle_error, psnr, relative_data_misfit, relative_l2, ssim


def test_relative_l2_hand_value() -> None:
    assert relative_l2([3.0, 4.0], [0.0, 5.0]) == pytest.approx(math.sqrt(9 + 1) / 5)
    batch = relative_l2(
        np.array([[1.0, 1.0], [2.0, 0.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]), True
    )
    assert np.allclose(batch, [1.0, 1.0])
    assert relative_data_misfit(torch.tensor([2.0]), torch.tensor([4.0])) == pytest.approx(0.5)


def test_relative_l2_errors() -> None:
    with pytest.raises(ValueError, match="zero norm"):
        relative_l2([1.0], [0.0])
    with pytest.raises(ValueError, match="shape mismatch"):
        relative_l2([1.0, 2.0], [1.0])


def test_psnr_hand_value() -> None:
    ref = np.array([[0.0, 1.0], [0.0, 1.0]])
    x = ref + np.array([[0.1, 0.0], [0.0, -0.1]])  # mse = 0.005, range = 1
    assert psnr(x, ref) == pytest.approx(10 * math.log10(1 / 0.005))
    assert psnr(x, ref, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.005))
    assert psnr(ref, ref) == math.inf
    with pytest.raises(ValueError, match="constant"):
        psnr(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="data_range"):
        psnr(ref, ref, data_range=-1.0)


def test_psnr_batch() -> None:
    ref = np.stack([np.eye(3), 2 * np.eye(3)])
    x = ref + 0.1
    vals = psnr(x, ref, batch=True)
    assert vals.shape == (2,)
    assert vals[0] == pytest.approx(20.0)
    assert vals[1] == pytest.approx(10 * math.log10(4 / 0.01))


def test_ssim_identical_and_constant_images() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((24, 24))
    assert ssim(img, img) == pytest.approx(1.0)
    # Constant images a and b: SSIM = (2ab + C1) / (a^2 + b^2 + C1) with C1 = (0.01 L)^2.
    a, b, rng_l = 0.3, 0.5, 1.0
    c1 = (0.01 * rng_l) ** 2
    val = ssim(np.full((20, 20), a), np.full((20, 20), b), data_range=rng_l)
    assert val == pytest.approx((2 * a * b + c1) / (a**2 + b**2 + c1))


def test_ssim_decreases_with_noise_and_batches() -> None:
    rng = np.random.default_rng(1)
    img = np.zeros((32, 32))
    img[8:24, 12:20] = 1.0
    noisy = [img + s * rng.standard_normal(img.shape) for s in (0.05, 0.2, 0.5)]
    vals = ssim(np.stack(noisy), np.stack([img] * 3), batch=True)
    assert vals.shape == (3,)
    assert 1 > vals[0] > vals[1] > vals[2]
    with pytest.raises(ValueError, match="2-D"):
        ssim(np.zeros(5), np.zeros(5) + 1)


def test_angle_error_modulo_pi() -> None:
    assert angle_error(0.1, math.pi - 0.1) == pytest.approx(0.2)
    assert angle_error(0.0, math.pi) == pytest.approx(0.0)
    assert np.allclose(angle_error(np.array([0.5, 3.0]), np.array([0.2, 0.0])), [0.3, math.pi - 3])
    assert angle_error(0.0, math.pi, period=2 * math.pi) == pytest.approx(math.pi)
    with pytest.raises(ValueError, match="period"):
        angle_error(0.0, 1.0, period=0.0)
