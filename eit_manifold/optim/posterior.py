"""Posterior sampling on a learned atlas: preconditioned MALA per chart, chart masses by importance sampling.

The posterior of an image ``x`` on the learned manifold given data ``d``,
``p(x | d) ∝ exp(-0.5 ||r(x)||^2) p_atlas(x)`` with the whitened residual
``r(x) = (A(x) - d) / s``, is the mixture over charts of the latent posteriors

    p(k, w | d) ∝ alpha_k p_k(w) exp(-0.5 ||r(G_k(w))||^2),

because the atlas prior is the mixture of the pushforwards ``G_k # p_k`` with weights ``alpha_k``.
So each chart is sampled on its own, in its latent space, and the charts are combined by their
posterior masses ``pi_k ∝ alpha_k Z_k`` with the evidences ``Z_k = ∫ p_k(w) exp(-0.5||r||^2) dw``.
Overlapping charts need no special care: the mixture prior counts an image covered by two charts
with both charts' densities.

Per chart (``U(w) = 0.5 ||r(G(w))||^2 + energy_k(w)``):

* **Starts**: ``starts`` prior samples of the chart (and optionally a warm start, e.g. the
  projection of a classical reconstruction) are moved by a short Riemannian descent of
  ``0.5 ||r||^2`` (no chart switches); chains start at the best end points, skipping local modes
  whose potential is more than ``mode_gap`` (20) above the best (they hold ~exp(-20) of the mass:
  on a sharp likelihood a chain started there never leaves and only spoils R-hat and ESS).
* **Or a tempered SMC start** (``init="smc"``, :mod:`.smc`): particles carried from the chart
  prior to its posterior give the chain starts and the independence proposal; no descent and no
  MALA burn-in.
* **Sampler**: MALA with a per-chain preconditioner ``Sigma = (J^T J + H_prior + P_0)^{-1}``, the
  Gauss-Newton (Laplace) covariance at the chain's position (``J = d r(G(w)) / dw`` by central
  differences, so any operator works; ``P_0`` = the inverse prior variance). Proposal
  ``w' = w - eps^2/2 Sigma grad U + eps L xi`` with ``L L^T = Sigma``, Metropolis-Hastings
  correction. During burn-in the step ``eps`` is adapted by dual averaging (Hoffman & Gelman 2014)
  to the acceptance rate 0.574 (optimal for MALA); the preconditioner is recomputed at 1/4
  (Gauss-Newton at the chain's recent mean), 1/2 and 3/4 of burn-in (``0.8 S + 0.2 Sigma_GN``, ``S``
  the within-chain covariance of the last quarter of burn-in pooled over the chart's chains),
  restarting the step adaptation each time. Adaptation stops at the end of burn-in, so the draws are from a
  fixed Markov kernel with the posterior as invariant law.
* **Independence steps** (:class:`IndependenceProposal`, a defensive t mixture fitted to the pooled
  chains ``proposal_fits`` times over the second half of burn-in): ``independence`` steps follow every MALA step from
  half of burn-in on; after burn-in they alone move the chains by default (``local_steps=0``): a
  fitted ``q`` decorrelates a chain in a few accepted jumps, and a MALA step costs about three
  proposals. The proposals of a chain are drawn ahead and evaluated in batches
  (:class:`_ProposalPool`); they are also the importance sample of the chart's evidence.
* Every chain adapts alone and draws from its own generator (seeded by seed, chart and chain),
  and every process computes the same candidate starts, so chains can run on different processes
  with the same results (up to the round-off of batched network evaluations).
* **Chart mass**: importance sampling of ``Z_k``: the post-burn-in independence proposals, or
  (``independence=0``) a defensive mixture proposal (90 % a multivariate t with 5 degrees of
  freedom fitted to the chart's draws, covariance x 1.5; 10 % the prior), with its standard error
  and importance-sampling ESS.

Diagnostics per chart: split R-hat and ESS per latent coordinate (:mod:`.diagnostics`),
acceptance rate, step size, time; R-hat > 1.05 or ESS < 100 is a warning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from eit_manifold.optim.diagnostics import effective_sample_size, split_rhat
from eit_manifold.optim.smc import SMCResult, tempered_smc

ResidualFn = Callable[[Tensor], Tensor]
RHAT_MAX = 1.05
ESS_MIN = 100.0
TARGET_ACCEPT = 0.574  # optimal for MALA (Roberts & Rosenthal 1998)
TARGET_ACCEPT_HMC = 0.65  # optimal for HMC (Beskos et al. 2013)


def gaussian_residual(forward: Callable[[Tensor], Tensor], data: Tensor, noise_std: Tensor | float) -> ResidualFn:
    """Whitened residual ``r(x) = (A(x) - d) / s``, flattened per item, in float64.

    Parameters
    ----------
    forward : callable
        The operator ``A``: a torch-differentiable map of a batch ``(B, *data_shape)`` to data
        ``(B, *d.shape)`` (as accepted by ``reconstruct`` / :class:`RiemannianDescent`).
    data : Tensor
        Measured data ``d`` (one item, no batch axis).
    noise_std : Tensor or float
        Noise standard deviation ``s``, broadcastable to ``d``; must be positive.
    """
    d = torch.as_tensor(data, dtype=torch.float64)
    s = torch.as_tensor(noise_std, dtype=torch.float64)
    if not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError("noise_std must be positive and finite")

    def residual(x: Tensor) -> Tensor:
        return ((forward(x).to(torch.float64) - d) / s).flatten(1)

    return residual


def _chain_generator(seed: int, *key: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), *map(int, key)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class IndependenceProposal:
    """Defensive mixture of multivariate t's and the chart prior, for independence Metropolis-Hastings.

    ``q = (1 - lam) sum_j beta_j t_nu(m_j, scale C_j) + lam p_k``: the t components are fitted to
    windows of the chart's chains (:meth:`fit`), ``p_k`` is the chart prior. Heavier tails than a
    Gaussian fit and the prior component keep ``p / q`` bounded where a fit is too narrow (then
    the independence sampler stays uniformly ergodic, Mengersen & Tweedie 1996). Proposals drawn
    from a fixed ``q`` are also an importance sample of the chart's evidence.

    Parameters
    ----------
    chart
        The chart (``prior.energy``, ``prior.log_normalizer``, ``sample_latent``).
    means : Tensor
        ``(M, d)`` centres of the t components.
    covs : Tensor
        ``(M, d, d)`` their covariances (multiplied by ``scale``).
    weights : Tensor
        ``(M,)`` their shares ``beta_j`` of the t part (normalised here).
    nu : int
        Degrees of freedom of the t components.
    scale : float
        Inflation of ``covs``.
    prior_weight : float
        ``lam``, the prior's share of the mixture.
    """

    def __init__(self, chart, means: Tensor, covs: Tensor, weights: Tensor, nu: int = 5, scale: float = 1.5,
                 prior_weight: float = 0.1) -> None:
        m, d = means.shape
        self.chart, self.nu, self.lam = chart, int(nu), float(prior_weight)
        self.means = means.to(torch.float64)
        covs = scale * covs.to(torch.float64)
        covs = 0.5 * (covs + covs.transpose(1, 2)) + 1e-10 * torch.eye(d, dtype=torch.float64)
        self.chols = torch.linalg.cholesky(covs)
        beta = weights.to(torch.float64)
        self.log_beta = torch.log(beta / beta.sum())
        self._cdf = torch.cumsum(beta / beta.sum(), 0)
        self._log_t0 = (math.lgamma((self.nu + d) / 2) - math.lgamma(self.nu / 2)
                        - 0.5 * d * math.log(self.nu * math.pi)
                        - torch.log(torch.diagonal(self.chols, dim1=1, dim2=2)).sum(1))

    @classmethod
    def fit(cls, chart, window: Tensor, bins: int = 6, global_share: float = 0.3, **kwargs) -> IndependenceProposal:
        """Fit to a window ``(n, C, d)`` of ``C`` chains (all chains of the chart, in chain order).

        One component has the pooled draws' mean and covariance (between chains included); the
        others (``1 - global_share`` of the t part) tile the draws along their first principal
        axis: ``bins`` groups of equal count by the projection on it, each with its own mean and
        covariance (Giordani & Kohn 2010 fit mixtures for the same purpose). A curved ridge, as
        the EIT posterior of a badly fitting chart is (its draws: one principal variance 100x the
        others), is covered by the tiles where one ellipsoid would waste most proposals beside it.
        Covariances are shrunk by 5 % towards their diagonal (windows are short and autocorrelated).
        """
        d = window.shape[-1]
        flat = window.reshape(-1, d)

        def cov(x: Tensor) -> Tensor:
            dev = x - x.mean(0)
            s = dev.T @ dev / max(len(x) - 1, 1)
            return 0.95 * s + 0.05 * torch.diag(torch.diagonal(s))

        total = cov(flat)
        means, covs, weights = [flat.mean(0)], [total], [global_share]
        bins = min(int(bins), len(flat) // (2 * d + 2))  # enough points per tile for a covariance
        if bins >= 2:
            axis = torch.linalg.eigh(total).eigenvectors[:, -1]
            order = torch.argsort((flat - flat.mean(0)) @ axis, stable=True)
            for part in torch.tensor_split(order, bins):
                means.append(flat[part].mean(0))
                covs.append(cov(flat[part]))
                weights.append((1 - global_share) / bins)
        return cls(chart, torch.stack(means), torch.stack(covs), torch.tensor(weights, dtype=torch.float64),
                   **kwargs)

    def sample(self, generator: torch.Generator) -> Tensor:
        """One draw ``(d,)``; the same random numbers are consumed whichever component is chosen."""
        d = self.means.shape[1]
        pick = torch.rand((), generator=generator, dtype=torch.float64)
        which = torch.rand((), generator=generator, dtype=torch.float64)
        z = torch.randn(d, generator=generator, dtype=torch.float64)
        chi = (torch.randn(self.nu, generator=generator, dtype=torch.float64) ** 2).sum()
        from_prior = self.chart.sample_latent(1, generator)[0].to(torch.float64)
        j = min(int(torch.searchsorted(self._cdf, which)), len(self._cdf) - 1)
        t = self.means[j] + self.chols[j] @ z / torch.sqrt(chi / self.nu)
        return from_prior if bool(pick < self.lam) else t

    def sample_batch(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` draws ``(n, d)`` at once (other random numbers than ``n`` calls of :meth:`sample`)."""
        d = self.means.shape[1]
        pick = torch.rand(n, generator=generator, dtype=torch.float64)
        which = torch.rand(n, generator=generator, dtype=torch.float64)
        z = torch.randn(n, d, generator=generator, dtype=torch.float64)
        chi = (torch.randn(n, self.nu, generator=generator, dtype=torch.float64) ** 2).sum(1)
        from_prior = self.chart.sample_latent(n, generator).to(torch.float64)
        j = torch.searchsorted(self._cdf, which).clamp(max=len(self._cdf) - 1)
        t = self.means[j] + (self.chols[j] @ z[..., None])[..., 0] / torch.sqrt(chi / self.nu)[:, None]
        return torch.where((pick < self.lam)[:, None], from_prior, t)

    def log_density(self, w: Tensor) -> Tensor:
        """``log q(w)`` of a batch ``(B, d)``, evaluated one item at a time (batch-invariant)."""
        w = w.detach().to(torch.float64)
        dev = (w[None] - self.means[:, None]).transpose(1, 2)  # (M, d, B)
        sol = torch.linalg.solve_triangular(self.chols, dev, upper=False)
        log_t = (self._log_t0[:, None] - 0.5 * (self.nu + w.shape[1]) * torch.log1p((sol**2).sum(1) / self.nu))
        log_t = torch.logsumexp(log_t + self.log_beta[:, None], dim=0)
        with torch.no_grad():
            energy = torch.cat([self.chart.prior.energy(wi).to(torch.float64) for wi in w.split(1)])
        log_prior = -energy - float(self.chart.prior.log_normalizer)
        both = torch.stack([math.log1p(-self.lam) + log_t, math.log(self.lam) + log_prior])
        return torch.logsumexp(both, dim=0)


