"""Posterior sampling on atlases against exact posteriors.

* a linear-Gaussian atlas (two affine charts with Gaussian latent priors, a linear operator):
  each chart's latent posterior and its evidence are Gaussian in closed form;
* the bundled bars atlas (latent dimension 1) with the deblurring operator: the latent posterior
  of a chart by quadrature on a fine grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from eit_manifold.optim.diagnostics import effective_sample_size
from eit_manifold.optim.posterior import (
    AtlasPosterior,
    ChartPotential,
    IndependenceProposal,
    gaussian_residual,
    weighted_quantile,
    weighted_summary,
)


class GaussianPrior:
    def __init__(self, d: int) -> None:
        self.dim = d
        self.log_normalizer = 0.5 * d * math.log(2 * math.pi)

    def energy(self, w: torch.Tensor) -> torch.Tensor:
        return 0.5 * (w**2).sum(dim=-1)


class AffineChart:
    """G(w) = a + B w with a standard normal prior on w."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a, self.b = a, b
        self.prior = GaussianPrior(b.shape[1])

    def decode(self, w: torch.Tensor) -> torch.Tensor:
        return self.a + w.to(torch.float64) @ self.b.T

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.lstsq(self.b, (x - self.a).T).solution.T

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.b.shape[1], generator=generator, dtype=torch.float64)


class AffineAtlas:
    def __init__(self, charts: list[AffineChart], alpha: list[float]) -> None:
        self.charts = charts
        self.n_charts = len(charts)
        self.latent_dim = charts[0].b.shape[1]
        self.data_shape = (charts[0].b.shape[0],)
        self.log_weights = torch.log(torch.tensor(alpha, dtype=torch.float64))


@pytest.fixture(scope="module")
def linear_problem():
    g = torch.Generator().manual_seed(0)
    n, d, m, s = 5, 2, 4, 0.3
    charts = [AffineChart(torch.randn(n, generator=g, dtype=torch.float64) * 0.5,
                          torch.randn(n, d, generator=g, dtype=torch.float64)) for _ in range(2)]
    atlas = AffineAtlas(charts, [0.4, 0.6])
    A = torch.randn(m, n, generator=g, dtype=torch.float64)
    x_true = charts[1].decode(torch.tensor([[0.3, -0.5]], dtype=torch.float64))[0]
    y = A @ x_true + s * torch.randn(m, generator=g, dtype=torch.float64)
    residual = gaussian_residual(lambda x: x @ A.T, y, s)
    exact = []
    for c in charts:
        M = A @ c.b
        prec = torch.eye(d, dtype=torch.float64) + M.T @ M / s**2
        cov = torch.linalg.inv(prec)
        mean = cov @ M.T @ (y - A @ c.a) / s**2
        data_cov = s**2 * torch.eye(m, dtype=torch.float64) + M @ M.T
        log_ev = stats.multivariate_normal(mean=(A @ c.a).numpy(), cov=data_cov.numpy()).logpdf(y.numpy())
        exact.append({"mean": mean.numpy(), "cov": cov.numpy(), "log_evidence": log_ev})
    log_post = np.log([0.4, 0.6]) + np.array([e["log_evidence"] for e in exact])
    probs = np.exp(log_post - log_post.max())
    return atlas, residual, exact, probs / probs.sum()


@pytest.fixture(scope="module")
def linear_case(linear_problem):
    atlas, residual, exact, probs = linear_problem
    sampler = AtlasPosterior(atlas, residual, chains=4, draws=1500, burn_in=300, importance_samples=2000,
                             independence=1, local_steps=1)  # the MALA kernel with one independence step
    return atlas, exact, probs, sampler.run(seed=3)


