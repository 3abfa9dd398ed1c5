"""A chart of the learned atlas: injective decoder, analytic left-inverse encoder, flow prior.

Chart ``k`` maps a prior-space latent ``w`` (shape ``(B, d)``) to data:
``G(w) = D(T(w))`` with the latent flow ``T`` and the injective decoder ``D(z) = F([z, 0])`` for an
invertible network ``F``. The encoder is the exact left inverse
``E(x) = T^{-1}(first d coordinates of F^{-1}(x))``, so ``E(G(w)) = w`` and ``project = G o E`` is
idempotent. Data are normalised inside the chart (``x_net = (x - shift) / scale``) so callers use
their own units.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from eit_manifold.manifold.flows import BoundedPrior, latent_flow
from eit_manifold.manifold.invertible import (
    ConvCoupling,
    DenseCoupling,
    InvertibleModule,
    InvertibleSequential,
    InvertibleUpsample,
    OrthogonalMixing,
)

#: Bounds of the architecture sizes (checked before any allocation: a config.json with
#: ``hidden = 1e7`` must be an error, not an attempt to allocate hundreds of TB).
SIZE_BOUNDS = {"blocks": (1, 64), "hidden": (1, 4096), "conv_blocks": (1, 16), "conv_hidden": (1, 1024),
               "levels": (0, 6), "flow_blocks": (0, 32)}
MAX_POINT_DIM = 4096
MAX_IMAGE_SIDE = 512
#: Largest parameter count of an atlas (about 2 GB of float32), estimated from the config.
MAX_ATLAS_PARAMETERS = 500_000_000


def estimated_parameters(cfg: ChartConfig, n_charts: int) -> int:
    """An upper estimate of an atlas's parameter count from its sizes (no allocation)."""
    m = cfg.coarse_dim if cfg.is_image else cfg.data_shape[0]
    dense = cfg.blocks * (3 * cfg.hidden * (m + cfg.hidden) + m * m)
    conv = cfg.conv_blocks * max(cfg.levels, 1) * 18 * cfg.conv_hidden ** 2 if cfg.is_image else 0
    flow = cfg.flow_blocks * 3 * 64 * (cfg.latent_dim + 64)
    return n_charts * (dense + conv + flow)


