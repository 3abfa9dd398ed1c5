"""Linearised EIT reconstruction for any :class:`CEMForwardModel`: smoothness prior and TV.

The unknown is a conductivity change ``x`` on a pixel grid over [-R, R]^2 (only the pixels that
overlap the mesh), mapped to the cells by the model's pixel map: ``sigma = sigma0 + P x``. With the
Jacobian ``J = dF/dsigma (sigma0) P`` and the data change ``r`` (e.g. data - reference for
difference imaging), both methods minimise a whitened least-squares misfit ``0.5 ||J x - r||_W^2``
with ``W = diag(1 / std^2)`` plus a regulariser:

* **Smoothness prior** (the KTC organisers' baseline): a Gaussian prior with covariance
  ``Gamma_ij = (s^2 - c) exp(-|p_i - p_j|^2 / (2 b^2)) + c delta_ij``, ``b = l / sqrt(2 ln 100)``
  (correlation 0.01 at distance ``l``), ``c = 1e-9``; the MAP estimate
  ``x = (J^T W J + L^T L)^{-1} J^T W r`` with ``L^T L = Gamma^{-1}``.
* **Total variation**: ``0.5 ||J x - r||_W^2 + lam sum_pixels sqrt(|grad x|^2 + beta^2) h^2``
  (isotropic, forward differences between active pixels, pixel size ``h``), minimised by lagged
  diffusivity (iteratively reweighted least squares), each step one dense solve.

The noise model (also the organisers'): ``std_i^2 = (eta1 |u_i|)^2 + (eta2 max_j |u_j|)^2`` for
reference data ``u``. Nothing here is specific to KTC; regularisation rules live with the callers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from eit_manifold.operators.eit import CEMForwardModel
from eit_manifold.operators.eit.cem import CEMSolution
from eit_manifold.operators.eit.forward import ForwardResult
from eit_manifold.operators.eit.pixels import pixel_centres


@dataclass(frozen=True)
class PixelBasis:
    """Pixels of an ``n x n`` grid on [-R, R]^2 that overlap the mesh, and their map to cells.

    Attributes
    ----------
    shape : (int, int)
        Grid shape (row 0 at the top, ``y = +R``).
    active : array of bool (H*W,)
        Pixels that overlap at least one cell.
    matrix : sparse (n_cells, n_active)
        Cell value = area-weighted mean of the active pixels it overlaps.
    centres : array (n_active, 2)
        Pixel centres (x, y).
    pixel_size : float
        Side of a pixel.
    """

    shape: tuple[int, int]
    active: np.ndarray
    matrix: sp.csr_matrix
    centres: np.ndarray
    pixel_size: float

    @property
    def size(self) -> int:
        """Number of active pixels (unknowns)."""
        return int(self.active.sum())

    def to_image(self, x: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """The ``(H, W)`` image of active-pixel values ``x`` (``fill`` elsewhere)."""
        img = np.full(self.shape[0] * self.shape[1], fill, dtype=float)
        img[self.active] = x
        return img.reshape(self.shape)

    def from_image(self, image: np.ndarray) -> np.ndarray:
        """Active-pixel values of an ``(H, W)`` image."""
        return np.asarray(image, dtype=float).reshape(-1)[self.active]


def pixel_basis(model: CEMForwardModel, n: int) -> PixelBasis:
    """The :class:`PixelBasis` of an ``n x n`` grid for ``model``'s mesh."""
    if int(n) != n or n < 2:
        raise ValueError(f"pixel grid size must be an integer >= 2, got {n!r}")
    full = model.pixel_map((n, n)).tocsc()
    active = np.asarray(full.sum(axis=0)).ravel() > 0
    matrix = full[:, active].tocsr()
    matrix = sp.diags(1.0 / np.asarray(matrix.sum(axis=1)).ravel()) @ matrix  # rows sum to 1 again
    X, Y = pixel_centres((n, n), model.tank.radius)
    centres = np.column_stack([X.ravel(), Y.ravel()])[active]
    return PixelBasis((n, n), active, matrix.tocsr(), centres, 2 * model.tank.radius / n)


