"""Invertible building blocks with exact inverses and log-determinants.

Every block maps a batch ``x`` of shape ``(B, C)`` (dense) or ``(B, C, H, W)`` (convolutional) to a
tensor ``y`` and implements

* ``forward(x) -> y`` and ``inverse(y) -> x`` (exact, analytic inverse),
* ``log_det(x)``: ``log |det dy/dx|`` per batch item, shape ``(B,)``,
* ``forward_and_log_det(x)`` / ``inverse_and_log_det(y)``: both at once (the inverse returns the
  log-determinant of the *inverse* map, i.e. ``-log_det(x)``).

Blocks: affine coupling with soft clamping (dense and convolutional conditioners), an elementwise
affine map, orthogonal channel mixing (Cayley parametrisation around a fixed random rotation),
invertible down-sampling (pixel unshuffle followed by orthogonal mixing) and its inverse, the
up-sampling, plus :class:`InvertibleSequential` and :class:`Inverted` to compose them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _sum_per_item(t: Tensor) -> Tensor:
    """Sum every dimension but the batch one."""
    return t.reshape(t.shape[0], -1).sum(dim=1)


class InvertibleModule(nn.Module):
    """Base class: subclasses implement ``forward_and_log_det`` and ``inverse_and_log_det``."""

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(y, log|det dy/dx|)``; the log-determinant has shape ``(B,)``."""
        raise NotImplementedError

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(x, log|det dx/dy|)`` for ``x = inverse(y)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Apply the map."""
        return self.forward_and_log_det(x)[0]

    def inverse(self, y: Tensor) -> Tensor:
        """Apply the exact inverse map."""
        return self.inverse_and_log_det(y)[0]

    def log_det(self, x: Tensor) -> Tensor:
        """Log absolute Jacobian determinant of the forward map at ``x``, shape ``(B,)``."""
        return self.forward_and_log_det(x)[1]


class InvertibleSequential(InvertibleModule):
    """Composition of invertible blocks; log-determinants add up."""

    def __init__(self, *blocks: InvertibleModule) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for block in self.blocks:
            x, ld = block.forward_and_log_det(x)
            total = total + ld
        return x, total

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        total = y.new_zeros(y.shape[0])
        for block in reversed(self.blocks):
            y, ld = block.inverse_and_log_det(y)
            total = total + ld
        return y, total


class Inverted(InvertibleModule):
    """The inverse of a block, as a block (forward and inverse swapped)."""

    def __init__(self, block: InvertibleModule) -> None:
        super().__init__()
        self.block = block

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.block.inverse_and_log_det(x)

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.block.forward_and_log_det(y)


class ElementwiseAffine(InvertibleModule):
    """``y = x * exp(log_scale) + shift`` per feature / channel (identity at initialisation).

    Parameters
    ----------
    n : int
        Number of features (dense input) or channels (image input).
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(n))
        self.shift = nn.Parameter(torch.zeros(n))

    def _shape(self, x: Tensor) -> tuple[int, ...]:
        return (1, -1) + (1,) * (x.dim() - 2)

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = self._shape(x)
        y = x * self.log_scale.exp().view(shape) + self.shift.view(shape)
        n_sites = math.prod(x.shape[2:])
        return y, (self.log_scale.sum() * n_sites).expand(x.shape[0])

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        shape = self._shape(y)
        x = (y - self.shift.view(shape)) * (-self.log_scale).exp().view(shape)
        n_sites = math.prod(y.shape[2:])
        return x, (-self.log_scale.sum() * n_sites).expand(y.shape[0])


class AffineCoupling(InvertibleModule):
    """Affine coupling along dimension 1 with soft clamping of the log-scale.

    ``x = (x1, x2)`` with ``x1`` the first ``n // 2`` features/channels;
    ``y1 = x1``, ``y2 = x2 * exp(s(x1)) + t(x1)``, where the raw log-scale is softly clamped:
    ``s = (2 c / pi) * atan(s_raw / c)``, so ``|s| < c``. The conditioner's last layer is zero at
    initialisation, hence the block starts as the identity.

    Parameters
    ----------
    n : int
        Number of features / channels (at least 2).
    conditioner : nn.Module
        Maps ``x1`` (``n // 2`` features/channels) to ``2 * (n - n // 2)`` features/channels.
    clamp : float
        Soft bound ``c`` on the log-scale.
    """

    def __init__(self, n: int, conditioner: nn.Module, clamp: float = 2.0) -> None:
        super().__init__()
        if n < 2:
            raise ValueError(f"a coupling block needs at least 2 features/channels, got n={n}")
        self.n1 = n // 2
        self.conditioner = conditioner
        self.clamp = float(clamp)

    def _scale_shift(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        s_raw, t = self.conditioner(x1).chunk(2, dim=1)
        s = (2.0 * self.clamp / math.pi) * torch.atan(s_raw / self.clamp)
        return s, t

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, : self.n1], x[:, self.n1 :]
        s, t = self._scale_shift(x1)
        y2 = x2 * s.exp() + t
        return torch.cat([x1, y2], dim=1), _sum_per_item(s)

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        y1, y2 = y[:, : self.n1], y[:, self.n1 :]
        s, t = self._scale_shift(y1)
        x2 = (y2 - t) * (-s).exp()
        return torch.cat([y1, x2], dim=1), -_sum_per_item(s)