@dataclass
class ChartConfig:
    """Architecture and likelihood settings of one chart (all charts of an atlas share them).

    Attributes
    ----------
    data_shape : tuple of int
        ``(n,)`` for point data or ``(H, W)`` for images.
    latent_dim : int
        Manifold dimension ``d``.
    sigma_hd : float
        Decoder noise level (in normalised data units).
    sigma_ld : float
        Encoder noise level on ``z``.
    blocks : int
        Dense coupling blocks (point data) or dense blocks of the image decoder's first stage.
    hidden : int
        Hidden width of the dense conditioners.
    conv_blocks : int
        Convolutional coupling blocks per resolution level (images).
    conv_hidden : int
        Hidden channels of the convolutional conditioners at the coarsest level (halved per level,
        at least 8).
    levels : int
        Number of 2x up-samplings from the coarse grid to the image (images).
    flow_blocks : int
        Coupling blocks of the latent flow (``d >= 2``).
    clamp : float
        Soft clamp of the coupling log-scales.
    prior_flat, prior_tail : float
        Plateau half-width and tail width of the bounded prior.
    """

    data_shape: tuple[int, ...]
    latent_dim: int
    sigma_hd: float = 0.05
    sigma_ld: float = 0.01
    blocks: int = 6
    hidden: int = 64
    conv_blocks: int = 2
    conv_hidden: int = 64
    levels: int = 3
    flow_blocks: int = 3
    clamp: float = 2.0
    prior_flat: float = 0.8
    prior_tail: float = 0.05

    def __post_init__(self) -> None:
        from eit_manifold.validation import check_float, check_int

        if not isinstance(self.data_shape, list | tuple) or len(self.data_shape) not in (1, 2):
            raise ValueError(f"data_shape must be (n,) or (H, W), got {self.data_shape!r}")
        limit = MAX_POINT_DIM if len(self.data_shape) == 1 else MAX_IMAGE_SIDE
        self.data_shape = tuple(check_int("data_shape", s, 1, limit) for s in self.data_shape)
        n = math.prod(self.data_shape)
        self.latent_dim = check_int("latent_dim", self.latent_dim)
        for name, (lo, hi) in SIZE_BOUNDS.items():
            setattr(self, name, check_int(name, getattr(self, name), lo, hi))
        for name in ("sigma_hd", "sigma_ld", "prior_flat", "prior_tail", "clamp"):
            setattr(self, name, check_float(name, getattr(self, name)))
        if not 1 <= self.latent_dim < n:
            raise ValueError(f"latent_dim must be in [1, {n - 1}], got {self.latent_dim}")
        if self.is_image:
            h, w = self.data_shape
            step = 2**self.levels
            if h % step or w % step:
                raise ValueError(f"image shape {self.data_shape} must be divisible by 2**levels = {step}")
            if self.coarse_dim < max(2, self.latent_dim + 1):
                raise ValueError(f"coarse grid too small for latent_dim={self.latent_dim}")
        for name in ("sigma_hd", "sigma_ld", "prior_flat", "prior_tail", "clamp"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def is_image(self) -> bool:
        """Whether the data are images ``(H, W)``."""
        return len(self.data_shape) == 2

    @property
    def coarse_dim(self) -> int:
        """Dimension of the dense first stage of the image decoder (one coarse-grid channel)."""
        h, w = self.data_shape
        return (h // 2**self.levels) * (w // 2**self.levels)

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary."""
        d = asdict(self)
        d["data_shape"] = list(self.data_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ChartConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown chart config keys: {sorted(unknown)}")
        return cls(**d)


def _dense_stack(n: int, blocks: int, hidden: int, clamp: float) -> InvertibleSequential:
    """``blocks`` x (dense coupling, orthogonal mixing) on ``R^n``."""
    layers: list[InvertibleModule] = []
    for _ in range(blocks):
        layers += [DenseCoupling(n, hidden=hidden, depth=2, clamp=clamp), OrthogonalMixing(n)]
    return InvertibleSequential(*layers)


class DenseDecoder(nn.Module):
    """Injective decoder on point data: ``D(z) = F([z, 0])``, ``F`` invertible on ``R^n``."""

    def __init__(self, cfg: ChartConfig) -> None:
        super().__init__()
        self.d, self.n = cfg.latent_dim, cfg.data_shape[0]
        self.net = _dense_stack(self.n, cfg.blocks, cfg.hidden, cfg.clamp)

    def forward(self, z: Tensor) -> Tensor:
        """``(B, d) -> (B, n)``."""
        return self.net(F.pad(z, (0, self.n - self.d)))

    def left_inverse(self, x: Tensor) -> Tensor:
        """``(B, n) -> (B, d)``: the first ``d`` coordinates of ``F^{-1}(x)``."""
        return self.net.inverse(x)[:, : self.d]


class ConvDecoder(nn.Module):
    """Injective decoder on images, two zero-paddings around invertible networks.

    ``z (d)`` -> pad to ``m`` (one channel of the coarse grid) -> dense invertible stage on ``R^m``
    -> reshape to ``(1, h, w)`` and pad with zero channels to ``(4**levels, h, w)`` -> per level:
    convolutional couplings with orthogonal channel mixing, then invertible orthogonal
    up-sampling -> ``(1, H, W)``. Every step is invertible or a zero-padding, so truncation gives an
    exact left inverse.
    """

    def __init__(self, cfg: ChartConfig) -> None:
        super().__init__()
        self.d, self.m = cfg.latent_dim, cfg.coarse_dim
        h, w = cfg.data_shape
        self.coarse = (h // 2**cfg.levels, w // 2**cfg.levels)
        self.channels = 4**cfg.levels
        self.dense = _dense_stack(self.m, cfg.blocks, cfg.hidden, cfg.clamp)
        layers: list[InvertibleModule] = []
        channels, hidden = self.channels, cfg.conv_hidden
        for _ in range(cfg.levels):
            for _ in range(cfg.conv_blocks):
                layers += [
                    ConvCoupling(channels, hidden=hidden, clamp=cfg.clamp),
                    OrthogonalMixing(channels),
                ]
            layers.append(InvertibleUpsample(channels))
            channels, hidden = channels // 4, max(8, hidden // 2)
        self.conv = InvertibleSequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """``(B, d) -> (B, H, W)``."""
        b = z.shape[0]
        v = self.dense(F.pad(z, (0, self.m - self.d)))
        grid = F.pad(v.reshape(b, 1, *self.coarse), (0, 0, 0, 0, 0, self.channels - 1))
        return self.conv(grid)[:, 0]

    def left_inverse(self, x: Tensor) -> Tensor:
        """``(B, H, W) -> (B, d)``."""
        grid = self.conv.inverse(x.unsqueeze(1))
        v = grid[:, 0].reshape(x.shape[0], self.m)
        return self.dense.inverse(v)[:, : self.d]


class Chart(nn.Module):
    """One chart ``G = D o T`` with its exact left inverse ``E`` and bounded flow prior.

    Parameters
    ----------
    cfg : ChartConfig
        Architecture and likelihood settings.
    """

    def __init__(self, cfg: ChartConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.decoder = ConvDecoder(cfg) if cfg.is_image else DenseDecoder(cfg)
        self.flow = latent_flow(cfg.latent_dim, cfg.flow_blocks)
        self.prior = BoundedPrior(cfg.latent_dim, cfg.prior_flat, cfg.prior_tail)
        self.register_buffer("shift", torch.zeros(cfg.data_shape))
        self.register_buffer("scale", torch.ones(()))

    @property
    def latent_dim(self) -> int:
        """Manifold dimension ``d``."""
        return self.cfg.latent_dim

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one data item."""
        return self.cfg.data_shape

    def check_data(self, x: Tensor) -> Tensor:
        """Validate a data batch ``(B, *data_shape)`` and cast it to the chart's dtype."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != len(self.data_shape) + 1 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"expected data of shape (B, {', '.join(map(str, self.data_shape))}), got {tuple(x.shape)}"
            )
        return x.to(self.shift.dtype)

    def check_latent(self, w: Tensor) -> Tensor:
        """Validate a latent batch ``(B, d)`` and cast it to the chart's dtype."""
        if not isinstance(w, Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(w).__name__}")
        if w.dim() != 2 or w.shape[1] != self.latent_dim:
            raise ValueError(f"expected latents of shape (B, {self.latent_dim}), got {tuple(w.shape)}")
        return w.to(self.shift.dtype)

    def to_net(self, x: Tensor) -> Tensor:
        """User units -> network units."""
        return (x - self.shift) / self.scale

    def from_net(self, y: Tensor) -> Tensor:
        """Network units -> user units."""
        return y * self.scale + self.shift

    def decode_net(self, w: Tensor) -> Tensor:
        """``G(w)`` in network units (used by the Lipschitz penalty)."""
        return self.decoder(self.flow(w))

    def decode(self, w: Tensor) -> Tensor:
        """``G(w) = D(T(w))``: ``(B, d) -> (B, *data_shape)`` in the user's units."""
        return self.from_net(self.decode_net(self.check_latent(w)))

    def encode(self, x: Tensor) -> Tensor:
        """``E(x) = T^{-1}(D^+(x))``: ``(B, *data_shape) -> (B, d)``; ``E(G(w)) = w``."""
        z = self.decoder.left_inverse(self.to_net(self.check_data(x)))
        return self.flow.inverse(z)

    def project(self, x: Tensor) -> Tensor:
        """``G(E(x))``, the chart's (idempotent) projection."""
        return self.decode(self.encode(x))

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` prior samples of ``w``, shape ``(n, d)``."""
        return self.prior.sample(n, generator).to(self.shift.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``G(w)``, ``w`` from the prior."""
        return self.decode(self.sample_latent(n, generator))

    @torch.no_grad()
    def calibrate_prior(self, x: Tensor, quantile: float = 0.02, batch_size: int = 256) -> None:
        """Data-dependent (ActNorm-style) reset of the flow's first, elementwise affine block.

        The encodings of ``x`` are mapped so that their ``quantile`` and ``1 - quantile``
        per-coordinate quantiles land on ``-prior_flat`` and ``+prior_flat``: the prior's plateau
        then covers the chart's data, which gradient steps on the flow alone reach only slowly.

        Parameters
        ----------
        x : Tensor
            Items this chart is responsible for, ``(N, *data_shape)``, ``N >= 2``.
        quantile : float
            Tail fraction left outside the plateau on each side.
        batch_size : int
            Encoding batch size.
        """
        x = self.check_data(x)
        if len(x) < 2:
            return
        first, rest = self.flow.blocks[0], self.flow.blocks[1:]
        z = torch.cat(
            [self.decoder.left_inverse(self.to_net(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        )
        for block in reversed(rest):
            z = block.inverse(z)
        lo = torch.quantile(z, quantile, dim=0)
        hi = torch.quantile(z, 1 - quantile, dim=0)
        half = ((hi - lo) / 2).clamp_min(1e-6)
        first.shift.copy_((hi + lo) / 2)
        first.log_scale.copy_((half / self.cfg.prior_flat).log())

    def neg_elbo(
        self, x: Tensor, noise: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Negative ELBO per item and the noise-free encoding.

        ``L(x) = ||x - D(z)||^2 / (2 sigma_hd^2) + energy(T^{-1} z) - log|det dT^{-1}/dz|
        - d log sigma_ld`` with ``z = Ehat(x) + sigma_ld * eps`` (``eps = 0`` when ``noise`` is
        false, giving the noise-free version used for responsibilities). Data terms are in network
        units; constants shared by all charts are dropped.

        Parameters
        ----------
        x : Tensor
            Data ``(B, *data_shape)``.
        noise : bool
            Draw the reparametrised encoder noise.
        generator : torch.Generator, optional
            Source of the noise.

        Returns
        -------
        loss : Tensor
            ``(B,)``.
        w : Tensor
            Noise-free encoding ``E(x)``, ``(B, d)``.
        """
        cfg = self.cfg
        xn = self.to_net(self.check_data(x))
        z_hat = self.decoder.left_inverse(xn)
        z = z_hat
        if noise:
            eps = torch.randn(z_hat.shape, generator=generator, dtype=z_hat.dtype)
            z = z_hat + cfg.sigma_ld * eps
        rec = self.decoder(z)
        rec_term = (xn - rec).pow(2).reshape(x.shape[0], -1).sum(1) / (2 * cfg.sigma_hd**2)
        w, log_det_inv = self.flow.inverse_and_log_det(z)
        loss = rec_term + self.prior.energy(w) - log_det_inv - cfg.latent_dim * math.log(cfg.sigma_ld)
        w_clean = w if not noise else self.flow.inverse(z_hat)
        return loss, w_clean