def jacobian_in_basis(
    model: CEMForwardModel, result: ForwardResult, basis: sp.spmatrix, chunk: int = 16
) -> np.ndarray:
    """Jacobian of the flattened data (P*M) with respect to coefficients in ``basis`` (n_cells, k).

    Computed in chunks of ``chunk`` patterns, so the full (P, M, n_cells) array is never held.
    """
    sol = result.solution
    P, M = model.data_shape
    out = np.empty((P * M, basis.shape[1]))
    basis_t = sp.csr_matrix(basis).T.tocsr()
    for start in range(0, P, chunk):
        stop = min(P, start + chunk)
        part = CEMSolution(sol.potentials[start:stop], sol.electrode_potentials[start:stop])
        jac = result.factorization.electrode_jacobian(part, model.measurement_matrix)  # (p, M, n_cells)
        out[start * M : stop * M] = (basis_t @ jac.reshape(-1, jac.shape[-1]).T).T
    return out


def noise_std(reference: np.ndarray, relative: float = 0.05, absolute: float = 0.01) -> np.ndarray:
    """Per-datum noise std ``sqrt((relative |u|)^2 + (absolute max|u|)^2)`` of reference data ``u``."""
    u = np.abs(np.asarray(reference, dtype=float).ravel())
    if not (relative >= 0 and absolute >= 0 and relative + absolute > 0):
        raise ValueError(f"noise levels must be >= 0 and not both 0, got relative={relative}, absolute={absolute}")
    std = np.sqrt((relative * u) ** 2 + (absolute * u.max()) ** 2)
    if not np.all(std > 0):
        raise ValueError("noise std is zero for some data (all reference data zero?)")
    return std


def smoothness_prior_factor(points: np.ndarray, corr_length: float, std: float, nugget: float = 1e-9) -> np.ndarray:
    """Upper-triangular ``L`` with ``L^T L = Gamma^{-1}`` for the Gaussian smoothness prior.

    Parameters
    ----------
    points : array (n, 2)
        Positions of the unknowns.
    corr_length : float
        Distance ``l`` at which the correlation has fallen to 0.01.
    std : float
        Prior standard deviation ``s`` of each unknown.
    nugget : float
        ``c``: variance added on the diagonal (keeps ``Gamma`` invertible).
    """
    if not (corr_length > 0 and std > 0 and 0 < nugget < std**2):
        raise ValueError(f"need corr_length > 0, std > 0, 0 < nugget < std^2; got {corr_length}, {std}, {nugget}")
    b = corr_length / math.sqrt(2 * math.log(100.0))
    d2 = np.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=2)
    gamma = (std**2 - nugget) * np.exp(-d2 / (2 * b**2)) + nugget * np.eye(len(points))
    precision = scipy.linalg.cho_solve(scipy.linalg.cho_factor(gamma, lower=True), np.eye(len(points)))
    return scipy.linalg.cholesky(0.5 * (precision + precision.T), lower=False)


def tikhonov_solve(jac: np.ndarray, r: np.ndarray, std: np.ndarray, prior_factor: np.ndarray) -> np.ndarray:
    """MAP estimate ``(J^T W J + L^T L)^{-1} J^T W r``, ``W = diag(std^-2)``.

    ``r`` is one data vector (N,) or several as columns (N, k); the result has the same layout.
    """
    r = np.asarray(r, dtype=float)
    if r.shape[0] != jac.shape[0] or r.ndim > 2:
        raise ValueError(f"data must have shape ({jac.shape[0]},) or ({jac.shape[0]}, k), got {r.shape}")
    jw = jac / std[:, None]
    lhs = jw.T @ jw + prior_factor.T @ prior_factor
    return scipy.linalg.solve(lhs, jw.T @ (r / (std if r.ndim == 1 else std[:, None])), assume_a="pos")


