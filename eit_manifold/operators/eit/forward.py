"""The CEM forward model of one tank mesh with fixed current patterns and measurements."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from mpi4py import MPI

from eit_manifold.operators.eit.cem import CEMFactorization, CEMSolution, CEMSystem
from eit_manifold.operators.eit.mesh import TankMesh
from eit_manifold.operators.eit.patterns import injection_patterns, measurement_matrix
from eit_manifold.operators.eit.pixels import pixel_to_cell_matrix, voxel_to_cell_matrix


@dataclass
class ForwardResult:
    """One forward solve: data, and the state an adjoint needs."""

    measurements: np.ndarray  # (P, M)
    solution: CEMSolution
    factorization: CEMFactorization

    @property
    def electrode_potentials(self) -> np.ndarray:
        """Grounded electrode potentials (P, L)."""
        return self.solution.electrode_potentials


class CEMForwardModel:
    """sigma (per cell) -> measurements (P, M) for fixed patterns, with adjoints.

    Parameters
    ----------
    tank_mesh : TankMesh
        The mesh (its tank gives electrodes and contact impedances).
    injection : str or array (P, L)
        Current patterns, see :func:`~eit_manifold.operators.eit.patterns.injection_patterns`.
    measurement : str or array (M, L)
        Measurement matrix, see :func:`~eit_manifold.operators.eit.patterns.measurement_matrix`.
    amplitude : float
        Injected current of the named patterns.
    solver : {"auto", "direct", "iterative"}
        Linear solver of every forward solve (see :meth:`CEMSystem.factorize`).
    """

    def __init__(
        self,
        tank_mesh: TankMesh,
        injection: str | np.ndarray = "adjacent",
        measurement: str | np.ndarray = "adjacent",
        amplitude: float = 1.0,
        solver: str = "auto",
    ):
        self.tank_mesh = tank_mesh
        self.tank = tank_mesh.tank
        self.system = CEMSystem(tank_mesh)
        self.solver = self.system.choose_solver(solver)
        L = self.tank.n_electrodes
        self.currents = injection_patterns(injection, L, amplitude)
        self.measurement_matrix = measurement_matrix(measurement, L)
        self._pixel_maps: dict[tuple[int, int], sp.csr_matrix] = {}

    @property
    def n_cells(self) -> int:
        return self.system.n_cells

    @property
    def data_shape(self) -> tuple[int, int]:
        """(P, M): patterns by measurements."""
        return self.currents.shape[0], self.measurement_matrix.shape[0]

    @property
    def centroids(self) -> np.ndarray:
        """Cell centroids (n_cells, d) in the canonical cell order."""
        return self.system.centroids

    def cell_vertices(self) -> np.ndarray:
        """Vertex coordinates of every cell, (n_cells, d+1, d), canonical order (for plots)."""
        d = self.system.disc
        return self.system.gather_cells(d.coordinates[d.cells])

    @property
    def z_range(self) -> tuple[float, float]:
        """Vertical extent (z_min, z_max) of a 3-D mesh: the height the voxel grids cover."""
        z = self.system.disc.coordinates[:, 2]
        comm = self.system.comm
        return (comm.allreduce(float(z.min()), op=MPI.MIN), comm.allreduce(float(z.max()), op=MPI.MAX))

    def pixel_map(self, image_shape: tuple[int, ...]) -> sp.csr_matrix:
        """The (cached) pixel -> cell matrix (n_cells, H*W) for images on [-R, R]^2, canonical rows.

        On a 3-D mesh ``image_shape`` is a voxel grid (D, H, W) over [-R, R]^2 x :attr:`z_range`
        (:func:`~eit_manifold.operators.eit.pixels.voxel_to_cell_matrix`).
        """
        key = tuple(int(v) for v in image_shape)
        d = self.system.disc
        if len(key) != d.dim:
            raise ValueError(f"a {d.dim}-D mesh takes {'(H, W) images' if d.dim == 2 else '(D, H, W) voxel grids'}, "
                             f"got shape {key}")
        if key not in self._pixel_maps:
            if d.dim == 3:
                local = voxel_to_cell_matrix(d.coordinates, d.cells, key, self.tank.radius, self.z_range).tocoo()
            else:
                local = pixel_to_cell_matrix(d.coordinates, d.cells, key, self.tank.radius).tocoo()
            parts = self.system.comm.allgather((d.cell_original[local.row], local.col, local.data))
            rows, cols, vals = (np.concatenate(a) for a in zip(*parts, strict=True))
            self._pixel_maps[key] = sp.csr_matrix((vals, (rows, cols)), shape=(self.n_cells, int(np.prod(key))))
        return self._pixel_maps[key]

    def solve(self, sigma: np.ndarray) -> ForwardResult:
        """Factorise K(sigma) and solve all patterns in one multi-right-hand-side solve."""
        fac = self.system.factorize(sigma, self.solver)
        sol = fac.solve(self.currents)
        return ForwardResult(sol.electrode_potentials @ self.measurement_matrix.T, sol, fac)

    def measurements(self, sigma: np.ndarray) -> np.ndarray:
        """Data (P, M) for the per-cell conductivity ``sigma``."""
        return self.solve(sigma).measurements

    def vjp(self, result: ForwardResult, grad_measurements: np.ndarray) -> np.ndarray:
        """Gradient w.r.t. sigma of ``<grad_measurements, measurements>``; shape (n_cells,)."""
        g = np.asarray(grad_measurements, dtype=float)
        if g.shape != self.data_shape:
            raise ValueError(f"gradient must have the data's shape {self.data_shape}, got {g.shape}")
        return result.factorization.electrode_adjoint(result.solution, g @ self.measurement_matrix)

    def jacobian(self, result: ForwardResult) -> np.ndarray:
        """Jacobian of the measurements w.r.t. sigma, shape (P, M, n_cells)."""
        return result.factorization.electrode_jacobian(result.solution, self.measurement_matrix)
