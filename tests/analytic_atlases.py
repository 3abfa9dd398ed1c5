"""Hand-made atlases with exact charts and known closest points, for testing the optimiser.

They duck-type :class:`eit_manifold.manifold.Atlas`: ``charts[k].decode/encode``,
``chart_probabilities``, ``project``, ``sample_latent``, ``n_charts``, ``latent_dim``.
The encoders are radial projections, so ``decode(encode(x))`` is the exact closest point.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class ArcChart:
    """Circle of radius ``r`` about ``centre``: ``G(w) = c + r (cos(t0 + s w), sin(t0 + s w))``."""

    def __init__(self, centre: tuple[float, float], radius: float, t0: float, span: float) -> None:
        self.c = torch.tensor(centre, dtype=torch.float64)
        self.r, self.t0, self.s = radius, t0, span

    def decode(self, w: Tensor) -> Tensor:
        t = self.t0 + self.s * w[:, 0]
        return self.c + self.r * torch.stack([torch.cos(t), torch.sin(t)], dim=1)

    def encode(self, x: Tensor) -> Tensor:
        y = x - self.c
        t = torch.atan2(y[:, 1], y[:, 0]) - self.t0
        t = torch.remainder(t + math.pi, 2 * math.pi) - math.pi
        return (t / self.s)[:, None]


class StereoChart:
    """Unit sphere by stereographic projection from the pole ``sign * e3`` (latent x 1.3)."""

    def __init__(self, sign: float) -> None:
        self.sign, self.scale = sign, 1.3

    def decode(self, w: Tensor) -> Tensor:
        u = self.scale * w
        n2 = (u**2).sum(dim=1, keepdim=True)
        xy = 2 * u / (n2 + 1)
        z = self.sign * (n2 - 1) / (n2 + 1)
        return torch.cat([xy, z], dim=1)

    def encode(self, x: Tensor) -> Tensor:
        y = x / x.norm(dim=1, keepdim=True)
        return y[:, :2] / (1 - self.sign * y[:, 2:3]) / self.scale


class AnalyticAtlas:
    """Atlas of exact charts; responsibilities from projection distance and latent size."""

    def __init__(self, charts: list, latent_dim: int, data_dim: int) -> None:
        self.charts = charts
        self.n_charts = len(charts)
        self.latent_dim = latent_dim
        self.data_shape = (data_dim,)
        self.image_shape = None

    def chart_probabilities(self, x: Tensor) -> Tensor:
        logits = []
        for ch in self.charts:
            w = ch.encode(x)
            dist2 = ((ch.decode(w) - x) ** 2).sum(dim=1)
            logits.append(-dist2 / (2 * 0.05**2) - 2.0 * (w**2).sum(dim=1))
        return torch.softmax(torch.stack(logits, dim=1), dim=1)

    def project(self, x: Tensor) -> Tensor:
        k = self.chart_probabilities(x).argmax(dim=1)
        out = torch.empty_like(x)
        for j, ch in enumerate(self.charts):
            m = k == j
            if m.any():
                out[m] = ch.decode(ch.encode(x[m]))
        return out

    def project_on_every_chart(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``G_k(E_k(x))`` for every chart, chart-major (as ``Atlas.project_on_every_chart``)."""
        points = torch.cat([ch.decode(ch.encode(x)) for ch in self.charts])
        return points, torch.arange(self.n_charts).repeat_interleave(len(x))

    def sample_latent(self, k: int, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, self.latent_dim, dtype=torch.float64, generator=generator)
        return (u * 2 - 1) * 0.8


def circle_atlas() -> AnalyticAtlas:
    """Unit circle, two charts centred at angles 0 and pi, each spanning +-0.75 pi."""
    s = 0.75 * math.pi
    return AnalyticAtlas([ArcChart((0, 0), 1.0, 0.0, s), ArcChart((0, 0), 1.0, math.pi, s)], 1, 2)


def two_circles_atlas() -> AnalyticAtlas:
    """Unit circles about (+-1.5, 0), two charts each (K = 4)."""
    s = 0.75 * math.pi
    charts = [ArcChart((cx, 0.0), 1.0, t0, s) for cx in (-1.5, 1.5) for t0 in (0.0, math.pi)]
    return AnalyticAtlas(charts, 1, 2)


def sphere_atlas() -> AnalyticAtlas:
    """Unit sphere, stereographic charts from the north and the south pole."""
    return AnalyticAtlas([StereoChart(1.0), StereoChart(-1.0)], 2, 3)