def _assert_exact_gaussian(draws: np.ndarray, ex: dict) -> None:
    """Latent draws ``(C, N, 2)`` against the exact Gaussian posterior ``ex``: mean, variances and
    correlation within 4 Monte Carlo standard errors (ESS-based), KS test of the thinned marginals."""
    ess = effective_sample_size(draws)
    flat = draws.reshape(-1, draws.shape[-1])
    sd = np.sqrt(np.diag(ex["cov"]))
    assert np.all(np.abs(flat.mean(0) - ex["mean"]) <= 4 * sd / np.sqrt(ess))
    assert np.all(np.abs(flat.var(0) / np.diag(ex["cov"]) - 1) <= 4 * np.sqrt(2 / ess))
    corr = np.corrcoef(flat.T)[0, 1]
    exact_corr = ex["cov"][0, 1] / (sd[0] * sd[1])
    assert abs(corr - exact_corr) <= 4 * (1 - exact_corr**2) / np.sqrt(ess.min())
    thin = int(np.ceil(2 * draws.shape[0] * draws.shape[1] / ess.min()))
    for j in range(2):
        assert stats.kstest(draws[:, ::thin, j].ravel(), stats.norm(ex["mean"][j], sd[j]).cdf).pvalue > 1e-3


def test_linear_gaussian_latent_posterior_is_exact(linear_case):
    _, exact, _, result = linear_case
    for c, ex in zip(result.charts, exact, strict=True):
        _assert_exact_gaussian(c.samples.draws, ex)
        assert 0.4 < c.samples.accept.mean() < 0.8  # adapted towards 0.574
        assert c.ess.min() > 1000 and c.rhat.max() < 1.02


def test_linear_gaussian_chart_masses_are_exact(linear_case):
    _, exact, probs, result = linear_case
    for c in result.charts:
        # log Z_k here and the Gaussian evidence differ by the likelihood's normaliser, shared by the charts
        assert c.log_evidence_se < 0.05
    diff = [c.log_evidence - ex["log_evidence"] for c, ex in zip(result.charts, exact, strict=True)]
    assert abs(diff[0] - diff[1]) < 0.05
    assert np.allclose(result.probabilities, probs, atol=0.02)
    assert result.warnings == []


def test_mixture_quantiles_match_the_exact_mixture(linear_case):
    atlas, exact, probs, result = linear_case
    images, charts, weights = result.decode(atlas)
    summary = weighted_summary(images, weights)
    # exact marginal of coordinate 0 of x: a mixture of two normals
    comps = []
    for c, ex in zip(atlas.charts, exact, strict=True):
        mean = (c.a + c.b @ torch.as_tensor(ex["mean"])).numpy()
        cov = (c.b @ torch.as_tensor(ex["cov"]) @ c.b.T).numpy()
        comps.append((mean, np.sqrt(np.diag(cov))))
    for i in range(atlas.data_shape[0]):
        def cdf(t, i=i):
            return sum(p * stats.norm(m[i], s[i]).cdf(t) for p, (m, s) in zip(probs, comps, strict=True))
        assert abs(cdf(summary["q05"][i]) - 0.05) < 0.02
        assert abs(cdf(summary["q95"][i]) - 0.95) < 0.02
        exact_mean = sum(p * m[i] for p, (m, _) in zip(probs, comps, strict=True))
        spread = max(s[i] for _, s in comps)
        assert abs(summary["mean"][i] - exact_mean) < 0.1 * spread + 0.02


def test_weighted_quantile_of_equal_weights_is_the_hazen_quantile():
    v = np.random.default_rng(0).standard_normal((101, 3))
    w = np.ones(101)
    assert np.allclose(weighted_quantile(v, w, 0.3), np.quantile(v, 0.3, axis=0, method="hazen"))
    # a weight concentrated on one draw moves the median there
    w2 = np.full(101, 1e-9)
    w2[7] = 1.0
    assert np.allclose(weighted_quantile(v[:, 0], w2, 0.5), v[7, 0], atol=1e-6)


