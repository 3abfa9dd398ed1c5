"""Semi-analytic CEM solution for a homogeneous disk, independent of the finite-element code.

For constant sigma the potential is harmonic, so the CEM weak form is solved by Galerkin in the
space spanned by 1, (r/R)^n cos(n theta), (r/R)^n sin(n theta), n = 1..N, plus the electrode
potentials. Interior terms are exact (sigma * n * pi on the diagonal); the electrode integrals
use Gauss-Legendre quadrature on each electrode arc. The same rank-one term as the FEM grounds
the solution (sum of U is zero).
"""

from __future__ import annotations

import numpy as np

from eit_manifold.operators.eit.geometry import Tank


def homogeneous_disk_potentials(
    tank: Tank,
    sigma: float,
    currents: np.ndarray,
    n_modes: int = 1024,
    n_quad: int = 512,
    extrapolate: bool = True,
) -> np.ndarray:
    """Electrode potentials (P, L) of a homogeneous disk for current patterns (P, L).

    Parameters
    ----------
    tank : Tank
        Geometry and contact impedances.
    sigma : float
        Constant conductivity (> 0).
    currents : array of shape (P, L)
        Current patterns, rows summing to zero.
    n_modes : int
        Highest Fourier mode N.
    n_quad : int
        Gauss-Legendre points per electrode.
    extrapolate : bool
        The Galerkin error decays like N^-2; combine the solutions with N and N/2 modes by
        Richardson extrapolation (about 1e-6 relative accuracy at N = 1024 for z = 0.01).
    """
    if extrapolate:
        fine = homogeneous_disk_potentials(tank, sigma, currents, n_modes, n_quad, extrapolate=False)
        coarse = homogeneous_disk_potentials(tank, sigma, currents, n_modes // 2, n_quad, extrapolate=False)
        return (4 * fine - coarse) / 3
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    L, R = tank.n_electrodes, tank.radius
    z = tank.impedances
    modes = np.arange(1, n_modes + 1)
    nb = 1 + 2 * n_modes
    xg, wg = np.polynomial.legendre.leggauss(n_quad)
    K = np.zeros((nb + L, nb + L))
    K[1 : 1 + n_modes, 1 : 1 + n_modes] = np.diag(sigma * np.pi * modes)
    K[1 + n_modes : nb, 1 + n_modes : nb] = np.diag(sigma * np.pi * modes)
    for l, (a, b) in enumerate(tank.electrode_intervals):
        theta = 0.5 * (b - a) * xg + 0.5 * (b + a)
        w = 0.5 * (b - a) * wg * R / z[l]  # ds = R dtheta, divided by z_l
        phi = np.concatenate(
            [np.ones((n_quad, 1)), np.cos(np.outer(theta, modes)), np.sin(np.outer(theta, modes))], axis=1
        )
        K[:nb, :nb] += phi.T @ (w[:, None] * phi)
        col = -(phi.T @ w)
        K[:nb, nb + l] += col
        K[nb + l, :nb] += col
        K[nb + l, nb + l] += w.sum()
    scale = float(np.mean(tank.widths / z))
    K[nb:, nb:] += scale  # grounding: sum U = 0
    rhs = np.zeros((nb + L, currents.shape[0]))
    rhs[nb:] = np.asarray(currents, dtype=float).T
    return np.linalg.solve(K, rhs)[nb:].T
