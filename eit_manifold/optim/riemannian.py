"""Riemannian gradient descent on a learned atlas (DESIGN section 4).

The iterate is always a point ``x = G_k(w)`` on the image of one chart ``k``. One iteration:

1. chart choice with hysteresis at ``x`` (:func:`~eit_manifold.optim.verbs.choose_chart`); a switch
   to chart ``j`` moves the base point to ``G_j(E_j(x))``;
2. ``J = dG_k/dw`` by forward mode, ``g = grad F(x)`` by autograd, Riemannian gradient
   ``v = J (J^T J + eps I)^{-1} J^T g``;
3. Armijo backtracking from step ``tau``: accept the first trial ``x+ = R(-tau v)`` with
   ``F(x+) <= F(base) - c tau <g, v>`` **and** ``F(x+) <= F(x)``, halving ``tau`` up to
   ``max_backtracks`` times. ``R`` is the projection retraction ``G_k(E_k(.))`` or the chart
   retraction ``w <- w - tau xi``.

Latent coordinates are clipped to the prior support (``|w_j| <= 0.9`` by default,
``latent_bound``), so an iterate cannot follow a chart's untrained extrapolation; near the edge
of its chart it has to switch.
The second inequality makes the descent monotone even across chart switches: a switch is taken
only together with a step that ends below the current objective; if no such step is found the
iterate stays in its chart. Iterates never leave the chart images, so they stay on the manifold.

The objective is any torch-differentiable function of the data; the optimiser knows no operator.
Several starts (samples of the chart priors) run as one batch; the best final objective is kept.

**Stopping.** A start stops when its own decrease is below ``ftol`` (relative) or its Riemannian
gradient below ``gtol``; the whole run stops when every start has stopped, after ``max_iter``
iterations, or (the *window rule*, on by default) when the best objective over all starts
``b_t = min_i F_i(t)`` has decreased by less than ``stop_rtol`` (relative) over the last
``stop_window`` iterations: ``b_{t-W} - b_t <= stop_rtol * |b_{t-W}|``. The best objective is what
is returned, so once it stalls further iterations only polish starts that are not the best.

**Pruning** (``prune_at``, off by default): after each listed iteration the worse half of the
starts not pruned yet (ranked by their current objective; the better half rounded up is kept)
stops, so a multi-start run spends its iterations on the starts that can still win (successive
halving). A pruned start keeps its state and can never be the best: a better one is always kept,
and objectives only decrease.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from eit_manifold.optim.verbs import (
    ChartLike,
    choose_chart,
    decode_with_jacobian,
    retract_chart,
    retract_projection,
    riemannian_gradient,
)

RETRACTIONS = ("projection", "chart")


class AtlasLike(Protocol):
    """What the optimiser needs from an atlas (duck-typed; see :mod:`eit_manifold.manifold`)."""

    charts: Sequence[ChartLike]

    @property
    def n_charts(self) -> int: ...  # noqa: D102

    @property
    def latent_dim(self) -> int: ...  # noqa: D102

    def chart_probabilities(self, x: Tensor) -> Tensor: ...  # noqa: D102

    def sample_latent(self, k: int, n: int) -> Tensor: ...  # noqa: D102


@dataclass
class DescentHistory:
    """Per-iteration record for every start (rows: iterations, columns: starts).

    Attributes
    ----------
    objective : np.ndarray
        ``(T + 1, B)`` objective values, row 0 at the starting points.
    chart : np.ndarray
        ``(T + 1, B)`` chart indices.
    step : np.ndarray
        ``(T, B)`` accepted step sizes ``tau`` (0 when no step was accepted, NaN once converged).
    switched : np.ndarray
        ``(T, B)`` True where the iteration changed chart.
    iterates : np.ndarray or None
        ``(T + 1, B, n)`` flattened iterates when ``record_iterates=True``.
    """

    objective: np.ndarray
    chart: np.ndarray
    step: np.ndarray
    switched: np.ndarray
    iterates: np.ndarray | None = None


@dataclass
class DescentResult:
    """Outcome of :meth:`RiemannianDescent.run`.

    Attributes
    ----------
    x, w, chart, objective
        Best final point (data shape), its latent, chart index and objective value.
    best_start : int
        Index of the start that gave the best objective.
    x_all, w_all, chart_all, objective_all
        Final state of every start.
    converged : np.ndarray
        ``(B,)`` True for starts that met a tolerance (or could not decrease further).
    history : DescentHistory
        Objective, chart and step per iteration.
    stop_reason : str
        ``"window"`` (the best objective stalled), ``"converged"`` (every start stopped) or
        ``"max_iter"``.
    pruned : np.ndarray
        ``(B,)`` iteration after which each start was pruned (-1: never).
    """

    x: Tensor
    w: Tensor
    chart: int
    objective: float
    best_start: int
    x_all: Tensor
    w_all: Tensor
    chart_all: np.ndarray
    objective_all: np.ndarray
    converged: np.ndarray
    history: DescentHistory = field(repr=False)
    stop_reason: str = "max_iter"
    pruned: np.ndarray | None = None

    @property
    def n_iter(self) -> int:
        """Number of iterations run."""
        return int(self.history.step.shape[0])

    @property
    def best_objective(self) -> np.ndarray:
        """``(T + 1,)`` best objective over the starts after each iteration (row 0: the starts)."""
        return best_per_iteration(self.history.objective)


def best_per_iteration(objective: np.ndarray) -> np.ndarray:
    """Minimum over the starts (columns) of each row, ignoring non-finite values (inf if none)."""
    finite = np.where(np.isfinite(objective), objective, np.inf)
    return finite.min(axis=1)


def window_stalled(best: Sequence[float], window: int | None, rtol: float) -> bool:
    """The window rule: ``best[-1 - window] - best[-1] <= rtol * |best[-1 - window]|``.

    ``False`` while fewer than ``window + 1`` values exist, when ``window`` is ``None``, or while
    the reference value is not finite.
    """
    if window is None or len(best) <= window:
        return False
    ref, now = float(best[-1 - window]), float(best[-1])
    return math.isfinite(ref) and ref - now <= rtol * abs(ref)


@dataclass
class _State:
    x: Tensor  # (B, *data_shape)
    w: Tensor  # (B, d)
    chart: Tensor  # (B,) long
    f: Tensor  # (B,) float64
    tau: Tensor  # (B,) float64
    active: Tensor  # (B,) bool
    # Euclidean gradient of F at x, kept from the line search that accepted x (valid: known)
    grad: Tensor | None = None  # (B, *data_shape) float64
    grad_valid: Tensor | None = None  # (B,) bool


class RiemannianDescent:
    """Riemannian gradient descent with Armijo line search on the charts of an atlas.

    Parameters
    ----------
    atlas : AtlasLike
        Atlas with ``charts[k].decode/encode``, ``chart_probabilities`` and ``sample_latent``.
    objective : callable
        ``F(x)``: a torch-differentiable function of a batch ``(B, *data_shape)`` returning ``(B,)``
        (items independent). With ``batched=False`` it takes one item and returns a scalar.
    retraction : {"projection", "chart"}
        ``x+ = G(E(x - tau v))`` or ``w+ = w - tau xi``.
    max_iter : int
        Iteration limit.
    ftol : float
        Stop a start when the objective decrease of an iteration is below
        ``ftol * max(|F|, 1e-30)``.
    gtol : float
        Stop a start when the squared Riemannian gradient norm ``<g, v>`` is below ``gtol``.
    stop_window : int or None
        Window ``W`` of the run's stopping rule on the best objective (see the module docstring);
        ``None`` disables it.
    stop_rtol : float
        Relative decrease of the best objective over the window below which the run stops.
    step_init : float or "auto"
        First trial step ``tau``; later iterations start from the last accepted step, times
        ``growth`` when that step was the first trial (no backtracking).
        ``"auto"`` makes the first trial scale-free: ``tau = F / <g, v>``, the step at which the
        linear model of ``F`` reaches zero (backtracking then shortens it), so objectives of any
        magnitude need no step-size tuning.
    max_step : float, optional
        Cap on the ambient length ``tau ||v||`` of a trial step.
    growth, shrink : float
        Step growth after an iteration that accepted its first trial (>= 1) and backtracking
        factor (in (0, 1)). Growing only then (instead of after every iteration) saves the
        rejected trial of ``growth * tau`` in every iteration where ``tau`` is the right step:
        on the demo reconstruction 1.8 instead of 2.3 batched trials per line search.
    armijo : float
        Sufficient-decrease constant ``c`` in (0, 1).
    max_backtracks : int
        Cap on backtracking steps per iteration; a start whose line search fails stops.
    eps : float
        Relative shift of ``J^T J`` (see :func:`~eit_manifold.optim.verbs.riemannian_gradient`).
    hysteresis : float
        Responsibility margin for a chart switch; ``None`` disables switching.
    latent_bound : float, optional
        Keep every latent coordinate in ``[-latent_bound, latent_bound]`` (the support of the
        chart priors) by clipping after each retraction, so an iterate cannot wander onto a
        chart's untrained extrapolation; it must switch chart instead. ``None`` disables.
    batched : bool
        Whether ``objective`` accepts a batch.
    record_iterates : bool
        Keep every iterate in the history (for trajectory figures; memory ``T * B * n``).
    prune_at : sequence of int
        Iterations after which the worse half of the starts stops (module docstring); empty: off.
    """

    def __init__(
        self,
        atlas: AtlasLike,
        objective: Callable[[Tensor], Tensor],
        *,
        retraction: str = "projection",
        max_iter: int = 100,
        ftol: float = 1e-9,
        gtol: float = 1e-14,
        stop_window: int | None = 10,
        stop_rtol: float = 1e-3,
        step_init: float | str = 1.0,
        max_step: float | None = None,
        growth: float = 2.0,
        shrink: float = 0.5,
        armijo: float = 1e-4,
        max_backtracks: int = 30,
        eps: float = 1e-8,
        hysteresis: float | None = 0.1,
        latent_bound: float | None = 0.9,
        batched: bool = True,
        record_iterates: bool = False,
        prune_at: Sequence[int] = (),
    ) -> None:
        if retraction not in RETRACTIONS:
            raise ValueError(f"retraction must be one of {RETRACTIONS}, got {retraction!r}")
        if int(max_iter) != max_iter or max_iter < 0:
            raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
        for name, value in (("ftol", ftol), ("gtol", gtol), ("eps", eps)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be non-negative and finite, got {value!r}")
        if stop_window is not None and (int(stop_window) != stop_window or stop_window < 1):
            raise ValueError(f"stop_window must be a positive integer or None, got {stop_window!r}")
        if not (math.isfinite(stop_rtol) and stop_rtol >= 0):
            raise ValueError(f"stop_rtol must be non-negative and finite, got {stop_rtol!r}")
        if step_init != "auto" and not (isinstance(step_init, int | float) and math.isfinite(step_init)
                                        and step_init > 0):
            raise ValueError(f"step_init must be positive or 'auto', got {step_init!r}")
        if max_step is not None and not max_step > 0:
            raise ValueError(f"max_step must be positive, got {max_step!r}")
        if not growth >= 1:
            raise ValueError(f"growth must be >= 1, got {growth!r}")
        if not 0 < shrink < 1:
            raise ValueError(f"shrink must be in (0, 1), got {shrink!r}")
        if not 0 < armijo < 1:
            raise ValueError(f"armijo must be in (0, 1), got {armijo!r}")
        if int(max_backtracks) != max_backtracks or max_backtracks < 0:
            raise ValueError(f"max_backtracks must be an integer >= 0, got {max_backtracks!r}")
        if hysteresis is not None and not 0 <= hysteresis < 1:
            raise ValueError(f"hysteresis must be in [0, 1) or None, got {hysteresis!r}")
        self.atlas = atlas
        self.objective = objective
        self.retraction = retraction
        self.max_iter = int(max_iter)
        self.ftol = float(ftol)
        self.gtol = float(gtol)
        self.stop_window = None if stop_window is None else int(stop_window)
        self.stop_rtol = float(stop_rtol)
        self.step_init = float("nan") if step_init == "auto" else float(step_init)  # NaN: set on first use
        self.max_step = max_step
        self.growth = float(growth)
        self.shrink = float(shrink)
        self.armijo = float(armijo)
        self.max_backtracks = int(max_backtracks)
        self.eps = float(eps)
        if latent_bound is not None and not latent_bound > 0:
            raise ValueError(f"latent_bound must be positive or None, got {latent_bound!r}")
        self.hysteresis = hysteresis
        self.latent_bound = latent_bound
        self.batched = batched
        self.record_iterates = record_iterates
        if any(int(t) != t or t < 1 for t in prune_at):
            raise ValueError(f"prune_at must list positive iteration numbers, got {tuple(prune_at)!r}")
        self.prune_at = tuple(sorted({int(t) for t in prune_at}))

    # ------------------------------------------------------------------ objective helpers
    def _f(self, x: Tensor) -> Tensor:
        """Objective values ``(B,)`` in float64."""
        if self.batched:
            out = self.objective(x)
        else:
            out = torch.stack([torch.as_tensor(self.objective(xi)) for xi in x])
        out = out.reshape(-1)
        if out.shape[0] != x.shape[0]:
            raise ValueError(
                f"objective returned {out.shape[0]} values for a batch of {x.shape[0]}; "
                "it must return one value per item (or pass batched=False)"
            )
        return out.to(torch.float64)

    def _f_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            f = self._f(x)
            (g,) = torch.autograd.grad(f.sum(), x)
        return f.detach(), g.detach()

    def _clip(self, w: Tensor) -> Tensor:
        if self.latent_bound is None:
            return w
        return w.clamp(-self.latent_bound, self.latent_bound)

    # ------------------------------------------------------------------ starting points
    def initial_points(self, n_starts: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Prior samples spread round-robin over the charts: returns ``(w, charts)``.

        ``generator`` is passed to ``atlas.sample_latent`` when given (else the global RNG).
        """
        if int(n_starts) != n_starts or n_starts < 1:
            raise ValueError(f"n_starts must be a positive integer, got {n_starts!r}")
        k_all = torch.arange(n_starts) % self.atlas.n_charts
        ws = []
        for k in range(self.atlas.n_charts):
            n_k = int((k_all == k).sum())
            if n_k:
                kw = {} if generator is None else {"generator": generator}
                ws.append((k, self.atlas.sample_latent(k, n_k, **kw).detach()))
        w = torch.zeros((n_starts, ws[0][1].shape[1]), dtype=ws[0][1].dtype)
        for k, wk in ws:
            w[k_all == k] = wk.to(w.dtype)
        return w, k_all

    def _start_state(
        self,
        n_starts: int,
        x0: Tensor | None,
        chart0: Tensor | None,
        generator: torch.Generator | None,
    ) -> _State:
        if x0 is None:
            w, chart = self.initial_points(n_starts, generator)
        else:
            x0 = x0.detach()
            with torch.no_grad():
                if chart0 is None:
                    chart0 = self.atlas.chart_probabilities(x0).argmax(dim=1)
            chart = torch.as_tensor(chart0, dtype=torch.long).reshape(-1)
            if chart.shape[0] != x0.shape[0]:
                raise ValueError(f"chart0 has {chart.shape[0]} entries for {x0.shape[0]} starts")
            ws = [None] * x0.shape[0]
            with torch.no_grad():
                for k in chart.unique().tolist():
                    idx = (chart == k).nonzero()[:, 0]
                    wk = self.atlas.charts[k].encode(x0[idx])
                    for i, j in enumerate(idx.tolist()):
                        ws[j] = wk[i]
            w = torch.stack(ws)
        w = self._clip(w)
        x = self.decode_points(w, chart)
        with torch.no_grad():
            f = self._f(x)
        b = x.shape[0]
        return _State(
            x=x,
            w=w,
            chart=chart,
            f=f,
            tau=torch.full((b,), self.step_init, dtype=torch.float64),
            active=torch.isfinite(f),
            grad=torch.zeros(x.shape, dtype=torch.float64),
            grad_valid=torch.zeros(b, dtype=torch.bool),
        )

    def decode_points(self, w: Tensor, chart: Tensor) -> Tensor:
        """Decode latents ``w`` (B, d), each with its chart ``chart`` (B,), one batch per chart."""
        out = None
        with torch.no_grad():
            for k in chart.unique().tolist():
                idx = chart == k
                xk = self.atlas.charts[k].decode(w[idx])
                if out is None:
                    out = torch.zeros((w.shape[0], *xk.shape[1:]), dtype=xk.dtype)
                out[idx] = xk
        assert out is not None
        return out

    # ------------------------------------------------------------------ one iteration
    def _switch_candidates(self, st: _State, idx: Tensor) -> Tensor:
        """Chart to work in for the active starts ``idx`` (hysteresis rule)."""
        if self.hysteresis is None or self.atlas.n_charts == 1:
            return st.chart[idx].clone()
        with torch.no_grad():
            probs = self.atlas.chart_probabilities(st.x[idx])
        return choose_chart(probs, st.chart[idx], self.hysteresis)

    @staticmethod
    def _prune(st: _State, alive: np.ndarray) -> np.ndarray:
        """Stop the worse half of the ``alive`` starts (not pruned before), ranked by their current
        objective (NaN/inf last); returns the mask of the starts stopped now."""
        f = st.f.clone()
        f[~torch.isfinite(f)] = float("inf")
        idx = torch.as_tensor(np.flatnonzero(alive))
        order = idx[torch.argsort(f[idx], stable=True)]
        worse = torch.zeros(f.shape[0], dtype=torch.bool)
        worse[order[(len(order) + 1) // 2:]] = True
        st.active &= ~worse
        return worse.numpy()

    def _line_search(
        self,
        chart: ChartLike,
        x: Tensor,
        w: Tensor,
        f_base: Tensor,
        f_cap: Tensor,
        v: Tensor,
        xi: Tensor,
        jtg: Tensor,
        tau0: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Armijo backtracking for a group in one chart; returns ``(x, w, f, g, tau, accepted, first)``
        (``g``: the gradient of ``F`` at the accepted points, zero elsewhere; ``first``: accepted
        at the first trial).

        Trials are evaluated with their autograd graph and the accepted ones differentiated at once,
        so the next iteration needs no new evaluation at its base point: for the EIT objective the
        gradient reuses the trial's factorisation (one adjoint solve instead of a forward solve,
        a factorisation and the adjoint solve).

        A trial ``w+`` is accepted when ``F(G(w+)) <= F(base) - c <J^T g, w - w+>`` (the
        first-order decrease of the latent move actually made, ``tau <g, v>`` without clipping;
        it must be positive) and ``F(G(w+)) <= f_cap``.
        """
        b = x.shape[0]
        x_new, w_new, f_new = x.clone(), w.clone(), f_base.clone()
        g_new = torch.zeros(x.shape, dtype=torch.float64)
        tau = tau0.clone()
        if self.max_step is not None:
            vnorm = v.norm(dim=1).clamp_min(1e-300)
            tau = torch.minimum(tau, self.max_step / vnorm)
        accepted = torch.zeros(b, dtype=torch.bool)
        first = torch.zeros(b, dtype=torch.bool)
        for trial in range(self.max_backtracks + 1):
            pend = (~accepted).nonzero()[:, 0]
            if pend.numel() == 0:
                break
            t = tau[pend]
            if self.retraction == "projection":
                xt, wt = retract_projection(chart, x[pend], -(t[:, None] * v[pend]))
            else:
                xt, wt = retract_chart(chart, w[pend], -(t[:, None] * xi[pend]))
            if self.latent_bound is not None:
                clipped = self._clip(wt)
                moved = (clipped != wt).any(dim=1)
                if moved.any():
                    with torch.no_grad():
                        xt[moved] = chart.decode(clipped[moved]).to(xt.dtype)
                wt = clipped
            xg = xt.detach().requires_grad_(True)
            with torch.enable_grad():
                ft_graph = self._f(xg)
            ft = ft_graph.detach()
            pred = (jtg[pend] * (w[pend] - wt).to(torch.float64)).sum(dim=1)
            ok = torch.isfinite(ft) & (pred > 0) & (ft <= f_base[pend] - self.armijo * pred) & (ft <= f_cap[pend])
            good = pend[ok]
            if ok.any():
                (gt,) = torch.autograd.grad(ft_graph[ok].sum(), xg)
                g_new[good] = gt[ok].to(torch.float64)
            del ft_graph, xg
            x_new[good], w_new[good], f_new[good] = xt[ok], wt[ok], ft[ok]
            accepted[good] = True
            if trial == 0:
                first[good] = True
            tau[pend[~ok]] *= self.shrink
        return x_new, w_new, f_new, g_new, tau, accepted, first

    def _iterate(self, st: _State) -> tuple[Tensor, Tensor, Tensor]:
        """One iteration on the active starts; returns ``(step, switched, stop)`` for all starts."""
        n = st.x.shape[0]
        step = torch.full((n,), float("nan"), dtype=torch.float64)
        switched = torch.zeros(n, dtype=torch.bool)
        stop = torch.zeros(n, dtype=torch.bool)
        idx = st.active.nonzero()[:, 0]
        if idx.numel() == 0:
            return step, switched, stop
        target = self._switch_candidates(st, idx)
        for k in target.unique().tolist():
            grp = idx[target == k]
            chart = self.atlas.charts[k]
            moving = st.chart[grp] != k
            # Base points: the current iterate, or its projection onto the new chart.
            w_base = st.w[grp].clone()
            if moving.any():
                with torch.no_grad():
                    w_new = chart.encode(st.x[grp[moving]]).to(w_base.dtype)
                    w_base[moving] = self._clip(w_new)
            x_base, jac = decode_with_jacobian(chart, w_base)
            # Where the line search left F and its gradient at this very point, use them.
            known = st.grad_valid[grp] & ~moving
            x_base[known] = st.x[grp[known]].to(x_base.dtype)
            f_base = st.f[grp].clone()
            g = torch.zeros((len(grp), *x_base.shape[1:]), dtype=torch.float64)
            g[known] = st.grad[grp[known]]
            if (~known).any():
                f_new, g_new = self._f_and_grad(x_base[~known])
                f_base[~known], g[~known] = f_new.to(f_base.dtype), g_new.to(g.dtype)
            v, xi = riemannian_gradient(jac, g, self.eps)
            g64 = g.reshape(len(grp), -1).to(torch.float64)
            sq = (g64 * v).sum(dim=1)
            tau0 = st.tau[grp]
            unset = torch.isnan(tau0)  # step_init="auto": the zero of the objective's linear model
            tau0[unset] = f_base.to(torch.float64)[unset].abs() / sq[unset].clamp_min(1e-300)
            jtg = (jac.transpose(1, 2) @ g64[..., None])[..., 0]
            x1, w1, f1, g1, tau, ok, first = self._line_search(chart, x_base, w_base, f_base, st.f[grp], v, xi,
                                                                jtg, tau0)
            # Accepted steps update the state; a failed switch keeps the old chart and point.
            acc = grp[ok]
            decrease = st.f[acc] - f1[ok]
            st.x[acc], st.w[acc], st.f[acc] = x1[ok].to(st.x.dtype), w1[ok].to(st.w.dtype), f1[ok]
            st.grad[acc], st.grad_valid[acc] = g1[ok], True
            st.chart[acc] = k
            switched[acc] = moving[ok]
            step[grp] = torch.where(ok, tau, torch.zeros_like(tau))
            st.tau[acc] = torch.where(first[ok], tau[ok] * self.growth, tau[ok])
            rel = decrease <= self.ftol * st.f[acc].abs().clamp_min(1e-30)
            stop[acc[rel]] = True
            # A failed line search stops a start unless it was only a refused switch.
            fail = grp[~ok & ~moving]
            stop[fail] = True
            st.tau[grp[~ok & moving]] = tau0[~ok & moving]
            stop[grp[(sq <= self.gtol) & ~moving]] = True
        return step, switched, stop

    # ------------------------------------------------------------------ public entry point
    def run(
        self,
        n_starts: int = 8,
        x0: Tensor | None = None,
        chart0: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> DescentResult:
        """Minimise the objective from ``n_starts`` prior samples (or from ``x0``).

        Parameters
        ----------
        n_starts : int
            Number of prior samples, spread round-robin over the charts (ignored with ``x0``).
        x0 : Tensor, optional
            Starting data points ``(B, *data_shape)``; they are first projected onto a chart.
        chart0 : Tensor, optional
            Chart of each ``x0`` (default: the most responsible chart).
        generator : torch.Generator, optional
            Random source of the prior samples.
        progress : bool
            Show a progress bar (iterations, best objective).

        Returns
        -------
        DescentResult
            Best start's point, all starts' final states, and the history.
        """
        st = self._start_state(n_starts, x0, chart0, generator)
        b = st.x.shape[0]
        objs, charts, steps, sw = [st.f.numpy().copy()], [st.chart.numpy().copy()], [], []
        iterates = [st.x.reshape(b, -1).double().numpy().copy()] if self.record_iterates else None
        bar = tqdm(total=self.max_iter, desc="descent", disable=not progress, leave=False)
        best = [float(best_per_iteration(objs[0][None])[0])]
        pruned = np.full(b, -1)
        reason = "max_iter"
        for _ in range(self.max_iter):
            if not st.active.any():
                reason = "converged"
                break
            if window_stalled(best, self.stop_window, self.stop_rtol):
                reason = "window"
                break
            bar.update()
            bar.set_postfix(best=f"{float(st.f.min()):.3g}", active=int(st.active.sum()))
            step, switched, stop = self._iterate(st)
            st.active &= ~stop
            objs.append(st.f.numpy().copy())
            charts.append(st.chart.numpy().copy())
            steps.append(step.numpy())
            sw.append(switched.numpy())
            best.append(float(best_per_iteration(objs[-1][None])[0]))
            if len(steps) in self.prune_at:
                pruned[self._prune(st, pruned < 0)] = len(steps)
            if iterates is not None:
                iterates.append(st.x.reshape(b, -1).double().numpy().copy())
        else:
            if not st.active.any():
                reason = "converged"
            elif window_stalled(best, self.stop_window, self.stop_rtol):
                reason = "window"
        bar.close()
        history = DescentHistory(
            objective=np.stack(objs),
            chart=np.stack(charts),
            step=np.stack(steps) if steps else np.zeros((0, b)),
            switched=np.stack(sw) if sw else np.zeros((0, b), dtype=bool),
            iterates=np.stack(iterates) if iterates is not None else None,
        )
        f = st.f.clone()
        f[~torch.isfinite(f)] = float("inf")
        best = int(f.argmin())
        return DescentResult(
            x=st.x[best].clone(),
            w=st.w[best].clone(),
            chart=int(st.chart[best]),
            objective=float(st.f[best]),
            best_start=best,
            x_all=st.x.clone(),
            w_all=st.w.clone(),
            chart_all=st.chart.numpy().copy(),
            objective_all=st.f.numpy().copy(),
            converged=(~st.active).numpy().copy(),
            history=history,
            stop_reason=reason,
            pruned=pruned,
        )
