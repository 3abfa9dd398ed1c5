"""One Gauss-Newton / Levenberg-Marquardt solver for regularised nonlinear least squares.

Minimises

    Phi(x) = 1/2 ||r(x)||^2 + 1/2 ||P (x - c)||^2

(``r`` the whitened residual, ``P`` an optional prior factor with centre ``c``) by steps on the
linearisation ``r(x + dx) ~ r(x) + J dx``. The Gauss-Newton point is the minimiser of the
linearised objective,

    x_hat = c + (J^T J + P^T P)^{-1} J^T (J (x - c) - r),

written around the prior's centre (it is ``x - (J^T J + P^T P)^{-1} grad Phi``) because the
classic EIT baselines regularise around the homogeneous fit, not around the iterate. Without a
prior it is ``x - (J^T J)^{-1} J^T r``. A ``step`` callable can replace it (total variation solves
the linearised problem by lagged diffusivity instead).

Globalisation (how far along ``x_hat - x`` to go):

* ``"none"``: take ``project(x_hat)`` (the EIT baselines: iterated, projected Gauss-Newton as in
  pyEIT/EIDORS; no objective evaluations beyond the linearisation points);
* ``"halving"``: halve the step until ``Phi`` decreases (at most ``max_trials`` trials), stop when
  none does;
* ``"levenberg-marquardt"``: solve ``(A + lam D) dx = -grad Phi`` with ``A = J^T J + P^T P`` and
  ``D = diag(A) + 1e-12 tr(A)`` (Marquardt's scaling, with a floor so a parameter the data do not
  see still gets a finite step); ``lam`` divided by 5 after a success (floor 1e-9), multiplied by
  10 after a failure, at most ``max_trials`` tries per iteration.

Stopping: ``max_iter`` iterations; ``step_tol`` (relative change ``||x_new - x|| / ||x_new||``);
``rtol`` (relative decrease of ``Phi``, globalised modes); ``residual_tol`` (``||r|| <= tol`` at a
linearisation point, before its step: the discrepancy principle).

Used by every Gauss-Newton-type loop of the package: the EIT baselines (Gauss-Newton, TV) and the
homogeneous fit (``baselines/eit_absolute.py``), 3-D Gauss-Newton and TV (``baselines/eit3d.py``), the KTC
calibration and the KTC absolute method (``ktc/``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg

GLOBALISATIONS = ("none", "halving", "levenberg-marquardt")

ResidualFn = Callable[[np.ndarray], tuple[np.ndarray, Any]]
JacobianFn = Callable[[np.ndarray, Any], np.ndarray]
StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class GaussNewtonResult:
    """Outcome of :func:`gauss_newton`.

    Attributes
    ----------
    x : array
        The final iterate.
    objective, residual_norm : list of float
        ``Phi`` and ``||r||`` at every linearisation point (the accepted iterates, in order).
    iterations : int
        Iterations run (a last iteration whose trials all failed counts).
    reason : str
        Why it stopped: ``"max_iter"``, ``"step_tol"``, ``"rtol"``, ``"residual_tol"`` or
        ``"no_decrease"``.
    aux : object
        What ``residual`` returned besides ``r`` at the last evaluated accepted point (``None`` in
        mode ``"none"`` after a step: the final iterate is not evaluated there).
    """

    x: np.ndarray
    objective: list[float] = field(default_factory=list)
    residual_norm: list[float] = field(default_factory=list)
    iterations: int = 0
    reason: str = "max_iter"
    aux: Any = None


def forward_difference_jacobian(residual: Callable[[np.ndarray], np.ndarray], step: float = 1e-6) -> JacobianFn:
    """A ``jacobian(x, r)`` for :func:`gauss_newton` by forward differences of ``residual``.

    ``r`` must be ``residual(x)`` (pass it as the residual's ``aux``); costs one residual per
    parameter.
    """
    if not step > 0:
        raise ValueError(f"the difference step must be positive, got {step!r}")

    def jacobian(x: np.ndarray, r: np.ndarray) -> np.ndarray:
        J = np.empty((r.size, x.size))
        for k in range(x.size):
            t = x.copy()
            t[k] += step
            J[:, k] = (residual(t) - r) / step
        return J

    return jacobian


def _objective(r: np.ndarray, x: np.ndarray, prior: tuple[np.ndarray, np.ndarray] | None) -> float:
    value = 0.5 * float(r @ r)
    if prior is not None:
        p = prior[0] @ (x - prior[1])
        value += 0.5 * float(p @ p)
    return value


def gauss_newton_point(x: np.ndarray, r: np.ndarray, J: np.ndarray,
                       prior: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The minimiser of the linearised objective (module docstring), by a Cholesky solve."""
    if prior is None:
        return x - scipy.linalg.solve(J.T @ J, J.T @ r, assume_a="pos")
    P, c = prior
    lhs = J.T @ J + P.T @ P
    return c + scipy.linalg.solve(lhs, J.T @ (J @ (x - c) - r), assume_a="pos")


def gauss_newton(
    residual: ResidualFn,
    jacobian: JacobianFn,
    x0: np.ndarray,
    *,
    prior: tuple[np.ndarray, np.ndarray] | None = None,
    step: StepFn | None = None,
    project: Callable[[np.ndarray], np.ndarray] | None = None,
    globalisation: str = "none",
    max_iter: int = 10,
    step_tol: float | None = None,
    rtol: float | None = None,
    residual_tol: float | None = None,
    max_trials: int = 12,
    damping: float = 1e-3,
) -> GaussNewtonResult:
    """Minimise ``1/2 ||r(x)||^2 + 1/2 ||P (x - c)||^2`` by Gauss-Newton steps (module docstring).

    Parameters
    ----------
    residual : callable
        ``x -> (r, aux)``: the whitened residual (m,) and anything the Jacobian needs (a forward
        solve's result).
    jacobian : callable
        ``(x, aux) -> J`` (m, n), ``J = dr/dx`` at ``x``.
    x0 : array (n,)
        Start.
    prior : (P, c), optional
        Prior factor (k, n) and centre (n,).
    step : callable, optional
        ``(x, r, J) -> x_hat``: the proposed point, instead of :func:`gauss_newton_point`
        (modes ``"none"`` and ``"halving"``).
    project : callable, optional
        Applied to every proposed point (a box constraint: ``np.clip``).
    globalisation : {"none", "halving", "levenberg-marquardt"}
    max_iter : int
        Iterations at most.
    step_tol, rtol, residual_tol : float, optional
        Stopping tests (module docstring); ``None`` switches a test off.
    max_trials : int
        Step halvings or damping increases per iteration.
    damping : float
        Initial Levenberg-Marquardt parameter.

    Returns
    -------
    GaussNewtonResult
    """
    if globalisation not in GLOBALISATIONS:
        raise ValueError(f"unknown globalisation {globalisation!r}: choose one of {', '.join(GLOBALISATIONS)}")
    if step is not None and globalisation == "levenberg-marquardt":
        raise ValueError("a custom step cannot be damped: use globalisation 'none' or 'halving'")
    if int(max_iter) != max_iter or max_iter < 1 or int(max_trials) != max_trials or max_trials < 1:
        raise ValueError(f"max_iter and max_trials must be positive integers, got {max_iter!r}, {max_trials!r}")
    for name, value in (("step_tol", step_tol), ("rtol", rtol), ("residual_tol", residual_tol)):
        if value is not None and not value >= 0:
            raise ValueError(f"{name} must be >= 0 or None, got {value!r}")
    propose = step or (lambda x, r, J: gauss_newton_point(x, r, J, prior))
    keep = project or (lambda x: x)
    x = np.array(x0, dtype=float)
    r, aux = residual(x)
    phi = _objective(r, x, prior)
    objective, norms = [phi], [float(np.linalg.norm(r))]
    lam = float(damping)
    reason, iterations = "max_iter", 0
    for _ in range(int(max_iter)):
        if residual_tol is not None and norms[-1] <= residual_tol:
            reason = "residual_tol"
            break
        iterations += 1
        J = jacobian(x, aux)
        if globalisation == "none":
            x_new = keep(propose(x, r, J))
            change = np.linalg.norm(x_new - x) / max(np.linalg.norm(x_new), 1e-300)
            x, aux = x_new, None
            if step_tol is not None and change < step_tol:
                reason = "step_tol"
                break
            if iterations < max_iter:
                r, aux = residual(x)
                phi = _objective(r, x, prior)
                objective.append(phi)
                norms.append(float(np.linalg.norm(r)))
            continue
        trial = _globalised_trial(residual, x, r, J, phi, prior, propose, keep, globalisation, max_trials, lam)
        if trial is None:
            reason = "no_decrease"
            break
        x, r, aux, phi_new, lam = trial
        objective.append(phi_new)
        norms.append(float(np.linalg.norm(r)))
        decreased_little = rtol is not None and phi - phi_new <= rtol * phi
        phi = phi_new
        if decreased_little:
            reason = "rtol"
            break
    return GaussNewtonResult(x, objective, norms, iterations, reason, aux)


def _globalised_trial(residual, x, r, J, phi, prior, propose, keep, globalisation, max_trials, lam):
    """The first accepted trial point ``(x, r, aux, phi, lam)`` of one iteration, or ``None``."""
    if globalisation == "halving":
        direction = propose(x, r, J) - x
        for _ in range(int(max_trials)):
            t = keep(x + direction)
            r_t, aux_t = residual(t)
            phi_t = _objective(r_t, t, prior)
            if phi_t < phi:
                return t, r_t, aux_t, phi_t, lam
            direction = 0.5 * direction
        return None
    A, g = J.T @ J, J.T @ r
    if prior is not None:
        P, c = prior
        A, g = A + P.T @ P, g + P.T @ (P @ (x - c))
    scale = np.diag(np.diag(A) + 1e-12 * np.trace(A))
    for _ in range(int(max_trials)):
        t = keep(x + np.linalg.solve(A + lam * scale, -g))
        r_t, aux_t = residual(t)
        phi_t = _objective(r_t, t, prior)
        if phi_t < phi:
            return t, r_t, aux_t, phi_t, max(lam / 5, 1e-9)
        lam *= 10
    return None