def _gather_chains(window: Tensor, chain_ids: Sequence[int], comm) -> Tensor:
    """``(n, C_local, d)`` burn-in windows of this process -> ``(n, C_all, d)`` of all, by chain index.

    Every process gets the same array in the same order as a serial run, so statistics fitted to it
    are bit for bit those of the serial run.
    """
    if comm is None:
        ids, parts = list(chain_ids), [window]
    else:
        gathered = comm.allgather((list(chain_ids), window.numpy()))
        ids = [i for g in gathered for i in g[0]]
        parts = [torch.as_tensor(g[1]) for g in gathered]
    both = torch.cat(parts, dim=1)
    return both[:, np.argsort(ids, kind="stable")]


class ChartPotential:
    """``U(w) = 0.5 ||r(G_k(w))||^2 + energy_k(w)`` for one chart, in float64.

    Parameters
    ----------
    chart
        Chart with ``decode(w)``, ``prior.energy(w)``, ``prior.log_normalizer`` and
        ``sample_latent(n, generator)``.
    residual : callable
        Whitened residual of a batch of data items, ``(B, m)``.
    """

    def __init__(self, chart, residual: ResidualFn) -> None:
        self.chart = chart
        self.residual = residual
        self.evaluations = 0

    def _split(self, w: Tensor) -> tuple[Tensor, Tensor]:
        # One item at a time: the float32 networks' batched kernels round differently for different
        # batch sizes, and MCMC amplifies that round-off (accept/reject decisions flip), so a chain
        # must not depend on which other chains share its process: then ``mpirun -n P`` draws the
        # very same chains as a serial run.
        nll, energy = self._items(w.split(1))
        return torch.cat(nll), torch.cat(energy)

    def _items(self, items: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """``0.5 ||r||^2`` and ``energy`` of every ``(1, d)`` item, each evaluated alone (see :meth:`_split`)."""
        nll, energy = [], []
        for wi in items:
            r = self.residual(self.chart.decode(wi))
            nll.append(0.5 * (r**2).sum(dim=1))
            energy.append(self.chart.prior.energy(wi).to(torch.float64))
        self.evaluations += len(items)
        return nll, energy

    def value(self, w: Tensor) -> Tensor:
        """``U(w)`` ``(B,)``, no gradient; NaN/inf stay (rejected by the sampler)."""
        with torch.no_grad():
            nll, energy = self._split(w)
        return nll + energy

    def value_batch(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """``U(w)`` and ``0.5 ||r||^2`` ``(B,)`` of a batch decoded as one batch, without gradient.

        A batch must be made of one chain's own points (e.g. its pre-drawn independence proposals):
        then it is the same batch whichever process runs the chain, and :meth:`_split`'s
        batch-invariance holds. The values agree with :meth:`value`'s up to float32 round-off of the
        batched network kernels.
        """
        energy, nll = self.parts_batch(w)
        return nll + energy, nll

    def parts_batch(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """``energy(w)`` and ``0.5 ||r||^2`` ``(B,)`` of a batch decoded as one batch (see :meth:`value_batch`)."""
        with torch.no_grad():
            r = self.residual(self.chart.decode(w))
            nll = 0.5 * (r.to(torch.float64) ** 2).sum(dim=1)
            energy = self.chart.prior.energy(w).to(torch.float64)
        self.evaluations += w.shape[0]
        return energy, nll

    def value_and_grad(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``U(w)``, ``grad U(w)`` ``(B, d)`` and the negative log-likelihood part ``(B,)``, item by item."""
        leaves = [wi.detach().to(torch.float64).requires_grad_(True) for wi in w.split(1)]
        with torch.enable_grad():
            nlls, energies = self._items(leaves)
            us = [a + b for a, b in zip(nlls, energies, strict=True)]
        g = torch.stack([torch.autograd.grad(ui.sum(), leaf)[0][0] for ui, leaf in zip(us, leaves, strict=True)])
        return torch.cat(us).detach(), g, torch.cat(nlls).detach()

    def gauss_newton(self, w: Tensor, h: float = 1e-4) -> Tensor:
        """``J^T J + Hess(energy)`` at each ``w`` ``(B, d, d)``; ``J`` by central differences in ``w``."""
        b, d = w.shape
        w = w.detach().to(torch.float64)
        step = h * torch.eye(d, dtype=w.dtype)
        # the 2d points of each item form one batch of their own (batch-invariance, see _split)
        pts = torch.cat([w[:, None, :] + step, w[:, None, :] - step], dim=1)  # (B, 2d, d)
        with torch.no_grad():
            r = torch.stack([self.residual(self.chart.decode(p)) for p in pts])  # (B, 2d, m)
        self.evaluations += b * 2 * d
        r_plus, r_minus = r[:, :d], r[:, d:]
        jac = (r_plus - r_minus) / (2 * h)  # (B, d, m): rows are d r / d w_j
        jtj = jac @ jac.transpose(1, 2)
        hess = torch.stack([torch.autograd.functional.hessian(
            lambda v: self.chart.prior.energy(v[None]).sum().to(torch.float64), wi) for wi in w])
        out = jtj + hess
        return torch.where(torch.isfinite(out), out, torch.zeros_like(out))


class _ProposalPool:
    """One chain's independence proposals, drawn ahead from a fixed ``q`` and evaluated in batches.

    The proposals of an independence sampler do not depend on the chain's state, so a block of
    them can be drawn and evaluated at once: the decoder then runs in one batch (EIT balls atlas:
    ~1 ms per item against ~5 ms alone) while the operator still solves per item. A pool holds the
    proposals of one ``q`` only (it is emptied when ``q`` is refitted) and is sized so that none is
    left over at a refit.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.clear()

    def clear(self) -> None:
        self._w = self._u = self._nll = self._log_q = None
        self._next = 0

    def take(self, pot: ChartPotential, q: IndependenceProposal, refill: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The next proposal ``w'`` ``(d,)`` with ``U(w')``, ``0.5 ||r(w')||^2`` and ``log q(w')``."""
        if self._w is None or self._next >= len(self._w):
            self._w = torch.stack([q.sample(self.generator) for _ in range(max(int(refill), 1))])
            self._u, self._nll = pot.value_batch(self._w)
            self._log_q = q.log_density(self._w)
            self._next = 0
        i = self._next
        self._next += 1
        return self._w[i], self._u[i], self._nll[i], self._log_q[i]


@dataclass
class ChainDraws:
    """Post-burn-in draws of some chains of one chart.

    Attributes
    ----------
    chart : int
        Chart index.
    chain_ids : list of int
        Global index of each chain.
    draws : np.ndarray
        ``(C, N, d)`` latents.
    potential : np.ndarray
        ``(C, N)`` ``U(w)``.
    nll : np.ndarray
        ``(C, N)`` ``0.5 ||r||^2``.
    accept : np.ndarray
        ``(C, N)`` Metropolis-Hastings acceptance probabilities.
    step_size : np.ndarray
        ``(C,)`` adapted step of every chain.
    starts : np.ndarray
        ``(C, d)`` start of every chain (end of its descent).
    evaluations : int
        Potential evaluations (each one forward solve for a batch item, with or without gradient).
    seconds : float
        Wall time of descent and sampling.
    proposal_log_w : np.ndarray
        ``(C, N)`` ``-U(w') - log q(w')`` of the post-burn-in independence proposals ``w' ~ q``
        (an importance sample of the chart's evidence); ``(C, 0)`` without them.
    proposal_accept : np.ndarray
        ``(C, N)`` their acceptance probabilities; ``(C, 0)`` without them.
    smc : dict
        With ``init="smc"``: the tempering's temperatures, move rounds, acceptance and evidence
        (the same on every process); empty otherwise.
    """

    chart: int
    chain_ids: list[int]
    draws: np.ndarray
    potential: np.ndarray
    nll: np.ndarray
    accept: np.ndarray
    step_size: np.ndarray
    starts: np.ndarray
    evaluations: int
    seconds: float
    proposal_log_w: np.ndarray
    proposal_accept: np.ndarray
    smc: dict = field(default_factory=dict)

    @staticmethod
    def merge(parts: Sequence[ChainDraws]) -> ChainDraws:
        """Chains of one chart from several processes, ordered by chain index."""
        parts = [p for p in parts if len(p.chain_ids)]
        order = np.argsort(np.concatenate([p.chain_ids for p in parts]))

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])[order]

        return ChainDraws(parts[0].chart, sorted(int(i) for p in parts for i in p.chain_ids), cat("draws"),
                          cat("potential"), cat("nll"), cat("accept"), cat("step_size"), cat("starts"),
                          sum(p.evaluations for p in parts), max(p.seconds for p in parts),
                          cat("proposal_log_w"), cat("proposal_accept"), parts[0].smc)


@dataclass
class ChartPosterior:
    """Draws, diagnostics and evidence of one chart.

    Attributes
    ----------
    samples : ChainDraws
        All chains of the chart.
    ess, rhat : np.ndarray
        ``(d,)`` per latent coordinate.
    ess_nll, rhat_nll : float
        Of the negative log-likelihood (a scalar summary of the image).
    thin : int
        Thinning of the kept draws.
    log_evidence, log_evidence_se : float
        ``log Z_k`` (normalised chart prior; likelihood constant dropped) and its standard error.
    is_ess : float
        Effective size of the importance sample.
    """

    samples: ChainDraws
    ess: np.ndarray
    rhat: np.ndarray
    ess_nll: float
    rhat_nll: float
    thin: int
    log_evidence: float
    log_evidence_se: float
    is_ess: float
    is_points: int = 0

    @property
    def chart(self) -> int:
        return self.samples.chart

    def kept(self) -> np.ndarray:
        """Thinned draws, chains concatenated, ``(n, d)``."""
        return self.samples.draws[:, :: self.thin].reshape(-1, self.samples.draws.shape[-1])


@dataclass
class PosteriorResult:
    """Outcome of :meth:`AtlasPosterior.run`.

    Attributes
    ----------
    charts : list of ChartPosterior
        One per chart of the atlas.
    probabilities : np.ndarray
        ``(K,)`` posterior chart masses ``pi_k``.
    log_weights : np.ndarray
        ``(K,)`` ``log alpha_k`` used.
    seconds : float
        Total wall time.
    warnings : list of str
        Failed diagnostics (R-hat > 1.05, ESS < 100, poor importance sample).
    """

    charts: list[ChartPosterior]
    probabilities: np.ndarray
    log_weights: np.ndarray
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def kept_draws(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Thinned draws of all charts: latents ``(n, d)``, chart index ``(n,)``, weight ``(n,)`` (sum 1)."""
        ws, ks, weights = [], [], []
        for c in self.charts:
            kept = c.kept()
            ws.append(kept)
            ks.append(np.full(len(kept), c.chart))
            weights.append(np.full(len(kept), self.probabilities[c.chart] / max(len(kept), 1)))
        weight = np.concatenate(weights)
        return np.concatenate(ws), np.concatenate(ks), weight / weight.sum()

    def decode(self, atlas, transform: Callable[[Tensor], Tensor] | None = None,
               batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images of the thinned draws ``(n, *data_shape)`` (after ``transform``), chart index, weight."""
        w, k, weight = self.kept_draws()
        out = np.empty((len(w), *atlas.data_shape))
        with torch.no_grad():
            for j in np.unique(k):
                idx = np.nonzero(k == j)[0]
                for s in range(0, len(idx), batch_size):
                    part = idx[s : s + batch_size]
                    x = atlas.charts[int(j)].decode(torch.as_tensor(w[part]))
                    x = transform(x) if transform is not None else x
                    out[part] = x.to(torch.float64).numpy()
        return out, k, weight

    def diagnostics(self) -> dict:
        """JSON-serialisable diagnostics of every chart and the warnings."""
        charts = []
        for c in self.charts:
            s = c.samples
            charts.append({
                "chart": c.chart,
                "probability": float(self.probabilities[c.chart]),
                "chains": len(s.chain_ids),
                "draws_per_chain": int(s.draws.shape[1]),
                "ess": c.ess.tolist(),
                "ess_min": float(c.ess.min()),
                "rhat": c.rhat.tolist(),
                "rhat_max": float(c.rhat.max()),
                "ess_nll": c.ess_nll,
                "rhat_nll": c.rhat_nll,
                # acceptance of the local (MALA/HMC) moves; None when only independence steps ran
                "acceptance_rate": _nan_to_none(float(s.accept.mean())),
                "acceptance_per_chain": [_nan_to_none(float(a)) for a in s.accept.mean(axis=1)],
                "step_size": s.step_size.tolist(),
                "thin": c.thin,
                "kept": int(c.kept().shape[0]),
                "log_evidence": c.log_evidence,
                "log_evidence_se": c.log_evidence_se,
                "importance_ess": c.is_ess,
                "importance_points": c.is_points,
                "independence_acceptance": (float(s.proposal_accept.mean()) if s.proposal_accept.size else None),
                "evaluations": s.evaluations,
                "seconds": s.seconds,
                **({"smc": s.smc} if s.smc else {}),
            })
        return {"charts": charts, "chart_probabilities": self.probabilities.tolist(),
                "seconds": self.seconds, "warnings": list(self.warnings),
                "thresholds": {"rhat_max": RHAT_MAX, "ess_min": ESS_MIN}}


def _nan_to_none(v: float) -> float | None:
    return None if math.isnan(v) else v


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` of weighted samples along axis 0 (``values`` ``(n, ...)``, ``weights`` ``(n,)``).

    The inverse of the weighted empirical CDF with midpoint interpolation (for equal weights it
    is the ``'hazen'`` quantile).
    """
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    flat = v.reshape(len(v), -1)
    order = np.argsort(flat, axis=0)
    sv = np.take_along_axis(flat, order, axis=0)
    sw = w[order]
    cdf = (np.cumsum(sw, axis=0) - 0.5 * sw) / sw.sum(axis=0)
    out = np.empty(flat.shape[1])
    for j in range(flat.shape[1]):
        out[j] = np.interp(q, cdf[:, j], sv[:, j])
    return out.reshape(v.shape[1:])


def weighted_summary(values: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted mean, standard deviation and 5 % / 95 % quantiles along axis 0."""
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    v = np.asarray(values, dtype=float)
    mean = np.tensordot(w, v, axes=1)
    var = np.tensordot(w, (v - mean) ** 2, axes=1)
    return {"mean": mean, "std": np.sqrt(var), "q05": weighted_quantile(v, w, 0.05),
            "q95": weighted_quantile(v, w, 0.95)}


class AtlasPosterior:
    """Sample ``p(k, w | d)`` on an atlas for a whitened residual (any operator).

    Parameters
    ----------
    atlas
        Atlas (:class:`~eit_manifold.manifold.Atlas` or a duck-typed one) whose charts have
        ``decode``, ``prior`` (``energy``, ``log_normalizer``) and ``sample_latent``.
    residual : callable
        ``r(x)``: ``(B, *data_shape) -> (B, m)``, e.g. from :func:`gaussian_residual`.
    chains : int
        Chains per chart.
    draws : int
        Post-burn-in draws per chain.
    burn_in : int
        Adaptation steps per chain (discarded).
    thin : int or "auto"
        Keep every ``thin``-th draw for images; ``"auto"``: half the integrated autocorrelation
        time (so about 2 ESS draws are kept), at most ``max_kept`` per chart.
    descent_iter : int
        Iterations of the Riemannian descent that moves the candidate starts (0: prior samples).
    starts : int
        Candidate starts per chart (prior samples; plus the warm start if given).
    mode_gap : float
        Candidates whose potential exceeds the best one's by more than this are not used as
        chain starts (see :meth:`_starts`).
    importance_samples : int
        Importance samples per chart for its evidence.
    leapfrog : int
        0: MALA; ``L > 0``: HMC with ``L`` leapfrog steps (step jittered by +-10 %), the same
        preconditioner as mass matrix inverse.
    target_accept : float, optional
        Acceptance rate the step size is adapted to (default 0.574 for MALA, 0.65 for HMC).
    independence : int
        ``m``: interleave ``m`` independence Metropolis-Hastings steps with every MALA/HMC step from
        half of burn-in on (:class:`IndependenceProposal` fitted to the pooled chains
        ``proposal_fits`` times over the second half of burn-in, then fixed); after burn-in see
        ``local_steps``. Its post-burn-in proposals are the importance sample of the chart's
        evidence (``importance_samples`` is then unused). Needs ``burn_in >= 2``.
    proposal_window : float
        Share of burn-in (the last steps before each fit) that the independence proposal is
        fitted to: 0.5 by default (stop 25; stop 24 fitted to the last quarter, whose 62 steps of
        4 chains gave noisier covariances and acceptance lower on 5 of 6 development charts).
    local_steps : int
        MALA/HMC steps per draw after burn-in (burn-in always makes one per step, to adapt); 0:
        only the ``independence`` steps move the chains after burn-in.
    proposal_block : int
        The independence proposals of this many steps are drawn ahead per chain and evaluated as
        one batch (:class:`_ProposalPool`); it changes only the speed and the round-off.
    proposal_fits : int
        Fits of the independence proposal, evenly spaced over the second half of burn-in, the last
        at its end (5 by default, stop 26: a chain that an independence step moved into a region
        ``q`` underweights stays there, so a refit soon after takes the region in; 3 before).
    init : {"descent", "smc"}
        How the chains start and where ``q`` comes from. ``"descent"``: candidate starts moved by
        the Riemannian descent, then ``burn_in`` MALA steps that ``q`` is fitted to (above).
        ``"smc"``: :func:`~eit_manifold.optim.smc.tempered_smc` with ``particles`` particles from
        the chart prior to its posterior; ``q`` is fitted to the particles of its last move rounds,
        the chains start at spread particles and run the independence steps at once (no burn-in,
        no MALA; ``burn_in``, ``starts``, ``descent_iter`` and ``warm`` are unused). Needs
        ``local_steps=0`` and ``independence >= 1``.
    particles : int
        Particles of the SMC (``init="smc"``).
    """

    def __init__(self, atlas, residual: ResidualFn, *, chains: int = 4, draws: int = 500, burn_in: int = 200,
                 thin: int | str = "auto", max_kept: int = 2000, descent_iter: int = 20, starts: int = 8,
                 mode_gap: float = 20.0, importance_samples: int = 256, leapfrog: int = 0,
                 target_accept: float | None = None, independence: int = 4, proposal_window: float = 0.5,
                 local_steps: int = 0, proposal_block: int = 16, proposal_fits: int = 5,
                 init: str = "descent", particles: int = 64) -> None:
        for name, v, lo in (("chains", chains, 1), ("draws", draws, 8), ("burn_in", burn_in, 0),
                            ("importance_samples", importance_samples, 16), ("descent_iter", descent_iter, 0),
                            ("max_kept", max_kept, 1), ("starts", starts, 1)):
            if int(v) != v or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if not (thin == "auto" or (isinstance(thin, int) and thin >= 1)):
            raise ValueError(f"thin must be a positive integer or 'auto', got {thin!r}")
        if int(leapfrog) != leapfrog or leapfrog < 0:
            raise ValueError(f"leapfrog must be an integer >= 0, got {leapfrog!r}")
        self.leapfrog = int(leapfrog)
        if int(independence) != independence or independence < 0:
            raise ValueError(f"independence must be an integer >= 0, got {independence!r}")
        self.independence = int(independence)
        for name, v, lo in (("local_steps", local_steps, 0), ("proposal_block", proposal_block, 1),
                            ("proposal_fits", proposal_fits, 1)):
            if int(v) != v or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if local_steps == 0 and self.independence == 0:
            raise ValueError("local_steps=0 needs independence >= 1 (the draws would never move)")
        self.local_steps, self.proposal_block = int(local_steps), int(proposal_block)
        self.proposal_fits = int(proposal_fits)
        if not 0 < proposal_window <= 1:
            raise ValueError(f"proposal_window must be in (0, 1], got {proposal_window!r}")
        self.proposal_window = float(proposal_window)
        if target_accept is None:
            target_accept = TARGET_ACCEPT if self.leapfrog == 0 else TARGET_ACCEPT_HMC
        if not 0 < target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
        self.atlas, self.residual = atlas, residual
        self.chains, self.draws, self.burn_in = int(chains), int(draws), int(burn_in)
        self.thin, self.max_kept, self.descent_iter = thin, int(max_kept), int(descent_iter)
        self.importance_samples, self.target_accept = int(importance_samples), float(target_accept)
        if not mode_gap > 0:
            raise ValueError(f"mode_gap must be positive, got {mode_gap!r}")
        self.starts, self.mode_gap = int(starts), float(mode_gap)
        if init not in ("descent", "smc"):
            raise ValueError(f"init must be 'descent' or 'smc', got {init!r}")
        if init == "smc" and (self.local_steps or not self.independence):
            raise ValueError("init='smc' needs local_steps=0 and independence >= 1 (no MALA adaptation runs)")
        if int(particles) != particles or particles < 8:
            raise ValueError(f"particles must be an integer >= 8, got {particles!r}")
        self.init, self.particles = init, int(particles)

    # ------------------------------------------------------------------ starts
    def mode_starts(self, k: int, seed: int, warm: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Candidate starts of chart ``k``: ``starts`` prior samples (and ``warm``) moved by a short descent.

        Returns the end points ``(n, d)`` sorted by their potential ``U`` and those potentials. The
        same on every process (one batch, one generator), so chains may be spread over processes.
        """
        chart = self.atlas.charts[k]
        w0 = chart.sample_latent(self.starts, _chain_generator(seed, k, 0)).to(torch.float64)
        if warm is not None:
            with torch.no_grad():
                w0 = torch.cat([chart.encode(warm[None]).to(torch.float64), w0])
        if self.descent_iter > 0:
            from eit_manifold.optim.riemannian import RiemannianDescent

            res = self.residual

            def objective(x: Tensor) -> Tensor:
                return 0.5 * (res(x) ** 2).sum(dim=1)

            # No batch-level stopping rule: it watches the best objective of the whole batch, so the
            # chains' starts would depend on how the chains are split over MPI processes.
            descent = RiemannianDescent(self.atlas, objective, max_iter=self.descent_iter, hysteresis=None,
                                        step_init="auto", max_step=5.0, ftol=1e-6, stop_window=None)
            with torch.no_grad():
                x0 = chart.decode(w0)
            w0 = descent.run(x0=x0, chart0=torch.full((len(w0),), k)).w_all.detach().to(torch.float64)
        u = ChartPotential(chart, self.residual).value(w0)
        u = torch.where(torch.isfinite(u), u, torch.full_like(u, math.inf))
        order = torch.argsort(u)
        return w0[order], u[order]

    def _starts(self, k: int, chain_ids: Sequence[int], seed: int, warm: Tensor | None) -> Tensor:
        """Chain ``i`` starts at the ``i``-th best candidate among those within ``mode_gap`` of the best.

        A local mode whose potential exceeds the best one's by more than ``mode_gap`` holds about
        ``exp(-mode_gap)`` of its mass (for comparable widths); chains started there would never
        reach the main mode on a sharp likelihood and only spoil R-hat and ESS.
        """
        w, u = self.mode_starts(k, seed, warm)
        good = int((u <= u[0] + self.mode_gap).sum()) if torch.isfinite(u[0]) else len(u)
        return torch.stack([w[i % max(good, 1)] for i in chain_ids])

    # ------------------------------------------------------------------ MALA
    def _preconditioner(self, pot: ChartPotential, w: Tensor, prior_precision: float) -> Tensor:
        """Cholesky factor of ``(J^T J + H_prior + P_0)^{-1}`` at each ``w``, ``(C, d, d)``."""
        d = w.shape[1]
        h = pot.gauss_newton(w) + prior_precision * torch.eye(d, dtype=torch.float64)
        h = 0.5 * (h + h.transpose(1, 2))
        return torch.linalg.cholesky(torch.linalg.inv(h))

    def _adapt_preconditioner(self, pot: ChartPotential, window: Tensor, pooled: Tensor, prior_precision: float,
                              first: bool) -> Tensor:
        """New preconditioner factor from the last burn-in window ``(n, C, d)`` of this process' chains.

        First time: Gauss-Newton at the mean of the window's second half (the chains have not
        spread yet). Later: ``0.8 S + 0.2 Sigma_GN`` with ``S`` the within-chain covariance pooled
        over all chains (``pooled``: the window of every process' chains), because on a learned decoder the potential
        can rise much faster than its quadratic model a few standard deviations out (measured on
        EIT: +120 where Gauss-Newton predicted +15 at 3 sd), so ``Sigma_GN`` alone proposes too far
        in the weak directions and the step adaptation then starves the others.
        """
        centre = window[window.shape[0] // 2:].mean(0)
        gn = self._preconditioner(pot, centre, prior_precision)
        if first:
            return gn
        dev = (pooled - pooled.mean(0, keepdim=True)).reshape(-1, pooled.shape[-1])
        s = dev.T @ dev / max(len(dev) - 1, 1)
        cov = 0.8 * s + 0.2 * (gn @ gn.transpose(1, 2))
        return torch.linalg.cholesky(0.5 * (cov + cov.transpose(1, 2)))

    @staticmethod
    def _mala(pot: ChartPotential, w: Tensor, u: Tensor, g: Tensor, chol: Tensor, eps: Tensor,
              xi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One preconditioned MALA proposal per chain and its log acceptance ratio."""
        e = eps[:, None]
        sigma_g = (chol @ (chol.transpose(1, 2) @ g[..., None]))[..., 0]
        prop = w - 0.5 * e**2 * sigma_g + e * (chol @ xi[..., None])[..., 0]
        u_p, g_p, nll_p = pot.value_and_grad(prop)
        sigma_gp = (chol @ (chol.transpose(1, 2) @ g_p[..., None]))[..., 0]
        back = w - (prop - 0.5 * e**2 * sigma_gp)
        z_back = torch.linalg.solve_triangular(chol, back[..., None], upper=False)[..., 0] / e
        return prop, u_p, g_p, nll_p, u - u_p + 0.5 * (xi**2).sum(1) - 0.5 * (z_back**2).sum(1)

    def _hmc(self, pot: ChartPotential, w: Tensor, u: Tensor, g: Tensor, chol: Tensor, eps: Tensor,
             xi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Leapfrog trajectory of ``leapfrog`` steps in the whitened momentum ``v`` (mass ``Sigma^{-1}``)."""
        e = eps[:, None]
        v = xi.clone()
        lt_g = (chol.transpose(1, 2) @ g[..., None])[..., 0]
        x = w.clone()
        u_p, g_p, nll_p = u, g, u
        for _ in range(self.leapfrog):
            v = v - 0.5 * e * lt_g
            x = x + e * (chol @ v[..., None])[..., 0]
            u_p, g_p, nll_p = pot.value_and_grad(x)
            bad = ~torch.isfinite(u_p) | ~torch.isfinite(g_p).all(1)
            g_p = torch.where(bad[:, None], torch.zeros_like(g_p), g_p)
            lt_g = (chol.transpose(1, 2) @ g_p[..., None])[..., 0]
            v = v - 0.5 * e * lt_g
            if bad.all():
                break
        return x, u_p, g_p, nll_p, u - u_p + 0.5 * (xi**2).sum(1) - 0.5 * (v**2).sum(1)

    @staticmethod
    def _independence_step(pot: ChartPotential, q: IndependenceProposal, pools: Sequence[_ProposalPool], refill: int,
                           w: Tensor, u: Tensor, nll: Tensor, gens: Sequence[torch.Generator]):
        """One independence Metropolis-Hastings step per chain, ``w' ~ q`` from the chain's pool.

        Acceptance ``min(1, [p(w') / q(w')] / [p(w) / q(w)])``. Returns the new state
        ``(w, u, nll)``, which chains accepted (their gradient is then not known), the acceptance
        probabilities and ``log p(w') - log q(w')`` of the proposals (``-inf`` where the potential
        is not finite).
        """
        taken = [pool.take(pot, q, refill) for pool in pools]
        prop = torch.stack([t[0] for t in taken])
        u_p, nll_p, log_q_p = (torch.stack([t[j] for t in taken]) for j in (1, 2, 3))
        log_w_p = -u_p - log_q_p
        log_w_p = torch.where(torch.isfinite(log_w_p), log_w_p, torch.full_like(log_w_p, -math.inf))
        log_alpha = log_w_p - (-u - q.log_density(w))
        alpha = torch.exp(log_alpha.clamp(max=0.0))
        log_unif = torch.stack([torch.log(torch.rand((), generator=gen, dtype=torch.float64)) for gen in gens])
        acc = log_unif < log_alpha
        return (torch.where(acc[:, None], prop, w), torch.where(acc, u_p, u), torch.where(acc, nll_p, nll), acc,
                alpha, log_w_p)

    def _smc(self, k: int, pot: ChartPotential, seed: int, comm, block: int = 16) -> SMCResult:
        """Tempered SMC of chart ``k``; particle blocks of ``block`` spread over ``comm``'s processes.

        A block is decoded as one batch whichever process evaluates it, and every process draws the
        same random numbers, so every process gets the serial run's particles.
        """
        chart = self.atlas.charts[k]
        size, rank = (1, 0) if comm is None else (comm.size, comm.rank)

        def evaluate(w: Tensor) -> tuple[Tensor, Tensor]:
            starts = list(range(0, len(w), block))
            local = {b: pot.parts_batch(w[s0:s0 + block]) for b, s0 in enumerate(starts) if b % size == rank}
            if comm is not None:
                merged: dict = {}
                for part in comm.allgather({b: (e.numpy(), v.numpy()) for b, (e, v) in local.items()}):
                    merged.update(part)
                local = {b: (torch.as_tensor(e), torch.as_tensor(v)) for b, (e, v) in merged.items()}
            energy = torch.cat([local[b][0] for b in range(len(starts))])
            nll = torch.cat([local[b][1] for b in range(len(starts))])
            bad = ~torch.isfinite(energy) | ~torch.isfinite(nll)
            inf = torch.full_like(nll, math.inf)
            return torch.where(bad, inf, energy), torch.where(bad, inf, nll)

        def fit(points: Tensor) -> IndependenceProposal:
            return IndependenceProposal.fit(chart, points[:, None])

        return tempered_smc(evaluate, lambda n, gen: chart.sample_latent(n, gen), fit, self.particles,
                            _chain_generator(seed, k, 7))

    def sample_chart(self, k: int, seed: int = 0, chain_ids: Sequence[int] | None = None,
                     warm: Tensor | None = None,
                     progress: Callable[[int, int, dict], None] | None = None, comm=None) -> ChainDraws:
        """Run the chains ``chain_ids`` (default all) of chart ``k``; returns their post-burn-in draws.

        ``progress(done, total, info)`` is called after every step; ``info`` holds the current
        minimum ESS over the latent coordinates (``"ess"``) every 25 draws after burn-in. With
        ``comm`` the chains of all its processes pool their burn-in covariance (every process
        must call this with its share of the chains).
        """
        t0 = time.perf_counter()
        chain_ids = list(range(self.chains)) if chain_ids is None else [int(i) for i in chain_ids]
        chart = self.atlas.charts[k]
        pot = ChartPotential(chart, self.residual)
        c = len(chain_ids)
        d = int(self.atlas.latent_dim)
        if c == 0:
            empty = np.zeros((0, self.draws))
            return ChainDraws(k, [], np.zeros((0, self.draws, d)), empty, empty, empty, np.zeros(0),
                              np.zeros((0, d)), 0, 0.0, np.zeros((0, 0)), np.zeros((0, 0)))
        gens = [_chain_generator(seed, k, i, 1) for i in chain_ids]
        prior_var = chart.sample_latent(4096, _chain_generator(seed, k, 2**20)).to(torch.float64).var(0).mean()
        prior_precision = float(1.0 / prior_var)
        burn_in = 0 if self.init == "smc" else self.burn_in
        smc_info: dict = {}
        proposal: IndependenceProposal | None = None
        if self.init == "smc":
            smc = self._smc(k, pot, seed, comm)
            n = len(smc.particles)
            # spread over the cloud: after resampling, copies of a particle sit side by side
            w = torch.stack([smc.particles[(i * n) // self.chains] for i in chain_ids])
            proposal = IndependenceProposal.fit(chart, smc.visited)
            smc_info = {"particles": n, "temperatures": smc.temperatures, "rounds": smc.rounds,
                        "acceptance": smc.acceptance, "log_evidence": smc.log_evidence,
                        "evaluations": smc.evaluations}
        else:
            w = self._starts(k, chain_ids, seed, warm)
        starts = w.numpy().copy()
        u, g, nll = pot.value_and_grad(w)
        chol = (torch.eye(d, dtype=torch.float64).expand(c, d, d) if self.init == "smc"
                else self._preconditioner(pot, w, prior_precision))
        # Dual averaging (Hoffman & Gelman 2014, Alg. 5) per chain.
        eps = torch.full((c,), 1.0 / d ** (1 / 3), dtype=torch.float64)
        gamma, t0_da, kappa = 0.05, 10.0, 0.75

        def reset(e: Tensor) -> dict:
            return {"mu": torch.log(10 * e), "hbar": torch.zeros(c, dtype=torch.float64),
                    "log_bar": torch.log(e), "t": 0}

        da = reset(eps)
        total = burn_in + self.draws
        out_w = np.empty((c, self.draws, d))
        out_u, out_nll, out_a = (np.empty((c, self.draws)) for _ in range(3))
        # the preconditioner follows the chain during burn-in (at 1/4, 1/2 and 3/4 of it)
        recompute_at = {burn_in * j // 4 for j in (1, 2, 3)} if burn_in >= 20 else set()
        # the independence proposal joins at 1/2 of burn-in and is refitted up to its end
        fit_at: set[int] = set()
        if self.independence and burn_in >= 2:
            n_fit = self.proposal_fits if burn_in >= 20 else 1
            # evenly spaced over the second half of burn-in, the last at its end
            fit_at = {burn_in // 2 + (burn_in - burn_in // 2) * j // max(n_fit - 1, 1)
                      for j in range(n_fit)} if n_fit > 1 else {burn_in}
        m_ind = self.independence if fit_at or proposal is not None else 0
        n_ind = self.draws * m_ind
        out_lw, out_pa = np.empty((c, n_ind)), np.empty((c, n_ind))
        history: list[Tensor] = []
        pools = [_ProposalPool(_chain_generator(seed, k, i, 5)) for i in chain_ids]
        stale = torch.zeros(c, dtype=torch.bool)  # chains whose gradient is not that of their state
        for step in range(total):
            if step >= burn_in and self.local_steps == 0:
                alpha = torch.full((c,), math.nan, dtype=torch.float64)  # no local move to record
            for _ in range(1 if step < burn_in else self.local_steps):
                if bool(stale.any()):  # moved by an independence step: the local move needs grad U here
                    idx = torch.nonzero(stale).flatten()
                    u[idx], g[idx], nll[idx] = pot.value_and_grad(w[idx])
                    # a finite potential with a non-finite gradient would make the local proposal NaN
                    g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
                    stale[:] = False
                xi = torch.stack([torch.randn(d, generator=gen, dtype=torch.float64) for gen in gens])
                if self.leapfrog == 0:
                    prop, u_p, g_p, nll_p, log_alpha = self._mala(pot, w, u, g, chol, eps, xi)
                else:
                    jitter = torch.stack([0.9 + 0.2 * torch.rand((), generator=gen, dtype=torch.float64)
                                          for gen in gens])
                    prop, u_p, g_p, nll_p, log_alpha = self._hmc(pot, w, u, g, chol, eps * jitter, xi)
                log_alpha = torch.where(torch.isfinite(log_alpha), log_alpha, torch.full_like(log_alpha, -math.inf))
                alpha = torch.exp(log_alpha.clamp(max=0.0))
                log_unif = torch.stack([torch.log(torch.rand((), generator=gen, dtype=torch.float64)) for gen in gens])
                acc = log_unif < log_alpha
                w = torch.where(acc[:, None], prop, w)
                u, nll = torch.where(acc, u_p, u), torch.where(acc, nll_p, nll)
                g = torch.where(acc[:, None], g_p, g)
            if proposal is not None:
                # proposals are drawn ahead up to the next refit of q (or the end): a pool never outlives its q
                until = min([f for f in fit_at if f > step], default=total)
                refill = m_ind * min(self.proposal_block, until - step)
                ind = []
                for _ in range(m_ind):
                    w, u, nll, moved, alpha_ind, log_w_ind = self._independence_step(pot, proposal, pools, refill,
                                                                                      w, u, nll, gens)
                    stale |= moved
                    ind.append((alpha_ind, log_w_ind))
            if step < burn_in:
                da["t"] += 1
                t = da["t"]
                eta = 1.0 / (t + t0_da)
                da["hbar"] = (1 - eta) * da["hbar"] + eta * (self.target_accept - alpha)
                log_eps = da["mu"] - math.sqrt(t) / gamma * da["hbar"]
                weight = t ** (-kappa)
                da["log_bar"] = weight * log_eps + (1 - weight) * da["log_bar"]
                eps = torch.exp(log_eps)
                history.append(w.clone())
                if step + 1 in recompute_at:
                    window = torch.stack(history[-max(burn_in // 4, 2):])
                    chol = self._adapt_preconditioner(pot, window, _gather_chains(window, chain_ids, comm),
                                                      prior_precision, step + 1 == min(recompute_at))
                    da = reset(eps)
                if step + 1 in fit_at:
                    fit_window = torch.stack(history[-max(int(burn_in * self.proposal_window), 2):])
                    proposal = IndependenceProposal.fit(chart, _gather_chains(fit_window, chain_ids, comm))
                    for pool in pools:
                        pool.clear()
                if step + 1 == burn_in:
                    eps = torch.exp(da["log_bar"])
            else:
                j = step - burn_in
                out_w[:, j], out_u[:, j], out_nll[:, j], out_a[:, j] = w.numpy(), u.numpy(), nll.numpy(), alpha.numpy()
                if proposal is not None:
                    for i, (a_i, lw_i) in enumerate(ind):
                        out_lw[:, j * m_ind + i], out_pa[:, j * m_ind + i] = lw_i.numpy(), a_i.numpy()
            if progress is not None:
                info = {}
                j = step - burn_in
                if j >= 15 and (j + 1) % 25 == 0:
                    info["ess"] = float(np.min(effective_sample_size(out_w[:, : j + 1])))
                progress(step + 1, total, info)
        return ChainDraws(k, chain_ids, out_w, out_u, out_nll, out_a, eps.numpy().copy(), starts,
                          pot.evaluations, time.perf_counter() - t0, out_lw, out_pa, smc_info)

    # ------------------------------------------------------------------ chart evidence
    def importance_points(self, k: int, draws: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Importance sample of chart ``k`` ``(n, d)`` and its proposal log-density ``(n,)``."""
        chart = self.atlas.charts[k]
        flat = torch.as_tensor(draws.reshape(-1, draws.shape[-1]), dtype=torch.float64)
        cov = torch.atleast_2d(torch.cov(flat.T))
        # one t component on the draws (mean, covariance x 1.5) and 10 % the prior
        q = IndependenceProposal(chart, flat.mean(0)[None], cov[None], torch.ones(1), nu=5, scale=1.5,
                                 prior_weight=0.1)
        n = self.importance_samples
        n_prior = int(round(q.lam * n))
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), k, 3]))
        z = rng.standard_normal((n - n_prior, flat.shape[1]))
        chi = rng.chisquare(q.nu, size=(n - n_prior, 1))
        mean, chol = q.means[0].numpy(), q.chols[0].numpy()
        t_pts = mean + (z @ chol.T) / np.sqrt(chi / q.nu)
        p_pts = chart.sample_latent(n_prior, _chain_generator(seed, k, 4)).to(torch.float64).numpy()
        pts = np.concatenate([t_pts, p_pts])
        return pts, q.log_density(torch.as_tensor(pts)).numpy()

    def importance_log_weights(self, k: int, pts: np.ndarray, log_q: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """``-U(w_i) - log q(w_i)`` for importance points of chart ``k``."""
        pot = ChartPotential(self.atlas.charts[k], self.residual)
        u = np.concatenate([pot.value(torch.as_tensor(pts[s : s + batch_size])).numpy()
                            for s in range(0, len(pts), batch_size)]) if len(pts) else np.zeros(0)
        lw = -u - log_q
        return np.where(np.isfinite(lw), lw, -np.inf)

    def chart_posterior(self, samples: ChainDraws, log_w: np.ndarray) -> ChartPosterior:
        """Diagnostics, thinning and evidence of one chart from all its chains and importance weights."""
        chart = self.atlas.charts[samples.chart]
        draws = samples.draws
        ess = np.atleast_1d(effective_sample_size(draws))
        rhat = np.atleast_1d(split_rhat(draws))
        ess_nll = float(effective_sample_size(samples.nll))
        rhat_nll = float(split_rhat(samples.nll))
        n_total = draws.shape[0] * draws.shape[1]
        if self.thin == "auto":
            tau = n_total / max(float(ess.min()), 1.0)
            thin = max(1, int(tau // 2), math.ceil(n_total / self.max_kept))
        else:
            thin = int(self.thin)
        m = log_w.max()
        if not np.isfinite(m):
            log_z, se, is_ess = -math.inf, math.inf, 0.0
        else:
            wts = np.exp(log_w - m)
            mean_w = wts.mean()
            log_z = float(m + math.log(mean_w) - chart.prior.log_normalizer)
            se = float(wts.std(ddof=1) / math.sqrt(len(wts)) / mean_w)
            is_ess = float(wts.sum() ** 2 / (wts**2).sum())
        return ChartPosterior(samples, ess, rhat, ess_nll, rhat_nll, thin, log_z, se, is_ess, len(log_w))

    def combine(self, charts: list[ChartPosterior], seconds: float) -> PosteriorResult:
        """Chart probabilities ``pi_k ∝ alpha_k Z_k`` and warnings."""
        k = len(charts)
        log_alpha = (self.atlas.log_weights.detach().to(torch.float64).numpy() if hasattr(self.atlas, "log_weights")
                     else np.full(k, -math.log(k)))
        log_post = log_alpha + np.array([c.log_evidence for c in charts])
        if not np.isfinite(log_post).any():
            raise ValueError("every chart has zero estimated posterior mass (non-finite likelihood everywhere?)")
        p = np.exp(log_post - log_post.max())
        p /= p.sum()
        warns = []
        for c in charts:
            label = f"chart {c.chart} (probability {p[c.chart]:.3g})"
            if c.rhat.max() > RHAT_MAX:
                warns.append(f"{label}: split R-hat {c.rhat.max():.3f} > {RHAT_MAX} (chains disagree)")
            if c.ess.min() < ESS_MIN:
                warns.append(f"{label}: ESS {c.ess.min():.0f} < {ESS_MIN:.0f}")
            if c.is_ess < 0.05 * c.is_points:
                warns.append(f"{label}: importance-sampling ESS {c.is_ess:.1f} of {c.is_points} "
                             "(chart mass unreliable)")
        return PosteriorResult(charts, p, log_alpha, seconds, warns)

    # ------------------------------------------------------------------ driver
    def run(self, seed: int = 0, warm: Tensor | None = None, comm=None,
            progress: Callable[[int, int, str, dict], None] | None = None) -> PosteriorResult:
        """Sample every chart, estimate the chart masses, run the diagnostics.

        Parameters
        ----------
        seed : int
            Seed of every chain's generator (chain ``i`` of chart ``k`` draws from its own).
        warm : Tensor, optional
            A data item ``(*data_shape)``: its encoding in every chart is one more candidate start.
        comm : mpi4py communicator, optional
            Spread the chains over its processes (chain ``i`` on rank ``i % size``); the importance
            points are split the same way. Every process returns the same result.
        progress : callable, optional
            ``progress(done, total, label, info)`` after every MCMC step of this process (``info``:
            see :meth:`sample_chart`).
        """
        t0 = time.perf_counter()
        size, rank = (1, 0) if comm is None else (comm.size, comm.rank)
        if self.chains < size:
            raise ValueError(f"{self.chains} chains per chart cannot be spread over {size} processes: "
                             f"pass at least {size} chains")
        mine = [i for i in range(self.chains) if i % size == rank]
        per_chart = (0 if self.init == "smc" else self.burn_in) + self.draws
        total = per_chart * self.atlas.n_charts
        charts = []
        for k in range(self.atlas.n_charts):
            done0 = k * per_chart

            def cb(done: int, _n: int, info: dict, k: int = k, done0: int = done0) -> None:
                if progress is not None:
                    progress(done0 + done, total, f"chart {k}", info)

            local = self.sample_chart(k, seed, mine, warm, cb, comm)
            samples = local if comm is None else ChainDraws.merge(comm.allgather(local))
            if samples.proposal_log_w.shape[1] > 0:
                # the post-burn-in independence proposals: iid from one fixed q for all chains
                log_w = samples.proposal_log_w.reshape(-1)
            else:
                pts, log_q = self.importance_points(k, samples.draws, seed)
                idx = np.arange(len(pts))[rank::size]
                lw_local = self.importance_log_weights(k, pts[idx], log_q[idx])
                if comm is None:
                    log_w = lw_local
                else:
                    log_w = np.empty(len(pts))
                    for r, part in enumerate(comm.allgather(lw_local)):
                        log_w[np.arange(len(pts))[r::size]] = part
            charts.append(self.chart_posterior(samples, log_w))
        return self.combine(charts, time.perf_counter() - t0)