def test_sampler_is_deterministic_and_checks_arguments(linear_case):
    atlas, *_ = linear_case
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 5, generator=g, dtype=torch.float64)
    res = gaussian_residual(lambda x: x @ A.T, torch.zeros(3, dtype=torch.float64), 0.5)
    runs = [AtlasPosterior(atlas, res, chains=2, draws=20, burn_in=10, importance_samples=32).run(seed=5)
            for _ in range(2)]
    for a, b in zip(runs[0].charts, runs[1].charts, strict=True):
        assert np.array_equal(a.samples.draws, b.samples.draws)
    assert np.array_equal(runs[0].probabilities, runs[1].probabilities)
    other = AtlasPosterior(atlas, res, chains=2, draws=20, burn_in=10, importance_samples=32).run(seed=6)
    assert not np.array_equal(other.charts[0].samples.draws, runs[0].charts[0].samples.draws)
    with pytest.raises(ValueError, match="chains"):
        AtlasPosterior(atlas, res, chains=0)
    with pytest.raises(ValueError, match="thin"):
        AtlasPosterior(atlas, res, thin=0)
    with pytest.raises(ValueError, match="noise_std"):
        gaussian_residual(lambda x: x, torch.zeros(3), 0.0)


def test_short_chains_raise_warnings(linear_case):
    atlas, *_ = linear_case
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 5, generator=g, dtype=torch.float64)
    res = gaussian_residual(lambda x: x @ A.T, torch.zeros(3, dtype=torch.float64), 0.5)
    out = AtlasPosterior(atlas, res, chains=2, draws=20, burn_in=10, importance_samples=32).run(seed=5)
    assert any("ESS" in w and "< 100" in w for w in out.warnings)
    assert all(d["ess_min"] < 100 for d in out.diagnostics()["charts"])


def test_independence_proposal_is_a_normalised_density_of_its_draws():
    chart = AffineChart(torch.zeros(3, dtype=torch.float64), torch.eye(3, 2, dtype=torch.float64))
    g = torch.Generator().manual_seed(2)

    # a curved target (a banana) and a window of 3 chains from it
    def log_p(w: torch.Tensor) -> torch.Tensor:
        return -0.5 * (w[:, 0] / 0.5) ** 2 - 0.5 * ((w[:, 1] - 0.8 * w[:, 0] ** 2 + 0.3) / 0.05) ** 2

    t = 0.5 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    window = torch.stack([t, 0.8 * t**2 - 0.3 + 0.05 * torch.randn(200, 3, generator=g, dtype=torch.float64)], -1)
    q = IndependenceProposal.fit(chart, window)
    assert q.means.shape == (7, 2)  # the pooled component and 6 tiles
    xs = torch.linspace(-9, 9, 901, dtype=torch.float64)
    grid = torch.cartesian_prod(xs, xs)
    dens = torch.exp(q.log_density(grid)).reshape(901, 901)
    h = float(xs[1] - xs[0])
    assert abs(float(dens.sum()) * h * h - 1) < 2e-3
    # its draws follow it: KS of both marginals against the grid's marginal CDFs
    draws = torch.stack([q.sample(g) for _ in range(3000)]).numpy()
    for axis in (0, 1):
        cdf = np.cumsum(dens.sum(dim=1 - axis).numpy()) * h * h
        assert stats.kstest(draws[:, axis], lambda v, c=cdf: np.interp(v, xs.numpy(), c)).pvalue > 1e-3
    # on the banana the tiled mixture beats one ellipsoid: the importance ESS of p / q is larger
    one = IndependenceProposal.fit(chart, window, bins=1)
    assert one.means.shape == (1, 2)

    def is_fraction(prop: IndependenceProposal) -> float:
        x = torch.stack([prop.sample(g) for _ in range(2000)])
        lw = log_p(x) - prop.log_density(x)
        w = torch.exp(lw - lw.max())
        return float(w.sum() ** 2 / (w**2).sum()) / len(x)

    tiled, single = is_fraction(q), is_fraction(one)
    assert tiled > 1.5 * single, (tiled, single)


