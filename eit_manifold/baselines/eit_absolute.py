"""Classic absolute EIT reconstructions on the CEM solver: iterated Gauss-Newton and TV.

Both estimate sigma on a pixel grid (``GRID`` x ``GRID`` over [-R, R]^2, the pixels that meet the
mesh) and minimise the whitened misfit ``0.5 ||(F(sigma) - d) / std||^2`` plus a regulariser, by
Gauss-Newton steps on the linearised problem (Jacobian from adjoint solves;
:func:`eit_manifold.optim.least_squares.gauss_newton`, globalisation ``none``):

* ``gauss-newton``: Tikhonov with the Gaussian smoothness prior (correlation length R/4) around
  the best homogeneous conductivity ``sigma0``; one step is the classic one-step (NOSER-like)
  reconstruction of pyEIT and EIDORS, more steps iterate it.
* ``tv``: total variation, each linearised step solved by lagged diffusivity.

Noise model: ``std_pm = max(eta, 1e-3) * rms(d_p)``, the file's relative noise level per pattern
(floored: below 0.1 % the coarse reconstruction mesh's model error dominates). Regularisation
weight (the only parameter, in these whitened units): **a fixed weight per noise level, chosen on
validation phantoms** disjoint from every test phantom (held-out ``balls`` indices 200-203 at 0.1
% and 1 %, noise seeds of their own, half-decade grid; ``scripts/choose_eit_weights.py``): the
grid weight with the smallest mean relative L2 error, :data:`VALIDATED_WEIGHTS`, log-log
interpolated between the levels and constant beyond them (:func:`validated_weight`). The rule
needs nothing from the image being reconstructed but its file's noise level, so it holds on every
image and picks the same weight on reruns. (It replaced Morozov's discrepancy principle, which
stopped at the homogeneous fit whenever that already explained the 1 % data — the constant image —
and otherwise chose the largest weight of its grid.) Gauss-Newton steps are iterated until sigma
changes by less than ``STEP_TOL``.
Conductivities are kept in [sigma_min, sigma_max] (projected steps).
"""

from __future__ import annotations

import numpy as np

from eit_manifold.baselines.eit_linear import (
    grid_gradient,
    jacobian_in_basis,
    lagged_diffusivity_tv,
    pixel_basis,
    smoothness_prior_factor,
)
from eit_manifold.operators.eit import CEMForwardModel
from eit_manifold.operators.eit.conductivity_map import conductivity_to_image
from eit_manifold.operators.noise import RelativeNoise
from eit_manifold.optim.least_squares import gauss_newton

BASELINES = ("gauss-newton", "tv")
GRID = 32
NOISE_FLOOR = 1e-3  # relative noise std assumed at least (the coarse mesh's model error is of this order)
STEP_TOL = 1e-3
#: Regularisation weights (whitened units) per method and noise level, chosen on validation phantoms
#: disjoint from every test phantom by ``scripts/choose_eit_weights.py`` (README, *Baselines' parameter rule*).
#: Half-decade grid 1-3162; validation errors of every grid weight in docs/figures/eit_weights.json.
VALIDATED_WEIGHTS: dict[str, dict[float, float]] = {
    "gauss-newton": {0.001: 31.6228, 0.01: 10.0},
    "tv": {0.001: 10.0, 0.01: 10.0},
}


def validated_weight(method: str, noise_level: float) -> float:
    """The validated weight of ``method`` at ``noise_level``: log-log interpolation in the table
    :data:`VALIDATED_WEIGHTS`, constant beyond its ends (levels below :data:`NOISE_FLOOR` count as it)."""
    table = VALIDATED_WEIGHTS[method]
    levels = np.array(sorted(table))
    values = np.array([table[level] for level in levels])
    eta = max(float(noise_level), NOISE_FLOOR)
    return float(np.exp(np.interp(np.log(eta), np.log(levels), np.log(values))))


def homogeneous_fit(model: CEMForwardModel, data: np.ndarray, start: float = 1.0, steps: int = 8) -> float:
    """Best constant conductivity (least squares) by ``steps`` scalar Gauss-Newton steps on log sigma."""
    ones = np.ones(model.n_cells)

    def residual(s: np.ndarray):
        res = model.solve(np.exp(s[0]) * ones)
        return (res.measurements - data).ravel(), res

    def jacobian(s: np.ndarray, res) -> np.ndarray:
        # dF/d(log s) = sigma * sum over cells of dF/dsigma_T = sigma * J @ 1
        return (np.exp(s[0]) * model.jacobian(res).reshape(-1, model.n_cells) @ ones)[:, None]

    return float(np.exp(gauss_newton(residual, jacobian, np.log([start]), max_iter=steps).x[0]))


def basis_least_squares(model: CEMForwardModel, data: np.ndarray, matrix, std: np.ndarray):
    """``residual(x) -> (r, solve)`` and ``jacobian(x, solve)`` of ``sigma = matrix @ x`` for
    :func:`~eit_manifold.optim.least_squares.gauss_newton`: ``r = (F(sigma) - d) / std`` whitened,
    the Jacobian by adjoint solves that reuse the forward solve."""
    d = np.asarray(data).ravel()

    def residual(x: np.ndarray):
        res = model.solve(matrix @ x)
        return (res.measurements.ravel() - d) / std, res

    def jacobian(x: np.ndarray, res) -> np.ndarray:
        return jacobian_in_basis(model, res, matrix) / std[:, None]

    return residual, jacobian