def _zero_last(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DenseCoupling(AffineCoupling):
    """Affine coupling on vectors ``(B, n)`` with an MLP conditioner.

    Parameters
    ----------
    n : int
        Dimension (at least 2).
    hidden : int
        Width of the hidden layers.
    depth : int
        Number of hidden layers (at least 1).
    clamp : float
        Soft clamp of the log-scale.
    """

    def __init__(self, n: int, hidden: int = 64, depth: int = 2, clamp: float = 2.0) -> None:
        n1 = n // 2
        layers: list[nn.Module] = [nn.Linear(n1, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(_zero_last(nn.Linear(hidden, 2 * (n - n1))))
        super().__init__(n, nn.Sequential(*layers), clamp)


class ConvCoupling(AffineCoupling):
    """Affine coupling on images ``(B, C, H, W)``, split along channels, conv conditioner.

    Parameters
    ----------
    channels : int
        Number of channels (at least 2).
    hidden : int
        Channels of the hidden convolutions.
    kernel_size : int
        Odd kernel size of the outer convolutions (the middle one is 1x1).
    clamp : float
        Soft clamp of the log-scale.
    """

    def __init__(self, channels: int, hidden: int = 32, kernel_size: int = 3, clamp: float = 2.0) -> None:
        c1 = channels // 2
        pad = kernel_size // 2
        conditioner = nn.Sequential(
            nn.Conv2d(c1, hidden, kernel_size, padding=pad),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.SiLU(),
            _zero_last(nn.Conv2d(hidden, 2 * (channels - c1), kernel_size, padding=pad)),
        )
        super().__init__(channels, conditioner, clamp)


def random_orthogonal(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A random orthogonal ``n x n`` matrix (QR of a Gaussian matrix, sign-corrected)."""
    a = torch.randn(n, n, generator=generator)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


class OrthogonalMixing(InvertibleModule):
    """Learnable orthogonal mixing of features / channels (a 1x1 convolution on images).

    ``Q = Q0 @ cayley(A)`` with a fixed random rotation ``Q0`` (a buffer) and the Cayley transform
    ``cayley(A) = (I + A)^{-1} (I - A)`` of a learnable skew-symmetric ``A`` (zero at start), so
    ``Q`` is exactly orthogonal, ``log|det| = 0`` and the inverse is ``Q^T``.

    Parameters
    ----------
    n : int
        Number of features / channels.
    random_init : bool
        Start from a random rotation ``Q0`` (else the identity).
    """

    def __init__(self, n: int, random_init: bool = True) -> None:
        super().__init__()
        self.n = n
        self.register_buffer("q0", random_orthogonal(n) if random_init else torch.eye(n))
        self.raw = nn.Parameter(torch.zeros(n, n))

    def _base(self, dtype: torch.dtype) -> Tensor:
        """``Q0`` re-orthonormalised in ``dtype`` (cached), so ``Q`` is orthogonal to round-off."""
        key = (dtype, self.q0.data_ptr(), self.q0._version)
        if getattr(self, "_base_key", None) != key:
            q, r = torch.linalg.qr(self.q0.detach().to(dtype))
            self._base_cache = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
            self._base_key = key
        return self._base_cache

    def matrix(self) -> Tensor:
        """The current orthogonal matrix ``Q``."""
        a = torch.triu(self.raw, diagonal=1)
        a = a - a.T
        eye = torch.eye(self.n, dtype=a.dtype, device=a.device)
        return self._base(a.dtype) @ torch.linalg.solve(eye + a, eye - a)

    @staticmethod
    def _mix(q: Tensor, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return x @ q.T
        return torch.einsum("oc,bc...->bo...", q, x)

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._mix(self.matrix(), x), x.new_zeros(x.shape[0])

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._mix(self.matrix().T, y), y.new_zeros(y.shape[0])


class InvertibleDownsample(InvertibleModule):
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)``: pixel unshuffle, then learnable orthogonal mixing.

    Parameters
    ----------
    channels : int
        Input channels ``C``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mixing = OrthogonalMixing(4 * channels)

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"down-sampling needs even height and width, got {tuple(x.shape)}")
        return self.mixing.forward_and_log_det(F.pixel_unshuffle(x, 2))

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x, ld = self.mixing.inverse_and_log_det(y)
        return F.pixel_shuffle(x, 2), ld


class InvertibleUpsample(Inverted):
    """``(B, C, H, W) -> (B, C/4, 2H, 2W)``: orthogonal mixing, then pixel shuffle.

    The exact inverse of :class:`InvertibleDownsample` with ``C/4`` channels.

    Parameters
    ----------
    channels : int
        Input channels ``C`` (a multiple of 4).
    """

    def __init__(self, channels: int) -> None:
        if channels % 4:
            raise ValueError(f"up-sampling needs a multiple of 4 channels, got {channels}")
        super().__init__(InvertibleDownsample(channels // 4))