def grid_gradient(basis: PixelBasis) -> sp.csr_matrix:
    """Forward differences (x then y blocks) between horizontally/vertically adjacent active pixels.

    Returns a (2 n_active, n_active) matrix; a difference whose neighbour is inactive is zero
    (Neumann boundary), divided by the pixel size.
    """
    H, W = basis.shape
    index = np.full(H * W, -1)
    index[basis.active] = np.arange(basis.size)
    index = index.reshape(H, W)
    blocks = []
    for di, dj in ((0, 1), (-1, 0)):  # +x is the next column, +y the row above
        rows, cols, vals = [], [], []
        for i in range(H):
            for j in range(W):
                a = index[i, j]
                if a < 0:
                    continue
                ii, jj = i + di, j + dj
                if 0 <= ii < H and 0 <= jj < W and index[ii, jj] >= 0:
                    rows += [a, a]
                    cols += [index[ii, jj], a]
                    vals += [1.0, -1.0]
        blocks.append(sp.csr_matrix((vals, (rows, cols)), shape=(basis.size, basis.size)))
    return (sp.vstack(blocks) / basis.pixel_size).tocsr()


def lagged_diffusivity_tv(
    jac: np.ndarray,
    r: np.ndarray,
    std: np.ndarray,
    gradient: sp.spmatrix,
    lam: float,
    cell_area: float,
    beta: float,
    x0: np.ndarray | None = None,
    max_iter: int = 30,
    tol: float = 1e-4,
) -> tuple[np.ndarray, int]:
    """Minimise ``0.5 ||J x - r||_W^2 + lam * area * sum sqrt(gx^2 + gy^2 + beta^2)`` by lagged diffusivity.

    Works in any dimension: ``gradient`` stacks one block of ``n`` rows per axis (2 in 2-D,
    :func:`grid_gradient`; 3 in 3-D, :func:`~eit_manifold.baselines.eit3d.voxel_gradient`, with
    ``cell_area`` then the voxel volume).

    Parameters
    ----------
    jac, r, std : arrays
        Jacobian (m, n), data (m,) and noise std (m,).
    gradient : sparse (k n, n)
        Stacked differences along each of the k axes (:func:`grid_gradient`: x and y).
    lam, cell_area, beta : float
        Weight of the TV term, area of one pixel, smoothing of the TV norm (same unit as the gradient).
    x0 : array (n,), optional
        Starting point (default: zeros).
    max_iter, tol : int, float
        Iteration limit; stop when the relative change of ``x`` is below ``tol``.

    Returns
    -------
    x, iterations
    """
    if not (lam > 0 and beta > 0 and cell_area > 0):
        raise ValueError(f"lam, beta and cell_area must be positive, got {lam}, {beta}, {cell_area}")
    jw = jac / std[:, None]
    normal = jw.T @ jw
    rhs = jw.T @ (r / std)
    n = jac.shape[1]
    x = np.zeros(n) if x0 is None else np.asarray(x0, dtype=float).copy()
    G = sp.csr_matrix(gradient)
    if G.shape[1] != n or G.shape[0] % n:
        raise ValueError(f"gradient must stack blocks of shape ({n}, {n}), got {G.shape}")
    k = G.shape[0] // n
    it = 0
    while it < max_iter:
        it += 1
        g = G @ x
        mag = np.sqrt((g.reshape(k, n) ** 2).sum(axis=0) + beta**2)
        w = np.tile(1 / mag, k)
        reg = (G.T @ sp.diags(w) @ G).toarray() * (lam * cell_area)
        x_new = scipy.linalg.solve(normal + reg, rhs, assume_a="pos")
        change = np.linalg.norm(x_new - x) / max(np.linalg.norm(x_new), 1e-300)
        x = x_new
        if change < tol:
            break
    return x, it
