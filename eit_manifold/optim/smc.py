"""Tempered sequential Monte Carlo on one chart's latent space (prior to posterior).

The chart posterior ``p(w | d) ∝ p_k(w) exp(-L(w))`` (``L = 0.5 ||r(G_k(w))||^2``) is reached
through the tempered targets ``pi_b(w) ∝ p_k(w) exp(-b L(w))``, ``0 = b_0 < b_1 < ... < b_T = 1``
(Del Moral, Doucet & Jasra 2006; Chopin & Papaspiliopoulos 2020, ch. 17):

1. ``n`` particles are drawn from the chart prior (``b = 0``).
2. The next temperature is the largest ``b' <= 1`` whose incremental weights ``exp(-(b' - b) L)``
   keep a conditional effective sample size of ``cess * n`` (bisection); the log of the mean
   incremental weight adds to ``log Z`` (the chart evidence ``∫ p_k exp(-L) dw``, unbiased in ``Z``).
3. The particles are resampled (systematic) and moved by Metropolis-Hastings steps that leave
   ``pi_b'`` invariant: an independence step from a defensive t mixture fitted to the particles
   (the same family as the chains' proposal) and a random-walk step with the particles'
   covariance. Rounds repeat until a particle has moved with probability ``>= 0.9`` (from the
   first round's acceptance, Chopin's rule), between ``min_rounds`` and ``max_rounds``.

Why: the chains of :class:`~eit_manifold.optim.posterior.AtlasPosterior` fit their independence
proposal to their own burn-in, and where four chains from the best descent end points had not
spread over the posterior the proposal missed part of its mass (docs/posterior.md: R-hat up to
3.6 on half the EIT calibration cases). The particle cloud is spread by construction, from the
prior, and needs no descent starts.

Every process draws the same random numbers (one generator) and evaluates a fixed share of the
particles in fixed blocks, so the result is the same for any number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class SMCResult:
    """Outcome of :func:`tempered_smc`.

    Attributes
    ----------
    particles : Tensor
        ``(n, d)`` equally weighted particles at temperature 1.
    visited : Tensor
        ``(R, n, d)`` the particles after each move round at temperature 1 (``particles`` is the
        last); points to fit a proposal to.
    nll : Tensor
        ``(n,)`` ``L`` of ``particles``.
    log_evidence : float
        ``log ∫ p_k(w) exp(-L(w)) dw`` (normalised prior).
    temperatures : list of float
        ``b_0 = 0, ..., b_T = 1``.
    rounds : list of int
        Move rounds per temperature.
    acceptance : list of tuple of float
        Mean (independence, random-walk) acceptance per temperature.
    evaluations : int
        Potential evaluations (all processes together).
    """

    particles: Tensor
    visited: Tensor
    nll: Tensor
    log_evidence: float
    temperatures: list[float]
    rounds: list[int]
    acceptance: list[tuple[float, float]]
    evaluations: int


def next_temperature(nll: Tensor, beta: float, cess: float) -> float:
    """Largest ``b' in (beta, 1]`` with ESS of ``exp(-(b' - beta) nll)`` ``>= cess * n`` (equal weights)."""
    def ess(b: float) -> float:
        lw = -(b - beta) * nll
        lw = lw - lw.max()
        wt = torch.exp(lw)
        return float(wt.sum() ** 2 / (wt**2).sum())

    n = len(nll)
    if ess(1.0) >= cess * n:
        return 1.0
    lo, hi = beta, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ess(mid) >= cess * n else (lo, mid)
    return max(lo, beta + 1e-12)


def systematic_resample(log_w: Tensor, generator: torch.Generator) -> Tensor:
    """Indices ``(n,)`` of a systematic resample of normalised-or-not log weights."""
    n = len(log_w)
    wt = torch.exp(log_w - log_w.max())
    cdf = torch.cumsum(wt / wt.sum(), 0)
    u = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)) / n
    return torch.searchsorted(cdf, u).clamp(max=n - 1)


def tempered_smc(evaluate: Callable[[Tensor], tuple[Tensor, Tensor]],
                 sample_prior: Callable[[int, torch.Generator], Tensor], fit_proposal: Callable[[Tensor], object],
                 n: int, generator: torch.Generator, *,
                 cess: float = 0.5, min_rounds: int = 2, max_rounds: int = 8, final_rounds: int = 4,
                 progress: Callable[[float], None] | None = None) -> SMCResult:
    """Run tempered SMC from the chart prior to the chart posterior.

    Parameters
    ----------
    evaluate : callable
        ``w (m, d) -> (energy, L)``, both ``(m,)`` float64 (non-finite: outside the support).
    sample_prior : callable
        ``(m, generator) -> (m, d)`` draws of the chart prior.
    fit_proposal : callable
        ``points (m, d) -> q`` with ``q.sample_batch(m, generator)`` and ``q.log_density(w)``.
    n : int
        Number of particles.
    generator : torch.Generator
        The only source of randomness.
    cess : float
        Conditional ESS share kept per temperature step.
    min_rounds, max_rounds : int
        Bounds on the move rounds per temperature.
    final_rounds : int
        At least this many rounds at temperature 1 (their states are ``visited``).
    progress : callable, optional
        Called with the new temperature after each step.
    """
    if n < 8:
        raise ValueError(f"n (particles) must be >= 8, got {n}")
    if not 0 < cess < 1:
        raise ValueError(f"cess must be in (0, 1), got {cess!r}")
    w = sample_prior(n, generator).to(torch.float64)
    d = w.shape[1]
    energy, nll = evaluate(w)
    evaluations = n
    beta, log_z = 0.0, 0.0
    temps, rounds, accs = [0.0], [], []
    rw_scale = 2.38 / math.sqrt(d)
    visited: list[Tensor] = []
    while beta < 1.0:
        new = next_temperature(torch.where(torch.isfinite(nll), nll, torch.full_like(nll, math.inf)), beta, cess)
        inc = -(new - beta) * nll
        inc = torch.where(torch.isfinite(inc), inc, torch.full_like(inc, -math.inf))
        log_z += float(torch.logsumexp(inc, 0) - math.log(n))
        idx = systematic_resample(inc, generator)
        w, energy, nll = w[idx], energy[idx], nll[idx]
        beta = new
        temps.append(beta)
        q = fit_proposal(w)
        log_q = q.log_density(w)
        r, moved_p, acc_i, acc_r = 0, None, [], []
        while True:
            # independence step
            prop = q.sample_batch(n, generator)
            e_p, l_p = evaluate(prop)
            lq_p = q.log_density(prop)
            evaluations += n
            log_a = (-e_p - beta * l_p - lq_p) - (-energy - beta * nll - log_q)
            log_a = torch.where(torch.isfinite(log_a), log_a, torch.full_like(log_a, -math.inf))
            acc = torch.log(torch.rand(n, generator=generator, dtype=torch.float64)) < log_a
            w = torch.where(acc[:, None], prop, w)
            energy, nll, log_q = (torch.where(acc, a, b) for a, b in ((e_p, energy), (l_p, nll), (lq_p, log_q)))
            a_ind = torch.exp(log_a.clamp(max=0)).mean()
            # random-walk step with the particles' covariance
            cov = torch.cov(w.T) + 1e-12 * torch.eye(d, dtype=torch.float64)
            chol = torch.linalg.cholesky(0.5 * (cov + cov.T))
            prop = w + rw_scale * torch.randn(n, d, generator=generator, dtype=torch.float64) @ chol.T
            e_p, l_p = evaluate(prop)
            evaluations += n
            log_a = (-e_p - beta * l_p) - (-energy - beta * nll)
            log_a = torch.where(torch.isfinite(log_a), log_a, torch.full_like(log_a, -math.inf))
            acc = torch.log(torch.rand(n, generator=generator, dtype=torch.float64)) < log_a
            w = torch.where(acc[:, None], prop, w)
            energy, nll = torch.where(acc, e_p, energy), torch.where(acc, l_p, nll)
            log_q = torch.where(acc, q.log_density(w), log_q)
            a_rw = torch.exp(log_a.clamp(max=0)).mean()
            # the random-walk scale follows its acceptance towards 0.3 (between temperatures only
            # would be cleaner; within a temperature every step still leaves pi_b invariant)
            rw_scale *= math.exp(float(a_rw) - 0.3)
            acc_i.append(float(a_ind))
            acc_r.append(float(a_rw))
            r += 1
            if beta == 1.0:
                visited.append(w.clone())
            if moved_p is None:
                # probability that a particle moves in one round (either step)
                moved_p = 1 - (1 - float(a_ind)) * (1 - float(a_rw))
            need = math.ceil(math.log(0.1) / math.log(max(1 - moved_p, 1e-12))) if moved_p < 1 else 1
            need = min(max(need, min_rounds), max_rounds)
            if beta == 1.0:
                need = max(need, final_rounds)
            if r >= need:
                break
        rounds.append(r)
        accs.append((float(np.mean(acc_i)), float(np.mean(acc_r))))
        if progress is not None:
            progress(beta)
    return SMCResult(w, torch.stack(visited), nll, log_z, temps, rounds, accs, evaluations)
