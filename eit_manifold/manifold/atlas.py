"""The atlas: a mixture of ``K`` charts (a mixture of VAEs).

Mixture density ``p(x) = sum_k alpha_k p_k(x)``; training minimises
``-mean_i log sum_k alpha_k exp(-L_k(x_i))`` with ``L_k`` the chart's negative ELBO. The gradient
of this log-sum-exp equals ``sum_k beta_ik grad L_k(x_i)`` with the responsibilities
``beta_ik = softmax_k(-L_k(x_i) + log alpha_k)``, i.e. the EM form with ``beta`` detached; no
gradient flows through ``beta`` otherwise. At inference the responsibilities are noise-free
(``z = Ehat(x)``), and the best chart of ``x`` is the one of highest responsibility.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from eit_manifold.manifold.chart import Chart, ChartConfig


class Atlas(nn.Module):
    """A mixture of charts sharing one architecture.

    Parameters
    ----------
    cfg : ChartConfig
        Architecture of every chart.
    n_charts : int
        Number of charts ``K``.
    meta : dict, optional
        Free-form metadata saved with the atlas (e.g. the dataset name).
    """

    def __init__(self, cfg: ChartConfig, n_charts: int, meta: dict | None = None) -> None:
        super().__init__()
        from eit_manifold.manifold.chart import MAX_ATLAS_PARAMETERS, estimated_parameters
        from eit_manifold.validation import check_int

        n_charts = check_int("n_charts", n_charts, 1, 256)
        if estimated_parameters(cfg, n_charts) > MAX_ATLAS_PARAMETERS:
            raise ValueError(f"an atlas of {n_charts} charts with {cfg} would have about "
                             f"{estimated_parameters(cfg, n_charts):.3g} parameters (limit {MAX_ATLAS_PARAMETERS:.0e})")
        self.cfg = cfg
        self.meta = dict(meta or {})
        self.charts = nn.ModuleList(Chart(cfg) for _ in range(n_charts))
        self.register_buffer("log_weights", torch.full((n_charts,), -math.log(n_charts)))

    @property
    def n_charts(self) -> int:
        """Number of charts ``K``."""
        return len(self.charts)

    @property
    def latent_dim(self) -> int:
        """Manifold dimension ``d``."""
        return self.cfg.latent_dim

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one data item, e.g. ``(2,)`` or ``(64, 64)``."""
        return self.cfg.data_shape

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """``(H, W)`` for image atlases, ``None`` for point data."""
        return self.cfg.data_shape if self.cfg.is_image else None  # type: ignore[return-value]

    @property
    def weights(self) -> Tensor:
        """Chart weights ``alpha`` (sum to 1)."""
        return self.log_weights.exp()

    def set_weights(self, alpha: Tensor, floor: float = 1e-3) -> None:
        """Set ``alpha`` (clipped below at ``floor / K`` and renormalised)."""
        alpha = alpha.detach().to(self.log_weights).clamp_min(floor / self.n_charts)
        self.log_weights.copy_((alpha / alpha.sum()).log())

    def set_normalization(self, shift: Tensor, scale: float) -> None:
        """Set the data normalisation ``x_net = (x - shift) / scale`` of every chart."""
        for chart in self.charts:
            chart.shift.copy_(shift.to(chart.shift))
            chart.scale.fill_(float(scale))

    def _chart_index(self, k: int) -> int:
        if not 0 <= k < self.n_charts:
            raise ValueError(f"chart index must be in [0, {self.n_charts}), got {k}")
        return k

    def neg_elbo_matrix(
        self, x: Tensor, noise: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Negative ELBO of every chart, ``(B, K)``, and noise-free encodings ``(B, K, d)``."""
        losses, latents = zip(*(c.neg_elbo(x, noise, generator) for c in self.charts), strict=True)
        return torch.stack(losses, dim=1), torch.stack(latents, dim=1)

    def responsibilities(self, losses: Tensor) -> Tensor:
        """``softmax_k(-L_k + log alpha_k)`` for a ``(B, K)`` matrix of negative ELBOs."""
        return torch.softmax(-losses + self.log_weights, dim=1)

    def mixture_loss(self, losses: Tensor) -> Tensor:
        """``-mean_i log sum_k alpha_k exp(-L_ik)``."""
        return -torch.logsumexp(-losses + self.log_weights, dim=1).mean()

    def log_prior_latent(self, charts: Tensor, w: Tensor) -> Tensor:
        """``log alpha_k + log p_k(w)`` of latent points ``w`` ``(B, d)`` of charts ``charts`` ``(B,)``, float64.

        The atlas prior in chart coordinates (without the decoder's volume factor): the prior term
        of the posterior ``p(k, w | d)`` that :mod:`eit_manifold.optim.posterior` samples.
        """
        charts = torch.as_tensor(charts, dtype=torch.long).reshape(-1)
        out = torch.empty(len(charts), dtype=torch.float64)
        for k in charts.unique().tolist():
            rows = charts == k
            out[rows] = (self.charts[k].prior.log_prob(w[rows]).to(torch.float64)
                         + float(self.log_weights[k]))
        return out

    def chart_probabilities(self, x: Tensor) -> Tensor:
        """Noise-free responsibilities ``(B, K)`` (rows sum to 1)."""
        losses, _ = self.neg_elbo_matrix(x, noise=False)
        return self.responsibilities(losses)

    def best_chart(self, x: Tensor) -> Tensor:
        """Index ``(B,)`` of the chart with the highest noise-free responsibility."""
        return self.chart_probabilities(x).argmax(dim=1)

    def project(self, x: Tensor) -> Tensor:
        """Projection onto the learned manifold: the nearest of the charts' ``G_k(E_k(x))``.

        The learned manifold is the union of the chart images, so its projection is the closest of
        the per-chart projections. It leaves every point of a chart image in place (to round-off),
        which a responsibility-based choice (:meth:`best_chart`) would not: in chart overlaps the
        learned charts disagree by the atlas' projection error.

        Parameters
        ----------
        x : Tensor
            Batch of data items, ``(B, *data_shape)``.

        Returns
        -------
        Tensor
            Projections, shape of ``x``.
        """
        x = self.charts[0].check_data(x)
        candidates = self.project_on_every_chart(x)[0].reshape(self.n_charts, *x.shape).transpose(0, 1)
        dist = (candidates - x[:, None]).flatten(2).norm(dim=2)
        return candidates[torch.arange(len(x)), dist.argmin(dim=1)]

    def project_on_every_chart(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``G_k(E_k(x))`` for every chart ``k``, chart-major, with the chart index of each point.

        Used for warm starts of a descent: where charts overlap they disagree, and which chart
        serves an objective best is not known before the descent.

        Parameters
        ----------
        x : Tensor
            Batch of data items, ``(B, *data_shape)``.

        Returns
        -------
        points : Tensor
            ``(K * B, *data_shape)``; rows ``k * B .. (k + 1) * B - 1`` come from chart ``k``.
        charts : Tensor
            ``(K * B,)`` chart index of each row.
        """
        x = self.charts[0].check_data(x)
        points = torch.cat([chart.project(x) for chart in self.charts])
        return points, torch.arange(self.n_charts).repeat_interleave(len(x))

    def sample_latent(self, k: int, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples of chart ``k``'s prior, ``(n, d)``."""
        return self.charts[self._chart_index(k)].sample_latent(n, generator)

    def sample(
        self, n: int, generator: torch.Generator | None = None, return_charts: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` samples of the mixture: chart ``k ~ alpha``, ``w ~`` prior, ``x = G_k(w)``.

        Parameters
        ----------
        n : int
            Number of samples.
        generator : torch.Generator, optional
            Random source.
        return_charts : bool
            Also return the chart index of each sample.
        """
        charts = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        w = self.charts[0].sample_latent(n, generator)
        out = torch.empty((n, *self.data_shape), dtype=w.dtype)
        for k in charts.unique().tolist():
            idx = charts == k
            out[idx] = self.charts[k].decode(w[idx])
        return (out, charts) if return_charts else out
