"""Multi-start, warm-started Riemannian descent: the one routine behind every atlas reconstruction.

Starts are ``prior_starts`` samples of the atlas' charts (round robin, seeded) plus every warm-start
image projected onto *every* chart (a warm start is a classic reconstruction, a segmentation, ...:
it already explains most of the data, and its best chart is not known in advance). All starts run
as one batch; the lowest final objective wins, or, with ``select`` (e.g. :func:`posterior_score`), the
lowest score of the end points. Used by the synthetic ``reconstruct`` job
(:mod:`eit_manifold.pipelines.reconstruct`) and by the KTC ``atlas`` method
(:mod:`eit_manifold.ktc.atlas_method`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from eit_manifold.optim.riemannian import DescentResult, RiemannianDescent

#: ``score(x_all, chart_all, w_all) -> (B,)`` of the starts' end points; the lowest finite one wins.
StartScore = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MultiStartResult:
    """What :func:`multistart_descent` found.

    Attributes
    ----------
    result : DescentResult
        The descent over all starts (``result.best_start`` indexes ``[warm..., prior...]``).
    n_warm : int
        Number of warm starts (warm images times charts), which come first.
    """

    result: DescentResult
    n_warm: int
    descent: RiemannianDescent | None = None

    @property
    def best_is_warm(self) -> bool:
        """Whether the winning start is a projected warm start."""
        return self.result.best_start < self.n_warm


def multistart_descent(
    atlas,
    objective: Callable[[Tensor], Tensor],
    warm: Tensor | None = None,
    prior_starts: int = 4,
    seed: int = 0,
    max_iter: int = 30,
    ftol: float = 1e-4,
    max_step: float = 5.0,
    stop_window: int | None = 10,
    stop_rtol: float = 1e-3,
    prune_at: tuple[int, ...] = (),
    progress: bool = False,
    select: StartScore | None = None,
) -> MultiStartResult:
    """Minimise ``objective`` over ``atlas`` from prior samples and projected warm starts.

    Parameters
    ----------
    atlas : Atlas
        Trained atlas (eval mode) with ``project_on_every_chart``.
    objective : callable
        Batched objective ``F(x)`` of images ``(B, *image_shape)`` returning ``(B,)``.
    warm : Tensor (n, *image_shape), optional
        Warm-start images in the atlas' value space; each is projected onto every chart.
    prior_starts : int
        Prior samples besides the warm starts (>= 0; at least one start overall).
    seed : int
        Seed of the prior samples.
    max_iter, ftol, max_step : int, float, float
        Descent settings (:class:`RiemannianDescent`, first step ``"auto"``).
    stop_window, stop_rtol : int or None, float
        The descent's stopping rule on the best objective (:class:`RiemannianDescent`; ``None``: off).
    prune_at : tuple of int
        Iterations after which the worse half of the starts stops (:class:`RiemannianDescent`).
    progress : bool
        Show the descent's progress bar.
    select : callable, optional
        Score of every start's end point (:data:`StartScore`); the start with the lowest finite
        score is the result instead of the one with the lowest objective (:func:`posterior_score`:
        the highest posterior density, which breaks the ties of end points that all fit the data
        to the noise level in favour of the likelier image).

    Returns
    -------
    MultiStartResult
    """
    if int(prior_starts) != prior_starts or prior_starts < 0:
        raise ValueError(f"prior_starts must be a non-negative integer, got {prior_starts!r}")
    descent = RiemannianDescent(atlas, objective, max_iter=max_iter, max_step=max_step, step_init="auto", ftol=ftol,
                                stop_window=stop_window, stop_rtol=stop_rtol, prune_at=prune_at)
    w, charts = descent.initial_points(max(prior_starts, 1), torch.Generator().manual_seed(seed))
    x0 = descent.decode_points(w, charts)[:prior_starts]
    charts = charts[:prior_starts]
    n_warm = 0
    if warm is not None and len(warm):
        with torch.no_grad():
            x_warm, k_warm = atlas.project_on_every_chart(torch.as_tensor(warm, dtype=x0.dtype))
        x0, charts = torch.cat([x_warm, x0]), torch.cat([k_warm, charts])
        n_warm = len(x_warm)
    if len(x0) == 0:
        raise ValueError("the descent needs at least one start (prior_starts >= 1 or warm images)")
    result = descent.run(x0=x0, chart0=charts, progress=progress)
    if select is not None:
        result = select_start(result, select)
    return MultiStartResult(result, n_warm, descent)


def select_start(result: DescentResult, score: StartScore) -> DescentResult:
    """``result`` with the start of the lowest finite ``score`` as its best point.

    The end points and the history stay; ``x``, ``w``, ``chart``, ``objective`` and ``best_start``
    become the chosen start's. If no score is finite the result is returned unchanged.
    """
    with torch.no_grad():
        s = torch.as_tensor(score(result.x_all, torch.as_tensor(result.chart_all), result.w_all), dtype=torch.float64)
    if s.shape != (len(result.objective_all),):
        raise ValueError(f"a start score must have one value per start ({len(result.objective_all)}), "
                         f"got shape {tuple(s.shape)}")
    s = torch.where(torch.isfinite(s), s, torch.full_like(s, torch.inf))
    if not torch.isfinite(s).any():
        return result
    j = int(torch.argmin(s))
    return replace(result, x=result.x_all[j], w=result.w_all[j], chart=int(result.chart_all[j]),
                   objective=float(result.objective_all[j]), best_start=j)


def posterior_score(atlas, neg_log_likelihood: Callable[[Tensor], Tensor]) -> StartScore:
    """The negative log-posterior ``-log L(x) - log alpha_k - log p_k(w)`` of end points, as a :data:`StartScore`.

    ``neg_log_likelihood(x)`` is ``(B,)`` for images ``(B, *image_shape)`` (with the data's noise
    model: ``0.5 ||(A(x) - d) / s||^2``); ``atlas.log_prior_latent`` gives the prior term. The
    posterior the samplers of :mod:`eit_manifold.optim.posterior` draw from, up to a constant, so
    the chosen start is its highest mode among the end points.
    """

    def score(x: Tensor, charts: Tensor, w: Tensor) -> Tensor:
        return (neg_log_likelihood(x).to(torch.float64)
                - atlas.log_prior_latent(charts, w.to(torch.float64)))

    return score