def test_evidence_from_independence_proposals_agrees_with_separate_importance_sampling(linear_problem):
    atlas, residual, exact, probs = linear_problem
    runs = {m: AtlasPosterior(atlas, residual, chains=2, draws=400, burn_in=100, independence=m, local_steps=1,
                              importance_samples=800).run(seed=4) for m in (0, 2)}
    for c0, c2 in zip(runs[0].charts, runs[2].charts, strict=True):
        assert c0.is_points == 800 and c2.is_points == 2 * 400 * 2  # chains x draws x steps per draw
        assert c2.samples.proposal_accept.mean() > 0.3  # a Gaussian posterior: the t mixture fits it well
        assert abs(c0.log_evidence - c2.log_evidence) <= 4 * math.hypot(c0.log_evidence_se, c2.log_evidence_se)
    assert np.allclose(runs[2].probabilities, probs, atol=0.03)
    with pytest.raises(ValueError, match="independence"):
        AtlasPosterior(atlas, residual, independence=-1)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="proposal_window"):
            AtlasPosterior(atlas, residual, proposal_window=bad)


def test_independence_only_sampling_after_burn_in_is_exact(linear_problem):
    # local_steps=0: after burn-in only the independence steps (proposals pre-drawn per chain and
    # evaluated in batches) move the chains; the draws must still follow the exact posterior.
    atlas, residual, exact, probs = linear_problem
    result = AtlasPosterior(atlas, residual, chains=2, draws=600, burn_in=100, independence=4, local_steps=0,
                            proposal_block=16).run(seed=7)
    for c, ex in zip(result.charts, exact, strict=True):
        _assert_exact_gaussian(c.samples.draws, ex)
        assert c.ess.min() > 400  # the t mixture fits a Gaussian posterior: near-independent draws
        assert np.isnan(c.samples.accept).all() and c.is_points == 2 * 600 * 4
    assert np.allclose(result.probabilities, probs, atol=0.03)
    diag = result.diagnostics()["charts"][0]
    assert diag["acceptance_rate"] is None and diag["independence_acceptance"] > 0.3
    with pytest.raises(ValueError, match="local_steps=0 needs independence"):
        AtlasPosterior(atlas, residual, independence=0, local_steps=0)
    for name in ("local_steps", "proposal_block"):
        with pytest.raises(ValueError, match=name):
            AtlasPosterior(atlas, residual, **{name: -1})


def test_proposal_pool_evaluates_blocks_of_proposals_in_one_batch(linear_problem):
    from eit_manifold.optim.posterior import _ProposalPool

    atlas, residual, *_ = linear_problem
    chart = atlas.charts[0]
    pot = ChartPotential(chart, residual)
    w = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u_batch, nll_batch = pot.value_batch(w)
    assert torch.allclose(u_batch, pot.value(w), rtol=1e-12) and torch.all(nll_batch <= u_batch + 1e-12)
    q = IndependenceProposal(chart, torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)[None],
                             torch.ones(1))
    pool, ref = _ProposalPool(torch.Generator().manual_seed(4)), torch.Generator().manual_seed(4)
    pot.evaluations = 0
    taken = [pool.take(pot, q, refill=5) for _ in range(6)]
    assert pot.evaluations == 10  # two batches of five, drawn when the pool ran dry
    expected = torch.stack([q.sample(ref) for _ in range(10)])[:6]
    assert torch.equal(torch.stack([t[0] for t in taken]), expected)  # the generator's stream, in order
    assert torch.allclose(torch.stack([t[1] for t in taken]), pot.value(expected), rtol=1e-12)
    assert torch.allclose(torch.stack([t[3] for t in taken]), q.log_density(expected), rtol=1e-12)


# ---------------------------------------------------------------------------- bars, quadrature


