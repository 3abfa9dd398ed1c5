"""MCMC convergence diagnostics: split R-hat and the effective sample size (Stan's estimators).

Both take draws of one scalar quantity as an array ``(C, N)`` (chains x draws) or of several
quantities as ``(C, N, p)`` (one value per quantity).

* **Split R-hat** (Gelman et al., *Bayesian Data Analysis*, 3rd ed., §11.4): every chain is cut in
  two halves, ``W`` is the mean within-half variance, ``B/n`` the variance of the half means,
  ``R = sqrt(((n - 1)/n W + B/n) / W)``. Near 1 when the chains agree; > 1.05 is a warning.
* **Effective sample size** (Stan reference manual, "Effective sample size"; Geyer 1992): the
  autocorrelations of the (split) chains are combined across chains,
  ``rho_t = 1 - (W - mean_m acov_m(t)) / var_plus``, summed in pairs
  ``P_t = rho_2t + rho_2t+1`` while positive, made monotone (Geyer's initial monotone sequence),
  ``tau = -1 + 2 sum_t P_t`` and ``ESS = C N / tau``. For iid draws ``ESS ~ C N``; for an AR(1)
  chain with coefficient ``phi``, ``ESS ~ C N (1 - phi) / (1 + phi)``.
"""

from __future__ import annotations

import math

import numpy as np


def _as_chains(draws: np.ndarray) -> np.ndarray:
    """``(C, N)`` or ``(C, N, p)`` -> ``(C, N, p)`` float64, checking the shape."""
    a = np.asarray(draws, dtype=float)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"draws must have shape (chains, draws) or (chains, draws, p), got {a.shape}")
    if a.shape[1] < 4:
        raise ValueError(f"need at least 4 draws per chain, got {a.shape[1]}")
    return a


def _split(a: np.ndarray) -> np.ndarray:
    """Cut every chain in two halves (the middle draw of an odd chain is dropped)."""
    half = a.shape[1] // 2
    return np.concatenate([a[:, :half], a[:, a.shape[1] - half:]], axis=0)


def autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance ``(1/N) sum_t (x_t - m)(x_t+k - m)`` of ``(..., N)`` along the last axis (FFT)."""
    x = np.asarray(x, dtype=float)
    n = x.shape[-1]
    centred = x - x.mean(axis=-1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centred, n=size, axis=-1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=-1)[..., :n] / n


def split_rhat(draws: np.ndarray) -> np.ndarray | float:
    """Split R-hat of each quantity: ``(C, N)`` -> float, ``(C, N, p)`` -> ``(p,)``.

    A quantity that is constant across all draws gets R-hat 1 (no disagreement to detect); one
    constant within each chain but different between chains gets ``inf``.
    """
    scalar = np.asarray(draws).ndim == 2
    a = _split(_as_chains(draws))
    n = a.shape[1]
    means = a.mean(axis=1)
    w = a.var(axis=1, ddof=1).mean(axis=0)
    b_over_n = means.var(axis=0, ddof=1)
    var_plus = (n - 1) / n * w + b_over_n
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.sqrt(var_plus / w)
    r = np.where((w == 0) & (b_over_n == 0), 1.0, np.where(w == 0, np.inf, r))
    return float(r[0]) if scalar else r


def effective_sample_size(draws: np.ndarray, split: bool = True) -> np.ndarray | float:
    """Effective sample size of each quantity (Stan's multi-chain estimator with Geyer truncation).

    Parameters
    ----------
    draws : array ``(C, N)`` or ``(C, N, p)``
        Post-warm-up draws of ``C`` chains.
    split : bool
        Estimate on split chains (Stan's default since 2.18): also penalises trends within a chain.

    Returns
    -------
    float or ``(p,)`` array
        ``C N / tau``; ``tau`` is floored at ``1 / log10(C N)`` as in Stan (antithetic chains).
    """
    scalar = np.asarray(draws).ndim == 2
    a = _as_chains(draws)
    total = a.shape[0] * a.shape[1]
    if split:
        a = _split(a)
    c, n, p = a.shape
    out = np.empty(p)
    acov = autocovariance(np.moveaxis(a, 1, -1))  # (C, p, N)
    chain_var = acov[..., 0] * n / (n - 1)  # (C, p)
    means = a.mean(axis=1)  # (C, p)
    w = chain_var.mean(axis=0)
    var_plus = w * (n - 1) / n + (means.var(axis=0, ddof=1) if c > 1 else 0.0)
    for j in range(p):
        if not var_plus[j] > 0:
            out[j] = float(total)  # a constant: nothing to estimate, every draw equals the mean
            continue
        rho = 1.0 - (w[j] - acov[:, j, :].mean(axis=0)) / var_plus[j]
        rho[0] = 1.0
        # Geyer's initial positive sequence on pairs, then made monotone.
        pairs = []
        t = 0
        while t + 1 < n:
            pair = rho[t] + rho[t + 1]
            if pair <= 0:
                break
            pairs.append(pair)
            t += 2
        pairs_arr = np.minimum.accumulate(np.array(pairs)) if pairs else np.array([1.0])
        tau = -1.0 + 2.0 * float(pairs_arr.sum())
        tau = max(tau, 1.0 / math.log10(max(total, 10)))
        out[j] = total / tau
    return float(out[0]) if scalar else out