def gauss_newton_warm_start(problem, sigma_min: float, sigma_max: float, steps: int = 3) -> np.ndarray:
    """A ``steps``-step Gauss-Newton reconstruction mapped to atlas image values (the atlas methods'
    warm start: prior samples of a weak atlas can all be far from the data, the projection of a
    classic reconstruction already explains most of them)."""
    sigma, _ = reconstruct_baseline(problem, "gauss-newton", sigma_min, sigma_max, steps)
    return conductivity_to_image(sigma, sigma_min, sigma_max)


def tv_step(sigma0: float, gradient, weight: float, cell_size: float):
    """The Gauss-Newton step of the TV baselines (2-D pixels, 3-D voxels) as a ``step`` callable.

    Each linearised problem ``min_x 0.5 ||J (x - x_k) + r||^2 + weight * cell_size * TV(x - sigma0)``
    (whitened units of ``r`` and ``J``; ``gradient``: stacked differences per axis, ``cell_size``:
    pixel area or voxel volume) is solved by lagged diffusivity (smoothing 1e-2, 15 sweeps) from
    the current point, for :func:`~eit_manifold.optim.least_squares.gauss_newton`'s ``step``.
    """
    def step(x: np.ndarray, r: np.ndarray, J: np.ndarray) -> np.ndarray:
        dx = lagged_diffusivity_tv(J, J @ (x - sigma0) - r, np.ones_like(r), gradient, lam=weight,
                                   cell_area=cell_size, beta=1e-2, x0=x - sigma0, max_iter=15)[0]
        return sigma0 + dx

    return step


def reconstruct_baseline(problem, method: str, sigma_min: float, sigma_max: float,
                         iterations: int | None = None, weight: float | None = None) -> tuple[np.ndarray, dict]:
    """Gauss-Newton or TV reconstruction of an :class:`~eit_manifold.pipelines.reconstruct.EITProblem`.

    Parameters
    ----------
    problem : EITProblem
        Data (with its noise level) and operator.
    method : {"gauss-newton", "tv"}
    sigma_min, sigma_max : float
        Box constraint of the conductivity.
    iterations : int, optional
        Gauss-Newton steps (default 10); the iteration also stops when a step changes sigma by less
        than ``STEP_TOL`` (relative).
    weight : float, optional
        Regularisation weight (whitened units); default :func:`validated_weight` at the file's
        noise level.

    Returns
    -------
    sigma_image : array (H, W)
        Conductivity at the problem's image resolution (grid pixels repeated).
    details : dict
        sigma0, regularisation weight, iterations, whitened residual per iteration.
    """
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}: choose gauss-newton or tv")
    model: CEMForwardModel = problem.operator.model
    data = problem.data.measurements
    std = RelativeNoise(max(problem.data.noise_level, NOISE_FLOOR)).std(data).ravel()  # the file's noise model
    iterations = 10 if iterations is None else int(iterations)
    weight = validated_weight(method, problem.data.noise_level) if weight is None else float(weight)
    basis = pixel_basis(model, GRID)
    sigma0 = homogeneous_fit(model, data)
    centre = np.full(basis.size, sigma0)
    residual, jacobian = basis_least_squares(model, data, basis.matrix, std)
    prior, step = None, None
    if method == "gauss-newton":
        L = smoothness_prior_factor(basis.centres, corr_length=model.tank.radius / 4, std=1.0)
        prior = (np.sqrt(weight) * L, centre)  # the functional is regularised around sigma0, not around x
    else:
        step = tv_step(sigma0, grid_gradient(basis), weight, basis.pixel_size**2)

    result = gauss_newton(residual, jacobian, centre, prior=prior, step=step,
                          project=lambda x: np.clip(x, sigma_min, sigma_max), max_iter=max(1, iterations),
                          step_tol=STEP_TOL)
    x, residuals = result.x, result.residual_norm
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


def choose_weight(problems: list, method: str, grid: np.ndarray, sigma_min: float = 0.2, sigma_max: float = 1.8,
                  iterations: int | None = None, progress: bool = False) -> tuple[float, np.ndarray]:
    """The weight of ``grid`` with the smallest mean relative L2 error on validation ``problems``.

    Parameters
    ----------
    problems : list of EITProblem
        Simulated validation problems with a known truth (never the test phantoms).
    method : {"gauss-newton", "tv"}
    grid : array
        Candidate weights.

    Returns
    -------
    weight, errors
        The chosen weight (ties: the larger) and the ``(n_problems, n_weights)`` errors.
    """
    from tqdm import tqdm

    grid = np.asarray(grid, dtype=float)
    if any(p.truth is None for p in problems) or not problems or grid.size == 0:
        raise ValueError("choose_weight needs at least one problem with a known truth and one weight")
    errors = np.empty((len(problems), grid.size))
    bar = tqdm(total=errors.size, desc=f"weights {method}", disable=not progress)
    for i, problem in enumerate(problems):
        inside = problem.inside
        for j, w in enumerate(grid):
            image, _ = reconstruct_baseline(problem, method, sigma_min, sigma_max, iterations, weight=float(w))
            truth = problem.truth[inside]
            errors[i, j] = np.linalg.norm(image[inside] - truth) / np.linalg.norm(truth)
            bar.update()
    bar.close()
    mean = errors.mean(axis=0)
    best = np.flatnonzero(mean <= mean.min() * (1 + 1e-12))[-1]
    return float(grid[best]), errors
