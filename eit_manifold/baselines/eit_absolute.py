"""Classic absolute EIT reconstructions on the CEM solver: iterated Gauss-Newton and TV.

Both estimate sigma on a pixel grid (``GRID`` x ``GRID`` over [-R, R]^2, the pixels that meet the
mesh) and minimise the whitened misfit ``0.5 ||(F(sigma) - d) / std||^2`` plus a regulariser, by
Gauss-Newton steps on the linearised problem (Jacobian from adjoint solves):

* ``gauss-newton``: Tikhonov with the Gaussian smoothness prior (correlation length R/4) around
  the best homogeneous conductivity ``sigma0``; one step is the classic one-step (NOSER-like)
  reconstruction of pyEIT and EIDORS, more steps iterate it.
* ``tv``: total variation, each linearised step solved by lagged diffusivity.

Noise model: ``std_pm = max(eta, 1e-3) * rms(d_p)``, the file's relative noise level per pattern.
Regularisation weight (the only parameter) by the **discrepancy principle** on the first
linearised step: the largest weight on a logarithmic grid whose linearised residual is at most
``tau * sqrt(m)`` (``tau = 1.2``, m data); iterations stop when the residual reaches it.
Conductivities are kept in [sigma_min, sigma_max] (projected steps).
"""

from __future__ import annotations

import numpy as np

from eit_manifold.baselines.eit_linear import (
    grid_gradient,
    jacobian_in_basis,
    pixel_basis,
    smoothness_prior_factor,
    tikhonov_solve,
    tv_solve,
)
from eit_manifold.operators.eit import CEMForwardModel
from eit_manifold.operators.noise import RelativeNoise

GRID = 32
TAU = 1.2
WEIGHTS = np.logspace(-8, 2, 21)


def homogeneous_fit(model: CEMForwardModel, data: np.ndarray, start: float = 1.0, steps: int = 8) -> float:
    """Best constant conductivity (least squares) by scalar Gauss-Newton on log sigma."""
    s = np.log(start)
    ones = np.ones(model.n_cells)
    for _ in range(steps):
        res = model.solve(np.exp(s) * ones)
        r = (data - res.measurements).ravel()
        # dF/d(log s) = sigma * sum over cells of dF/dsigma_T = sigma * J @ 1, computed by one VJP per datum
        j = np.exp(s) * model.jacobian(res).reshape(-1, model.n_cells) @ ones
        s += float(j @ r / (j @ j))
    return float(np.exp(s))


def _discrepancy_weight(solve, jac: np.ndarray, r: np.ndarray, std: np.ndarray) -> float:
    """Largest weight whose linearised whitened residual is within TAU * sqrt(m)."""
    target = TAU * np.sqrt(r.size)
    for w in WEIGHTS[::-1]:
        dx = solve(w)
        if np.linalg.norm((jac @ dx - r) / std) <= target:
            return float(w)
    return float(WEIGHTS[0])


def reconstruct_baseline(problem, method: str, sigma_min: float, sigma_max: float,
                         iterations: int | None = None) -> tuple[np.ndarray, dict]:
    """Gauss-Newton or TV reconstruction of an :class:`~eit_manifold.pipelines.reconstruct.EITProblem`.

    Returns
    -------
    sigma_image : array (H, W)
        Conductivity at the problem's image resolution (grid pixels repeated).
    details : dict
        sigma0, regularisation weight, iterations, whitened residual per iteration.
    """
    model: CEMForwardModel = problem.operator.model
    data = problem.data.measurements
    std = RelativeNoise(max(problem.data.noise_level, 1e-3)).std(data).ravel()  # the file's noise model
    iterations = 10 if iterations is None else int(iterations)
    basis = pixel_basis(model, GRID)
    sigma0 = homogeneous_fit(model, data)
    x = np.full(basis.size, sigma0)
    weight, residuals = None, []
    if method == "gauss-newton":
        L = smoothness_prior_factor(basis.centres, corr_length=model.tank.radius / 4, std=1.0)
    elif method == "tv":
        G = grid_gradient(basis)
    else:
        raise ValueError(f"unknown baseline {method!r}: choose gauss-newton or tv")

    def solve(w: float, J: np.ndarray, rhs: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Minimiser (relative to sigma0) of the linearised regularised functional with weight w."""
        if method == "gauss-newton":
            return tikhonov_solve(J, rhs, std, np.sqrt(w) * L)
        return tv_solve(J, rhs, std, G, lam=w, cell_area=basis.pixel_size**2, beta=1e-2, x0=start, max_iter=15)[0]

    for _ in range(max(1, iterations)):
        res = model.solve(basis.matrix @ x)
        r = (data - res.measurements).ravel()
        residuals.append(float(np.linalg.norm(r / std)))
        if residuals[-1] <= TAU * np.sqrt(r.size):
            break
        J = jacobian_in_basis(model, res, basis.matrix)
        rhs = r + J @ (x - sigma0)  # the functional is regularised around sigma0, not around x
        if weight is None:
            weight = _discrepancy_weight(lambda w, J=J, rhs=rhs, s=x - sigma0: solve(w, J, rhs, s), J, rhs, std)
        x = np.clip(sigma0 + solve(weight, J, rhs, x - sigma0), sigma_min, sigma_max)
    coarse = basis.to_image(x, fill=sigma0)
    H, W = problem.operator.image_shape
    factor = H // GRID
    image = np.kron(coarse, np.ones((factor, factor))) if factor * GRID == H else _resample(coarse, (H, W))
    return image, {"sigma0": sigma0, "weight": weight, "iterations": len(residuals),
                   "whitened_residual": residuals, "grid": GRID}


def _resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a pixel image to another grid over the same square."""
    rows = (np.arange(shape[0]) + 0.5) * image.shape[0] / shape[0]
    cols = (np.arange(shape[1]) + 0.5) * image.shape[1] / shape[1]
    return image[np.floor(rows).astype(int)][:, np.floor(cols).astype(int)]
