"""The latent side of a chart: the bounded prior on ``w`` and the normalizing flow ``T: w -> z``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from eit_manifold.manifold.invertible import (
    DenseCoupling,
    ElementwiseAffine,
    InvertibleModule,
    InvertibleSequential,
    OrthogonalMixing,
)


class BoundedPrior(nn.Module):
    """Factorised density on ``R^d``: flat on ``|w_j| <= flat``, Gaussian tails of width ``tail``.

    ``p(w) = prod_j exp(-rho(|w_j|)) / Z`` with ``rho(t) = max(t - flat, 0)^2 / (2 tail^2)`` and
    ``Z = 2 flat + sqrt(2 pi) tail``. With the defaults (``flat = 0.8``, ``tail = 0.05``) the
    density at ``|w_j| = 1`` is ``exp(-8) ~ 3e-4`` of its plateau: a chart covers a bounded patch.

    Parameters
    ----------
    dim : int
        Latent dimension ``d``.
    flat : float
        Half-width of the plateau.
    tail : float
        Standard deviation of the Gaussian tails.
    """

    def __init__(self, dim: int, flat: float = 0.8, tail: float = 0.05) -> None:
        super().__init__()
        self.dim, self.flat, self.tail = dim, float(flat), float(tail)

    @property
    def log_normalizer(self) -> float:
        """``d * log Z``."""
        return self.dim * math.log(2 * self.flat + math.sqrt(2 * math.pi) * self.tail)

    def energy(self, w: Tensor) -> Tensor:
        """Unnormalised negative log-density ``sum_j rho(|w_j|)``, shape ``(B,)``."""
        excess = torch.relu(w.abs() - self.flat)
        return (excess**2).sum(dim=-1) / (2 * self.tail**2)

    def log_prob(self, w: Tensor) -> Tensor:
        """Normalised log-density, shape ``(B,)``."""
        return -self.energy(w) - self.log_normalizer

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples, shape ``(n, d)``: plateau with probability ``2 flat / Z``, else a tail."""
        shape = (n, self.dim)
        p_flat = 2 * self.flat / (2 * self.flat + math.sqrt(2 * math.pi) * self.tail)
        u = torch.rand(shape, generator=generator)
        plateau = (2 * torch.rand(shape, generator=generator) - 1) * self.flat
        sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
        tails = sign * (self.flat + torch.randn(shape, generator=generator).abs() * self.tail)
        return torch.where(u < p_flat, plateau, tails)


def latent_flow(dim: int, n_blocks: int = 3, hidden: int = 32) -> InvertibleModule:
    """The flow ``T: w -> z`` on ``R^d``: elementwise affine, then coupling + orthogonal blocks.

    For ``d = 1`` a coupling is impossible and the flow is a learnable affine map (the decoder
    absorbs any further re-parametrisation of a curve).

    Parameters
    ----------
    dim : int
        Latent dimension ``d``.
    n_blocks : int
        Number of (coupling, orthogonal mixing) pairs when ``d >= 2``.
    hidden : int
        Hidden width of the coupling conditioners.
    """
    blocks: list[InvertibleModule] = [ElementwiseAffine(dim)]
    if dim >= 2:
        for _ in range(n_blocks):
            blocks += [DenseCoupling(dim, hidden=hidden, depth=2), OrthogonalMixing(dim)]
    return InvertibleSequential(*blocks)