@pytest.fixture(scope="module")
def bars_case():
    from eit_manifold.data.images import BAR_BACKGROUND
    from eit_manifold.manifold import load_atlas
    from eit_manifold.operators.blur import GaussianBlur, SeparableBlur

    atlas = load_atlas("bars")
    op = GaussianBlur.paper(64, background=BAR_BACKGROUND, noise_std=0.1)
    gen = torch.Generator().manual_seed(1)
    x, k = atlas.sample(1, generator=gen, return_charts=True)
    y = op.measure(x.to(torch.float64), gen)[0]
    fast = SeparableBlur(op, (64, 64))
    assert torch.allclose(fast(x.to(torch.float64)), op(x.to(torch.float64)), atol=1e-12)  # the same operator
    residual = gaussian_residual(fast, y, 0.1)
    return atlas, residual, int(k[0])


def _assert_matches_bars_quadrature(atlas, residual, k: int, draws: np.ndarray, ess_min: float) -> float:
    """Latent draws ``(C, N)`` of chart ``k`` against the quadrature of ``exp(-U)``; returns the exact ``log Z``.

    Mean and variance within 4 Monte Carlo standard errors (ESS-based), KS p > 1e-3 on thinned draws.
    """
    # quadrature of exp(-U) on a fine grid covering the prior's support and tails
    grid = torch.linspace(-1.4, 1.4, 2801, dtype=torch.float64)
    pot = ChartPotential(atlas.charts[k], residual)
    u = torch.cat([pot.value(grid[i : i + 200, None]) for i in range(0, len(grid), 200)]).numpy()
    h = float(grid[1] - grid[0])
    dens = np.exp(-(u - u.min()))
    z = dens.sum() * h
    dens /= z
    g = grid.numpy()
    mean = float((dens * g).sum() * h)
    var = float((dens * (g - mean) ** 2).sum() * h)
    assert var > 1e-5  # a posterior wide enough for the test to mean something (grid step 1e-3)
    ess = float(effective_sample_size(draws))
    assert ess > ess_min
    assert abs(draws.mean() - mean) <= 4 * math.sqrt(var / ess)
    assert abs(draws.var() / var - 1) <= 4 * math.sqrt(2 / ess)
    cdf = np.cumsum(dens) * h
    thin = int(np.ceil(2 * draws.size / ess))
    assert stats.kstest(draws[:, ::thin].ravel(), lambda t: np.interp(t, g, cdf)).pvalue > 1e-3
    # the chart's evidence: log of the grid integral of exp(-U) minus the prior's normaliser
    return -u.min() + math.log(z) - atlas.charts[k].prior.log_normalizer


def test_bars_chart_posterior_matches_quadrature(bars_case):
    atlas, residual, k = bars_case
    sampler = AtlasPosterior(atlas, residual, chains=4, draws=400, burn_in=120, importance_samples=256)
    samples = sampler.sample_chart(k, seed=0)
    pts, log_q = sampler.importance_points(k, samples.draws, seed=0)
    post = sampler.chart_posterior(samples, sampler.importance_log_weights(k, pts, log_q))
    log_z = _assert_matches_bars_quadrature(atlas, residual, k, samples.draws[..., 0], 400)
    assert abs(post.log_evidence - log_z) <= 4 * post.log_evidence_se + 0.01


def test_interval_coverage_counts_finite_entries_inside():
    from eit_manifold.metrics import interval_coverage

    truth = np.array([0.0, 1.0, 2.0, np.nan])
    assert interval_coverage(truth, np.array([-1.0, 1.5, 1.0, 0.0]), np.array([1.0, 2.0, 2.0, 1.0])) == 2 / 3
    with pytest.raises(ValueError, match="shapes"):
        interval_coverage(truth, np.zeros(3), np.zeros(4))


# ---------------------------------------------------------------------------- tempered SMC


