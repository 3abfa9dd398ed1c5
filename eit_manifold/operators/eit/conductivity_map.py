"""The one map between image values and conductivities: ``sigma = sigma_min + (sigma_max - sigma_min) x``.

Images of the atlas families live in ``[0, 1]``; with the defaults ``sigma_min = 0.2``,
``sigma_max = 1.8`` the value 0.5 is ``sigma = 1``. Every part of the package that turns an image
into a conductivity (simulation of image phantoms, the atlas objective, the reconstructions'
outputs, the atlas' warm start from a conductivity) goes through :func:`image_to_conductivity`
and its inverse :func:`conductivity_to_image`. Both accept NumPy arrays and torch tensors (torch:
differentiable, dtype kept unless ``clip`` asks for float64).
"""

from __future__ import annotations

import math

import numpy as np
import torch

SIGMA_MIN = 0.2
SIGMA_MAX = 1.8


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def image_to_conductivity[A: (np.ndarray, torch.Tensor)](x: A, sigma_min: float = SIGMA_MIN,
                                                        sigma_max: float = SIGMA_MAX, *, clip: bool = False,
                                                        check: bool = False) -> A:
    """``sigma = sigma_min + (sigma_max - sigma_min) x`` for images ``x`` (NumPy or torch).

    Parameters
    ----------
    x : array or Tensor
        Image values, nominally in ``[0, 1]``.
    sigma_min, sigma_max : float
        Conductivities of the values 0 and 1 (``0 < sigma_min < sigma_max``).
    clip : bool
        Clip ``x`` to ``[0, 1]`` first (decoded atlas images overshoot slightly; a conductivity
        must stay positive); torch inputs are then computed in float64, the operator's dtype.
    check : bool
        Raise ``ValueError`` when ``x`` has non-finite values or values outside ``[0, 1]`` (user
        input: a phantom image file).
    """
    _check_range(sigma_min, sigma_max)
    if isinstance(x, torch.Tensor):
        if check:
            _check_values(x.detach().cpu().numpy())
        if clip:
            x = x.to(torch.float64).clamp(0.0, 1.0)
        return sigma_min + (sigma_max - sigma_min) * x
    x = np.asarray(x, dtype=float)
    if check:
        _check_values(x)
    if clip:
        x = np.clip(x, 0.0, 1.0)
    return sigma_min + (sigma_max - sigma_min) * x


def conductivity_to_image[A: (np.ndarray, torch.Tensor)](sigma: A, sigma_min: float = SIGMA_MIN,
                                                        sigma_max: float = SIGMA_MAX) -> A:
    """The inverse map ``x = (sigma - sigma_min) / (sigma_max - sigma_min)`` (no clipping)."""
    _check_range(sigma_min, sigma_max)
    if not isinstance(sigma, torch.Tensor):
        sigma = np.asarray(sigma, dtype=float)
    return (sigma - sigma_min) / (sigma_max - sigma_min)


def _check_values(x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        raise ValueError("image contains non-finite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"image values must lie in [0, 1], got range [{lo:g}, {hi:g}]")
