"""The one Gauss-Newton / Levenberg-Marquardt solver: exact on linear problems, convergent on
nonlinear ones, and each stopping rule does what it says."""

from __future__ import annotations

import numpy as np
import pytest

from eit_manifold.optim.least_squares import forward_difference_jacobian, gauss_newton, gauss_newton_point

RNG = np.random.default_rng(0)
A = RNG.standard_normal((30, 5))
B = RNG.standard_normal(30)
P = 0.3 * RNG.standard_normal((5, 5))
C = RNG.standard_normal(5)


def _linear(x: np.ndarray):
    return A @ x - B, None


def _linear_jac(x: np.ndarray, aux) -> np.ndarray:
    return A


def test_one_step_solves_a_regularised_linear_problem_exactly() -> None:
    # min 1/2 |A x - b|^2 + 1/2 |P (x - c)|^2 is the least-squares solution of the stacked system
    exact = np.linalg.lstsq(np.vstack([A, P]), np.concatenate([B, P @ C]), rcond=None)[0]
    for glob in ("none", "halving", "levenberg-marquardt"):
        res = gauss_newton(_linear, _linear_jac, np.zeros(5), prior=(P, C), globalisation=glob, max_iter=50,
                           damping=1e-12, rtol=1e-14)
        assert np.allclose(res.x, exact, atol=1e-8), glob
    once = gauss_newton(_linear, _linear_jac, np.zeros(5), prior=(P, C), max_iter=1)
    assert np.allclose(once.x, exact, atol=1e-12) and once.iterations == 1
    assert np.allclose(gauss_newton_point(np.ones(5), *(_linear(np.ones(5))[0], A)),
                       np.linalg.lstsq(A, B, rcond=None)[0], atol=1e-12)


def _rosenbrock(x: np.ndarray):
    return np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]]), None


def _rosenbrock_jac(x: np.ndarray, aux) -> np.ndarray:
    return np.array([[-20 * x[0], 10.0], [-1.0, 0.0]])


@pytest.mark.parametrize("glob", ["halving", "levenberg-marquardt"])
def test_globalised_modes_solve_rosenbrock_and_decrease_monotonically(glob: str) -> None:
    res = gauss_newton(_rosenbrock, _rosenbrock_jac, np.array([-1.2, 1.0]), globalisation=glob, max_iter=100,
                       rtol=0.0)
    assert np.allclose(res.x, [1.0, 1.0], atol=1e-8)
    assert np.all(np.diff(res.objective) < 0)
    assert len(res.objective) == len(res.residual_norm)
    assert np.allclose(res.objective, 0.5 * np.square(res.residual_norm))


def test_forward_difference_jacobian_matches_the_analytic_one_and_fits_an_exponential() -> None:
    t = np.linspace(0, 2, 40)
    y = 2.5 * np.exp(-1.3 * t)

    def r(p: np.ndarray) -> np.ndarray:
        return p[0] * np.exp(-p[1] * t) - y

    jac = forward_difference_jacobian(r, 1e-7)
    p = np.array([1.0, 0.5])
    analytic = np.stack([np.exp(-p[1] * t), -p[0] * t * np.exp(-p[1] * t)], axis=1)
    assert np.allclose(jac(p, r(p)), analytic, atol=1e-5)
    fit = gauss_newton(lambda q: (r(q),) * 2, jac, p, globalisation="levenberg-marquardt", max_iter=50, rtol=1e-14)
    assert np.allclose(fit.x, [2.5, 1.3], atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        forward_difference_jacobian(r, 0.0)


def test_stopping_rules_and_their_reasons() -> None:
    start = np.array([-1.2, 1.0])
    assert gauss_newton(_rosenbrock, _rosenbrock_jac, start, max_iter=3).reason == "max_iter"
    # plain Gauss-Newton on Rosenbrock converges in two steps (x0 exact after the first): step_tol
    res = gauss_newton(_rosenbrock, _rosenbrock_jac, start, max_iter=20, step_tol=1e-10)
    assert res.reason == "step_tol" and np.allclose(res.x, [1, 1]) and res.iterations <= 4
    # discrepancy: stops at a linearisation point already within the tolerance, before stepping
    res = gauss_newton(_rosenbrock, _rosenbrock_jac, np.array([1.0, 1.0]), residual_tol=1e-3)
    assert res.reason == "residual_tol" and res.iterations == 0 and np.array_equal(res.x, [1.0, 1.0])
    res = gauss_newton(_linear, _linear_jac, np.zeros(5), globalisation="halving", max_iter=10, rtol=1e-6)
    assert res.reason in ("rtol", "no_decrease") and res.iterations <= 3

    # a Jacobian of the wrong sign: every trial goes uphill
    def wrong(x, aux):
        return -_linear_jac(x, aux)

    for glob in ("halving", "levenberg-marquardt"):
        res = gauss_newton(_linear, wrong, np.zeros(5), globalisation=glob, max_trials=4)
        assert res.reason == "no_decrease" and res.iterations == 1 and np.array_equal(res.x, np.zeros(5))


def test_projection_and_custom_step_are_applied() -> None:
    box = gauss_newton(_linear, _linear_jac, np.zeros(5), project=lambda x: np.clip(x, -0.1, 0.1), max_iter=5)
    assert np.abs(box.x).max() <= 0.1 + 1e-15
    calls = []

    def half_step(x, r, J):
        calls.append(1)
        return x + 0.5 * (gauss_newton_point(x, r, J) - x)

    res = gauss_newton(_linear, _linear_jac, np.zeros(5), step=half_step, max_iter=4)
    exact = np.linalg.lstsq(A, B, rcond=None)[0]
    assert len(calls) == 4 and np.allclose(res.x, exact * (1 - 0.5**4))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="globalisation"):
        gauss_newton(_linear, _linear_jac, np.zeros(5), globalisation="trust")
    with pytest.raises(ValueError, match="custom step"):
        gauss_newton(_linear, _linear_jac, np.zeros(5), step=lambda x, r, J: x, globalisation="levenberg-marquardt")
    with pytest.raises(ValueError, match="max_iter"):
        gauss_newton(_linear, _linear_jac, np.zeros(5), max_iter=0)
    with pytest.raises(ValueError, match="rtol"):
        gauss_newton(_linear, _linear_jac, np.zeros(5), rtol=-1.0)
