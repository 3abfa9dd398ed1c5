"""ESS and split R-hat on chains with known answers: iid normal and AR(1)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter

from eit_manifold.optim.diagnostics import autocovariance, effective_sample_size, split_rhat


def ar1(phi: float, chains: int, n: int, seed: int) -> np.ndarray:
    """Stationary AR(1) chains x_t = phi x_{t-1} + e_t (unit innovations), started from the stationary law."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((chains, n))
    e[:, 0] /= np.sqrt(1 - phi**2)  # x_0 from N(0, 1 / (1 - phi^2))
    return lfilter([1.0], [1.0, -phi], e, axis=1)


def test_autocovariance_matches_direct_sum():
    x = np.random.default_rng(0).standard_normal(50)
    c = x - x.mean()
    direct = [np.sum(c[: 50 - k] * c[k:]) / 50 for k in range(50)]
    assert np.allclose(autocovariance(x), direct, atol=1e-12)


def test_ess_of_iid_draws_is_the_number_of_draws():
    values = [effective_sample_size(np.random.default_rng(s).standard_normal((4, 1000))) for s in range(10)]
    assert abs(np.mean(values) / 4000 - 1) < 0.05
    assert all(0.8 < v / 4000 < 1.25 for v in values)


@pytest.mark.parametrize("phi", [0.5, 0.9, -0.3])
def test_ess_of_ar1_chains_matches_the_integrated_autocorrelation_time(phi):
    # tau = (1 + phi) / (1 - phi) for AR(1), so ESS = C N (1 - phi) / (1 + phi)
    n, c = 5000, 4
    expected = c * n * (1 - phi) / (1 + phi)
    values = np.array([effective_sample_size(ar1(phi, c, n, s)) for s in range(10)])
    if phi < 0:
        # antithetic chains: Geyer's truncation stops at the first negative pair, Stan caps ESS at N log10(N)
        assert np.all(values >= 0.9 * c * n) and np.all(values <= c * n * np.log10(c * n))
        return
    assert abs(values.mean() / expected - 1) < 0.05
    assert np.all(np.abs(values / expected - 1) < 0.25)


def test_ess_per_quantity_and_constant_quantity():
    rng = np.random.default_rng(1)
    draws = np.stack([rng.standard_normal((4, 2000)), ar1(0.9, 4, 2000, 2), np.ones((4, 2000))], axis=-1)
    ess = effective_sample_size(draws)
    assert ess.shape == (3,)
    assert ess[0] > 5 * ess[1]
    assert ess[2] == 8000


def test_split_rhat_near_one_for_agreeing_chains():
    assert split_rhat(np.random.default_rng(3).standard_normal((4, 1000))) < 1.01
    assert split_rhat(ar1(0.9, 4, 20000, 4)) < 1.02


def test_split_rhat_detects_chains_at_different_places_and_trends():
    rng = np.random.default_rng(5)
    shifted = rng.standard_normal((4, 1000)) + np.array([0, 0, 0, 1.0])[:, None]
    # between-chain variance of the half means: 3/16 (one of 8 halves shifted by 1); W = 1
    b = np.var([0, 0, 0, 0, 0, 0, 1, 1], ddof=1)
    expected = np.sqrt((499 / 500 + b) / 1.0)
    assert abs(split_rhat(shifted) - expected) < 0.03
    assert split_rhat(shifted) > 1.05
    trend = rng.standard_normal((4, 1000)) + np.linspace(0, 2, 1000)[None]
    assert split_rhat(trend) > 1.1  # splitting catches a drift that all chains share


def test_diagnostics_reject_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        split_rhat(np.zeros(10))
    with pytest.raises(ValueError, match="at least 4"):
        effective_sample_size(np.zeros((2, 3)))
