"""Gauss-Newton and TV reconstruction of a 3-D conductivity on a voxel grid.

The 2-D baselines' machinery is dimension-free and reused as is: the best homogeneous fit, the
Jacobian in a basis (adjoint solves reusing the forward factorisation), the Gaussian smoothness
prior and the Tikhonov step (``gauss-newton``), the lagged-diffusivity TV step (``tv``), and the
validated weights of the 2-D baselines (see :mod:`eit_manifold.baselines.eit_absolute`; they were
chosen on 2-D validation phantoms, not re-validated in 3-D). Only the basis differs: the voxels of
a (D, H, W) grid over the tank that meet the mesh, with forward differences between neighbouring
voxels along the three axes for TV (:func:`voxel_gradient`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from eit_manifold.baselines.eit_absolute import basis_least_squares, homogeneous_fit, tv_step, validated_weight
from eit_manifold.baselines.eit_linear import smoothness_prior_factor
from eit_manifold.operators.eit.forward import CEMForwardModel
from eit_manifold.operators.eit.pixels import voxel_centres
from eit_manifold.operators.noise import RelativeNoise
from eit_manifold.optim.least_squares import gauss_newton

DEFAULT_GRID = (6, 16, 16)
METHODS_3D = ("gauss-newton", "tv")
# Iterations stop once the whitened residual is within this factor of its noise-only value sqrt(m).
TAU = 1.2


@dataclass(frozen=True)
class VoxelBasis:
    """Voxels of a (D, H, W) grid that overlap the mesh, and their map to cells (rows sum to 1)."""

    shape: tuple[int, int, int]
    active: np.ndarray  # (D*H*W,) bool
    matrix: sp.csr_matrix  # (n_cells, n_active)
    centres: np.ndarray  # (n_active, 3)
    spacing: tuple[float, float, float]  # voxel edge lengths (dz, dy, dx)

    @property
    def size(self) -> int:
        return int(self.active.sum())

    def to_grid(self, x: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """The (D, H, W) grid of active-voxel values ``x`` (``fill`` elsewhere)."""
        out = np.full(self.active.size, fill, dtype=float)
        out[self.active] = x
        return out.reshape(self.shape)


def voxel_basis(model: CEMForwardModel, shape: tuple[int, int, int] = DEFAULT_GRID) -> VoxelBasis:
    """The :class:`VoxelBasis` of a ``shape`` grid over [-R, R]^2 x the mesh's height."""
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"voxel grid shape must be three positive integers (D, H, W), got {shape}")
    full = model.pixel_map(shape).tocsc()
    active = np.asarray(full.sum(axis=0)).ravel() > 0
    matrix = full[:, active].tocsr()
    matrix = sp.diags(1.0 / np.asarray(matrix.sum(axis=1)).ravel()) @ matrix
    centres = voxel_centres(shape, model.tank.radius, model.z_range)[active]
    z0, z1 = model.z_range
    spacing = ((z1 - z0) / shape[0], 2 * model.tank.radius / shape[1], 2 * model.tank.radius / shape[2])
    return VoxelBasis(shape, active, matrix.tocsr(), centres, spacing)


def voxel_gradient(basis: VoxelBasis) -> sp.csr_matrix:
    """Forward differences between neighbouring active voxels along z, y and x, over the spacing.

    Returns a (3 n_active, n_active) matrix (one block per axis); a difference whose neighbour is
    inactive is zero (Neumann boundary), as :func:`~eit_manifold.baselines.eit_linear.grid_gradient`
    in 2-D.
    """
    n = basis.size
    index = np.full(basis.active.size, -1)
    index[basis.active] = np.arange(n)
    index = index.reshape(basis.shape)
    blocks = []
    for axis, h in enumerate(basis.spacing):
        here, there = [slice(None)] * 3, [slice(None)] * 3
        here[axis], there[axis] = slice(0, -1), slice(1, None)
        a, b = index[tuple(here)].ravel(), index[tuple(there)].ravel()
        ok = (a >= 0) & (b >= 0)
        a, b = a[ok], b[ok]
        rows, cols = np.concatenate([a, a]), np.concatenate([b, a])
        vals = np.concatenate([np.ones(a.size), -np.ones(a.size)]) / h
        blocks.append(sp.csr_matrix((vals, (rows, cols)), shape=(n, n)))
    return sp.vstack(blocks).tocsr()


def reconstruct_baseline_3d(
    model: CEMForwardModel,
    data: np.ndarray,
    noise_level: float,
    method: str = "gauss-newton",
    grid: tuple[int, int, int] = DEFAULT_GRID,
    iterations: int = 5,
    sigma_min: float = 0.2,
    sigma_max: float = 1.8,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Iterated Gauss-Newton on a voxel grid: smoothness prior (correlation length R/4) or TV.

    ``gauss-newton``: each step a Tikhonov step with the Gaussian smoothness prior around the
    homogeneous fit; ``tv``: each linearised step minimises the data misfit plus
    ``weight * voxel volume * sum |grad x|`` (smoothed by 1e-2) by lagged diffusivity, as the 2-D
    ``tv`` baseline does.

    Parameters
    ----------
    model : CEMForwardModel
        3-D forward model with the data's patterns.
    data : array (P, M)
        Measurements.
    noise_level : float
        Relative noise level of the data (the file's): ``std = max(eta, 1e-3) rms(d_p)``.
    method : {"gauss-newton", "tv"}
        Regularisation (the weight is the 2-D baseline's validated one at this noise level).
    grid : (D, H, W)
        Voxel grid of the unknowns.
    iterations : int
        Gauss-Newton steps at most (stops at the discrepancy ``TAU sqrt(m)``).

    Returns
    -------
    cells : array (n_cells,)
        Reconstructed per-cell conductivity.
    voxels : array (D, H, W)
        The voxel values (NaN where no cell is).
    details : dict
        sigma0, regularisation weight, whitened residual per iteration.
    """
    if method not in METHODS_3D:
        raise ValueError(f"unknown 3-D method {method!r}: choose one of {', '.join(METHODS_3D)}")
    std = RelativeNoise(max(noise_level, 1e-3)).std(data).ravel()
    basis = voxel_basis(model, grid)
    sigma0 = homogeneous_fit(model, data)
    x = np.full(basis.size, sigma0)
    weight = validated_weight(method, noise_level)
    prior, step = None, None
    if method == "gauss-newton":
        L = smoothness_prior_factor(basis.centres, corr_length=model.tank.radius / 4, std=1.0)
        prior = (np.sqrt(weight) * L, x.copy())
    else:
        step = tv_step(sigma0, voxel_gradient(basis), weight, float(np.prod(basis.spacing)))

    residual, jacobian = basis_least_squares(model, data, basis.matrix, std)
    result = gauss_newton(residual, jacobian, x, prior=prior, step=step,
                          project=lambda v: np.clip(v, sigma_min, sigma_max), max_iter=max(1, int(iterations)),
                          residual_tol=TAU * np.sqrt(data.size))
    x, residuals = result.x, result.residual_norm
    return basis.matrix @ x, basis.to_grid(x), {"method": method, "sigma0": sigma0, "weight": weight,
                                                "iterations": len(residuals), "whitened_residual": residuals,
                                                "grid": list(basis.shape)}