def test_next_temperature_keeps_the_asked_conditional_ess():
    from eit_manifold.optim.smc import next_temperature

    nll = torch.linspace(0.0, 400.0, 200, dtype=torch.float64)
    beta = next_temperature(nll, 0.0, 0.5)
    wt = torch.exp(-beta * (nll - nll.min()))
    assert 0 < beta < 1
    assert abs(float(wt.sum() ** 2 / (wt**2).sum()) - 100) < 0.5
    assert next_temperature(torch.zeros(10, dtype=torch.float64), 0.3, 0.5) == 1.0  # flat: straight to 1


def test_systematic_resample_keeps_counts_within_one_of_n_times_weight():
    from eit_manifold.optim.smc import systematic_resample

    w = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    for s in range(20):
        idx = systematic_resample(torch.log(w), torch.Generator().manual_seed(s))
        counts = torch.bincount(idx, minlength=4).to(torch.float64)
        assert torch.all((counts - 4 * w).abs() < 1)


@pytest.fixture(scope="module")
def linear_smc_case(linear_problem):
    atlas, residual, exact, probs = linear_problem
    sampler = AtlasPosterior(atlas, residual, chains=4, draws=600, init="smc", particles=128, independence=2)
    return sampler.run(seed=5)


def test_smc_init_latent_posterior_is_exact(linear_problem, linear_smc_case):
    _, _, exact, _ = linear_problem
    for c, ex in zip(linear_smc_case.charts, exact, strict=True):
        _assert_exact_gaussian(c.samples.draws, ex)
        assert c.ess.min() > 500 and c.rhat.max() < 1.02


def test_smc_evidence_matches_the_closed_form(linear_problem, linear_smc_case):
    _, residual, exact, probs = linear_problem
    m, s = 4, 0.3
    # log Z_k drops the likelihood's normaliser -m/2 log(2 pi s^2), shared by both charts
    shift = 0.5 * m * math.log(2 * math.pi * s**2)
    for c, ex in zip(linear_smc_case.charts, exact, strict=True):
        smc = c.samples.smc
        assert smc["temperatures"][0] == 0.0 and smc["temperatures"][-1] == 1.0
        assert all(a < b for a, b in zip(smc["temperatures"], smc["temperatures"][1:], strict=False))
        # the tempering's own estimate (128 particles) and the importance sample of the chains' proposals
        assert abs(smc["log_evidence"] - (ex["log_evidence"] + shift)) < 0.25
        assert abs(c.log_evidence - (ex["log_evidence"] + shift)) < 0.05
    assert np.allclose(linear_smc_case.probabilities, probs, atol=0.02)
    assert linear_smc_case.warnings == []
    assert "smc" in linear_smc_case.diagnostics()["charts"][0]


def test_smc_init_on_bars_matches_quadrature(bars_case):
    atlas, residual, k = bars_case
    sampler = AtlasPosterior(atlas, residual, chains=4, draws=200, init="smc", particles=64)
    samples = sampler.sample_chart(k, seed=0)
    log_z = _assert_matches_bars_quadrature(atlas, residual, k, samples.draws[..., 0], 300)
    # the chart mass comes from the chains' independence proposals (importance sampling); the
    # tempering's own estimate from 64 particles is rougher (log Z ~ -2000 here, 20-odd temperatures)
    post = sampler.chart_posterior(samples, samples.proposal_log_w.reshape(-1))
    assert abs(post.log_evidence - log_z) <= 4 * post.log_evidence_se + 0.01
    assert abs(samples.smc["log_evidence"] - log_z) < 1.0


def test_smc_init_refuses_local_steps(linear_problem):
    atlas, residual, _, _ = linear_problem
    with pytest.raises(ValueError, match="init='smc' needs local_steps=0"):
        AtlasPosterior(atlas, residual, init="smc", local_steps=1)
    with pytest.raises(ValueError, match="init must be"):
        AtlasPosterior(atlas, residual, init="tempering")
