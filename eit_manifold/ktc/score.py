"""The KTC2023 score of a segmentation (1 is perfect), as described in ``ktc2023/README.md``.

For each target class ``c`` in {1 (resistive), 2 (conductive)} the binary masks ``truth == c`` and
``reco == c`` are compared with a structural-similarity index whose local statistics use a
Gaussian window of standard deviation ``r = 80`` pixels on a ``(2 ceil(2r) + 1)^2`` support,
zero-padded and normalised near the borders (each local statistic is divided by the window's
mass inside the image), constants ``c1 = 1e-4`` and ``c2 = 9e-4``:

    SSIM(x) = (2 mu_t mu_r + c1)(2 s_tr + c2) / ((mu_t^2 + mu_r^2 + c1)(s_t^2 + s_r^2 + c2))

averaged over all 256 x 256 pixels; the case score is the mean over the two classes.
The convolutions are done by FFT with the window's transform computed once per image shape (equal
to the direct 'same' convolution up to rounding).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import scipy.fft

from eit_manifold.ktc.data import IMAGE_SHAPE

WINDOW_STD = 80.0
C1 = 1e-4
C2 = 9e-4


@cache
def _kernel(r: float = WINDOW_STD) -> np.ndarray:
    ws = math.ceil(2 * r)
    x = np.arange(-ws, ws + 1, dtype=float)
    X, Y = np.meshgrid(x, x)
    return np.exp(-0.5 * (X**2 + Y**2) / r**2) / math.sqrt(2 * math.pi)


@cache
def _kernel_fft(shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """FFT of the window for images of ``shape`` (a fast size >= the full convolution), that size,
    and the border correction (the window's mass inside the image)."""
    k = _kernel()
    full = tuple(scipy.fft.next_fast_len(n + m - 1, real=True) for n, m in zip(shape, k.shape, strict=True))
    kf = scipy.fft.rfft2(k, full)
    correction = _convolve(np.ones(shape), kf, full, k.shape)
    return kf, full, correction


def _convolve(image: np.ndarray, kf: np.ndarray, full: tuple[int, int], kshape: tuple[int, int]) -> np.ndarray:
    """'same'-mode convolution with the window whose FFT is ``kf``."""
    out = scipy.fft.irfft2(scipy.fft.rfft2(image, full) * kf, full)
    r0, c0 = (kshape[0] - 1) // 2, (kshape[1] - 1) // 2
    return out[r0:r0 + image.shape[0], c0:c0 + image.shape[1]]


def _filter(image: np.ndarray, correction: np.ndarray | None = None) -> np.ndarray:
    kf, full, corr = _kernel_fft(image.shape)
    return _convolve(image, kf, full, _kernel().shape) / (corr if correction is None else correction)


def mask_ssim(truth: np.ndarray, reco: np.ndarray) -> float:
    """The challenge's SSIM between two binary masks of the same shape."""
    t = np.asarray(truth, dtype=float)
    r = np.asarray(reco, dtype=float)
    if t.shape != r.shape or t.ndim != 2:
        raise ValueError(f"masks must be 2-D and of the same shape, got {t.shape} and {r.shape}")
    mt, mr = _filter(t), _filter(r)
    vt = _filter(t * t) - mt**2
    vr = _filter(r * r) - mr**2
    vtr = _filter(t * r) - mt * mr
    num = (2 * mt * mr + C1) * (2 * vtr + C2)
    den = (mt**2 + mr**2 + C1) * (vt + vr + C2)
    return float(np.mean(num / den))


def check_segmentation(name: str, image: np.ndarray) -> np.ndarray:
    """``image`` as a 256 x 256 uint8 segmentation (classes 0/1/2 only), else ``ValueError`` naming ``name``."""
    from eit_manifold.validation import numeric_array

    arr = numeric_array(image, name, shape=IMAGE_SHAPE)  # real numbers of the right shape
    bad = np.setdiff1d(np.unique(arr), [0, 1, 2])
    if bad.size:
        raise ValueError(f"{name} must hold only the classes 0, 1, 2, found {bad.tolist()[:5]}")
    return arr.astype(np.uint8)


def class_scores(truth: np.ndarray, reco: np.ndarray) -> dict[int, float]:
    """SSIM of the masks of class 1 (resistive) and class 2 (conductive)."""
    t = check_segmentation("truth", truth)
    r = check_segmentation("reconstruction", reco)
    return {c: mask_ssim(t == c, r == c) for c in (1, 2)}


def ktc_score(truth: np.ndarray, reco: np.ndarray) -> float:
    """The case score: mean of the class-1 and class-2 mask SSIMs (1 for identical segmentations)."""
    s = class_scores(truth, reco)
    return 0.5 * (s[1] + s[2])
