"""Reconstruction metrics: relative L2 error, PSNR, SSIM, relative data misfit, angle error.

Every metric takes NumPy arrays or torch tensors. A single item ``(...)`` gives a float; with
``batch=True`` the first axis is a batch and the result is an array with one value per item.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

ArrayLike = Any  # np.ndarray | torch.Tensor | sequence


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _pair(x: ArrayLike, ref: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _to_numpy(x), _to_numpy(ref)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: estimate {a.shape} vs reference {b.shape}")
    return a, b


def _per_item(a: np.ndarray, batch: bool) -> np.ndarray:
    """Flatten to ``(B, n)`` (``B = 1`` when not batched)."""
    if batch:
        if a.ndim < 1 or a.shape[0] == 0:
            raise ValueError(f"batch=True needs a non-empty batch axis, got shape {a.shape}")
        return a.reshape(a.shape[0], -1)
    return a.reshape(1, -1)


def _out(values: np.ndarray, batch: bool) -> np.ndarray | float:
    return values if batch else float(values[0])


def relative_l2(x: ArrayLike, ref: ArrayLike, batch: bool = False) -> np.ndarray | float:
    """Relative error ``||x - ref|| / ||ref||``.

    Parameters
    ----------
    x, ref : array-like
        Estimate and reference of the same shape.
    batch : bool
        Treat the first axis as a batch and return one value per item.
    """
    a, b = _pair(x, ref)
    a, b = _per_item(a, batch), _per_item(b, batch)
    norm = np.linalg.norm(b, axis=1)
    if np.any(norm == 0):
        raise ValueError("relative_l2: the reference has zero norm")
    return _out(np.linalg.norm(a - b, axis=1) / norm, batch)


def relative_data_misfit(
    pred: ArrayLike, data: ArrayLike, batch: bool = False
) -> np.ndarray | float:
    """Relative data misfit ``||pred - data|| / ||data||`` (the formula of :func:`relative_l2`)."""
    return relative_l2(pred, data, batch=batch)


def psnr(
    x: ArrayLike, ref: ArrayLike, data_range: float | None = None, batch: bool = False
) -> np.ndarray | float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / mse)`` in dB.

    Parameters
    ----------
    x, ref : array-like
        Estimate and reference of the same shape.
    data_range : float, optional
        Dynamic range; defaults to ``ref.max() - ref.min()`` of each reference item.
    batch : bool
        Treat the first axis as a batch.
    """
    a, b = _pair(x, ref)
    a, b = _per_item(a, batch), _per_item(b, batch)
    if data_range is None:
        rng = b.max(axis=1) - b.min(axis=1)
    else:
        if not (math.isfinite(data_range) and data_range > 0):
            raise ValueError(f"data_range must be positive and finite, got {data_range!r}")
        rng = np.full(b.shape[0], float(data_range))
    if np.any(rng <= 0):
        raise ValueError("psnr: the reference is constant; pass data_range explicitly")
    mse = np.mean((a - b) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(rng**2 / mse)
    return _out(values, batch)


def ssim(
    x: ArrayLike,
    ref: ArrayLike,
    data_range: float | None = None,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    batch: bool = False,
) -> np.ndarray | float:
    """Structural similarity of 2-D images (Wang et al. 2004) with a Gaussian window.

    Local means, variances and covariance use a Gaussian filter of std ``sigma`` truncated at
    3.5 sigma (scikit-image's ``gaussian_weights=True`` convention, with the same sample-covariance
    correction and the border of half-width ``round(3.5 sigma)`` excluded from the mean).

    Parameters
    ----------
    x, ref : array-like
        Images of shape ``(H, W)``, or ``(B, H, W)`` with ``batch=True``.
    data_range : float, optional
        Dynamic range; defaults to ``ref.max() - ref.min()`` per item.
    sigma, k1, k2 : float
        Window std and the stabilising constants ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``.
    batch : bool
        Treat the first axis as a batch.
    """
    a, b = _pair(x, ref)
    if not batch:
        a, b = a[None], b[None]
    if a.ndim != 3:
        raise ValueError(f"ssim expects 2-D images, got item shape {a.shape[1:]}")
    values = np.empty(a.shape[0])
    truncate = 3.5
    pad = int(truncate * sigma + 0.5)
    n_win = (2 * pad + 1) ** 2
    cov_norm = n_win / (n_win - 1)
    for i, (ai, bi) in enumerate(zip(a, b, strict=True)):
        rng = float(bi.max() - bi.min()) if data_range is None else float(data_range)
        if not rng > 0:
            raise ValueError("ssim: the reference is constant; pass data_range explicitly")

        def filt(img: np.ndarray) -> np.ndarray:
            return gaussian_filter(img, sigma=sigma, truncate=truncate, mode="reflect")

        ux, uy = filt(ai), filt(bi)
        vx = cov_norm * (filt(ai * ai) - ux * ux)
        vy = cov_norm * (filt(bi * bi) - uy * uy)
        vxy = cov_norm * (filt(ai * bi) - ux * uy)
        c1, c2 = (k1 * rng) ** 2, (k2 * rng) ** 2
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        inner = s[pad : s.shape[0] - pad, pad : s.shape[1] - pad]
        if inner.size == 0:
            raise ValueError(f"ssim: image {ai.shape} too small for a window of half-width {pad}")
        values[i] = inner.mean()
    return _out(values, batch)


def angle_error(angle: ArrayLike, ref: ArrayLike, period: float = math.pi) -> np.ndarray | float:
    """Absolute angular difference modulo ``period``, in ``[0, period / 2]`` (radians).

    With ``period = pi`` an undirected orientation (a bar) at ``a`` and at ``a + pi`` is the same.
    """
    if not (math.isfinite(period) and period > 0):
        raise ValueError(f"period must be positive, got {period!r}")
    a, b = _pair(angle, ref)
    d = np.mod(a - b, period)
    d = np.minimum(d, period - d)
    return float(d) if d.ndim == 0 else d


def interval_coverage(truth: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> float:
    """Fraction of the entries of ``truth`` inside ``[lower, upper]`` (entries with a NaN are skipped)."""
    t, lo, hi = (_to_numpy(a).astype(float) for a in (truth, lower, upper))
    if not t.shape == lo.shape == hi.shape:
        raise ValueError(f"shapes differ: truth {t.shape}, lower {lo.shape}, upper {hi.shape}")
    ok = np.isfinite(t) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        raise ValueError("interval_coverage: no finite entries")
    return float(np.mean((t[ok] >= lo[ok]) & (t[ok] <= hi[ok])))
