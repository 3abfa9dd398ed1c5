"""Gaussian blur as a forward operator: A(x) = k * (x - b) + b, with its adjoint and a noise model.

The paper's deblurring setting (:meth:`GaussianBlur.paper`): a normalised 40 x 40 Gaussian kernel of
standard deviation 15 px on 128 x 128 images (at 64 x 64: 20 x 20, std 7.5 px), applied to
``x - 0.5``, white Gaussian noise of std 0.1 (:class:`~eit_manifold.operators.noise.GaussianNoise`,
``op.noise_model``).

The pure numerical kernels (:func:`gaussian_kernel`, :func:`blur`, :func:`blur_adjoint`) live apart
from the :class:`GaussianBlur` module, which holds the kernel, the background and the noise level.

The convolution is a "same"-size linear convolution with zero padding of ``x - b`` (equivalently,
the image is continued by its background outside the field of view).
The kernel is normalised to sum 1.
For an even kernel size the padding is asymmetric (``(s - 1) // 2`` before, ``s // 2`` after); the
adjoint uses the transposed convolution with the same padding, so ``<A0 x, y> = <x, A0* y>`` holds
exactly for the linear part ``A0 x = k * x``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eit_manifold.operators.noise import GaussianNoise

# The paper's setting: a 40 x 40 kernel of standard deviation 15 px for 128 x 128 images.
PAPER_KERNEL_SIZE = 40
PAPER_KERNEL_STD = 15.0
PAPER_IMAGE_SIZE = 128


def gaussian_kernel(kernel_size: int, std: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """Separable 2-D Gaussian kernel of shape ``(kernel_size, kernel_size)``, normalised to sum 1.

    Parameters
    ----------
    kernel_size : int
        Side length in pixels (>= 1); the kernel is centred at ``(kernel_size - 1) / 2``.
    std : float
        Standard deviation in pixels (> 0).
    dtype : torch.dtype
        Floating dtype of the result.
    """
    if int(kernel_size) != kernel_size or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive integer, got {kernel_size!r}")
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"std must be positive and finite, got {std!r}")
    t = torch.arange(int(kernel_size), dtype=dtype) - (kernel_size - 1) / 2
    g = torch.exp(-0.5 * (t / std) ** 2)
    k = torch.outer(g, g)
    return k / k.sum()


def paper_kernel_params(image_size: int) -> tuple[int, float]:
    """The paper's blur (40 x 40, std 15 px at 128 x 128) scaled to ``image_size`` pixels.

    Returns
    -------
    (kernel_size, std) : tuple
        ``kernel_size = max(1, round(40 * s / 128))`` and ``std = 15 * s / 128``.
    """
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    scale = image_size / PAPER_IMAGE_SIZE
    return max(1, round(PAPER_KERNEL_SIZE * scale)), PAPER_KERNEL_STD * scale


def _padding(kernel_size: int) -> tuple[int, int]:
    return (kernel_size - 1) // 2, kernel_size // 2


def _as_batch(x: Tensor) -> tuple[Tensor, torch.Size]:
    """Reshape ``(..., H, W)`` to ``(N, 1, H, W)``; return it and the original shape."""
    if x.dim() < 2:
        raise ValueError(f"expected an image of shape (..., H, W), got shape {tuple(x.shape)}")
    shape = x.shape
    return x.reshape(-1, 1, shape[-2], shape[-1]), shape


def blur(x: Tensor, kernel: Tensor) -> Tensor:
    """Zero-padded "same" convolution of images ``x`` (``(..., H, W)``) with ``kernel``."""
    xb, shape = _as_batch(x)
    s = kernel.shape[-1]
    lo, hi = _padding(s)
    xp = F.pad(xb, (lo, hi, lo, hi))
    # conv2d is a correlation: flip the kernel to convolve (a no-op for a symmetric Gaussian).
    w = torch.flip(kernel, (0, 1)).to(xb.dtype)[None, None]
    return F.conv2d(xp, w).reshape(shape)


def blur_adjoint(y: Tensor, kernel: Tensor) -> Tensor:
    """Exact adjoint of :func:`blur`: transposed convolution, then crop the padding."""
    yb, shape = _as_batch(y)
    s = kernel.shape[-1]
    lo, _ = _padding(s)
    w = torch.flip(kernel, (0, 1)).to(yb.dtype)[None, None]
    full = F.conv_transpose2d(yb, w)
    h, wd = shape[-2], shape[-1]
    return full[..., lo : lo + h, lo : lo + wd].reshape(shape)


class GaussianBlur(nn.Module):
    """Gaussian blur around a background, ``A(x) = k * (x - b) + b``, with Gaussian noise.

    Parameters
    ----------
    kernel_size : int
        Kernel side in pixels.
    std : float
        Kernel standard deviation in pixels.
    background : float
        Background value ``b`` (the value the image takes outside the field of view).
    noise_std : float
        Standard deviation of the additive white Gaussian noise of :meth:`measure`; the operator
        carries it as ``noise_model`` (:class:`~eit_manifold.operators.noise.GaussianNoise`).

    Notes
    -----
    ``A`` is affine; :meth:`linear` is its linear part ``A0 x = k * x`` and :meth:`adjoint` the
    adjoint of ``A0``. The gradient of ``0.5 ||A(x) - y||^2`` is ``A0* (A(x) - y)``.
    """

    def __init__(
        self, kernel_size: int, std: float, background: float = 0.0, noise_std: float = 0.0
    ) -> None:
        super().__init__()
        if not math.isfinite(background):
            raise ValueError(f"background must be finite, got {background!r}")
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be non-negative and finite, got {noise_std!r}")
        self.noise_model = GaussianNoise(float(noise_std))
        self.kernel_size = int(kernel_size)
        self.std = float(std)
        self.background = float(background)
        self.register_buffer("kernel", gaussian_kernel(kernel_size, std))

    @classmethod
    def paper(
        cls, image_size: int, background: float = 0.0, noise_std: float = 0.0
    ) -> GaussianBlur:
        """The paper's kernel (40 x 40, std 15 at 128 x 128) scaled to ``image_size``."""
        size, std = paper_kernel_params(image_size)
        return cls(size, std, background=background, noise_std=noise_std)

    def matrix_1d(self, n: int) -> Tensor:
        """The ``n x n`` matrix of the 1-D factor: the blur is separable, ``A0 X = K X K^T``.

        The kernel is ``g g^T`` for the normalised 1-D Gaussian ``g`` (its row sums), so on an
        ``H x W`` image ``A0 X = K_H X K_W^T`` with ``K_n = matrix_1d(n)`` (same padding as
        :func:`blur`). Used by the direct and primal-dual baselines.
        """
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        g = self.kernel.sum(dim=1)
        lo, hi = _padding(self.kernel_size)
        eye = torch.eye(int(n), dtype=g.dtype)[:, None, :]  # n signals e_j
        cols = F.conv1d(F.pad(eye, (lo, hi)), torch.flip(g, (0,))[None, None])
        return cols[:, 0, :].T.contiguous()

    def linear(self, x: Tensor) -> Tensor:
        """Linear part ``k * x``."""
        return blur(x, self.kernel)

    def adjoint(self, y: Tensor) -> Tensor:
        """Adjoint of the linear part, ``k~ * y`` (transposed convolution)."""
        return blur_adjoint(y, self.kernel)

    def forward(self, x: Tensor) -> Tensor:
        """Noise-free data ``A(x) = k * (x - b) + b`` for images of shape ``(..., H, W)``."""
        return self.linear(x - self.background) + self.background

    def measure(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Noisy data: ``A(x)`` plus a draw of ``noise_model`` from ``generator`` (reproducible)."""
        return self.noise_model.sample(self.forward(x), generator)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, std={self.std:g}, background={self.background:g}, "
            f"noise_std={self.noise_model.sigma:g}"
        )


class SeparableBlur(nn.Module):
    """:class:`GaussianBlur` on images of one shape as two matrix products, ``A0 X = K_H X K_W^T``.

    The same operator as the zero-padded convolution (:meth:`GaussianBlur.matrix_1d`), but a
    64 x 64 image costs two 64 x 64 products instead of a 20 x 20 direct convolution: about ten
    times faster with its gradient, which matters inside a sampler that applies it thousands of times.

    Parameters
    ----------
    op : GaussianBlur
        The operator (kernel and background).
    shape : (int, int)
        Image shape ``(H, W)``.
    """

    def __init__(self, op: GaussianBlur, shape: tuple[int, int]) -> None:
        super().__init__()
        self.background = op.background
        self.register_buffer("kh", op.matrix_1d(int(shape[0])))
        self.register_buffer("kw", op.matrix_1d(int(shape[1])))

    def forward(self, x: Tensor) -> Tensor:
        """Noise-free data ``K_H (x - b) K_W^T + b`` for images ``(..., H, W)``."""
        u = x.to(self.kh.dtype) - self.background
        return self.kh @ u @ self.kw.T + self.background
