"""Gauss-Newton reconstruction of a 3-D conductivity on a voxel grid.

The 2-D baseline's machinery is dimension-free and reused as is: the best homogeneous fit, the
Jacobian in a basis (adjoint solves reusing the forward factorisation), the Gaussian smoothness
prior, the Tikhonov step and the validated weight of the 2-D Gauss-Newton baseline (see
:mod:`eit_manifold.baselines.eit_absolute`; it was chosen on 2-D validation phantoms, not
re-validated in 3-D). Only the basis differs: the voxels of a (D, H, W)
grid over the tank that meet the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from eit_manifold.baselines.eit_absolute import basis_least_squares, homogeneous_fit, validated_weight
from eit_manifold.baselines.eit_linear import smoothness_prior_factor
from eit_manifold.operators.eit.forward import CEMForwardModel
from eit_manifold.operators.eit.pixels import voxel_centres
from eit_manifold.operators.noise import RelativeNoise
from eit_manifold.optim.least_squares import gauss_newton

DEFAULT_GRID = (6, 16, 16)
# Iterations stop once the whitened residual is within this factor of its noise-only value sqrt(m).
TAU = 1.2


@dataclass(frozen=True)
class VoxelBasis:
    """Voxels of a (D, H, W) grid that overlap the mesh, and their map to cells (rows sum to 1)."""

    shape: tuple[int, int, int]
    active: np.ndarray  # (D*H*W,) bool
    matrix: sp.csr_matrix  # (n_cells, n_active)
    centres: np.ndarray  # (n_active, 3)

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
    return VoxelBasis(shape, active, matrix.tocsr(), centres)


def gauss_newton_3d(
    model: CEMForwardModel,
    data: np.ndarray,
    noise_level: float,
    grid: tuple[int, int, int] = DEFAULT_GRID,
    iterations: int = 5,
    sigma_min: float = 0.2,
    sigma_max: float = 1.8,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Iterated Gauss-Newton with the smoothness prior (correlation length R/4) on a voxel grid.

    Parameters
    ----------
    model : CEMForwardModel
        3-D forward model with the data's patterns.
    data : array (P, M)
        Measurements.
    noise_level : float
        Relative noise level of the data (the file's): ``std = max(eta, 1e-3) rms(d_p)``.
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
    std = RelativeNoise(max(noise_level, 1e-3)).std(data).ravel()
    basis = voxel_basis(model, grid)
    sigma0 = homogeneous_fit(model, data)
    x = np.full(basis.size, sigma0)
    L = smoothness_prior_factor(basis.centres, corr_length=model.tank.radius / 4, std=1.0)
    weight = validated_weight("gauss-newton", noise_level)

    residual, jacobian = basis_least_squares(model, data, basis.matrix, std)
    result = gauss_newton(residual, jacobian, x, prior=(np.sqrt(weight) * L, x.copy()),
                          project=lambda v: np.clip(v, sigma_min, sigma_max), max_iter=max(1, int(iterations)),
                          residual_tol=TAU * np.sqrt(data.size))
    x, residuals = result.x, result.residual_norm
    return basis.matrix @ x, basis.to_grid(x), {"sigma0": sigma0, "weight": weight, "iterations": len(residuals),
                                                "whitened_residual": residuals, "grid": list(basis.shape)}
