"""The complete electrode model (CEM): assembly, factorisation, forward and adjoint solves.

Unknowns: the P1 potential ``u`` (n nodes) and the electrode potentials ``U`` (L). The system

    [ A(sigma) + B   C     ] [u]   [0]
    [ C^T            D + c e e^T ] [U] = [I]

is symmetric positive definite: the rank-one term ``c e e^T`` (``e`` = ones on the electrode
block) removes the constant null space and, because ``sum(I) = 0``, its solution satisfies the
ground ``sum_l U_l = 0`` exactly (multiply the system by the null vector). Only ``A`` depends on
sigma, linearly: its CSR values are ``S @ sigma`` for a sparse matrix ``S`` built once from the
per-cell P1 stiffness matrices, so a new sigma costs one sparse mat-vec and one factorisation and
recompiles nothing. All current patterns are solved as one multi-right-hand-side solve.
"""

from __future__ import annotations

from dataclasses import dataclass

import dolfinx
import dolfinx_solver  # noqa: F401,I001
import numpy as np
import scipy.sparse as sp
from petsc4py import PETSc

from eit_manifold.operators.eit.mesh import TankMesh


def check_conductivity(sigma: np.ndarray, n_cells: int) -> np.ndarray:
    """Validate a per-cell conductivity: shape (n_cells,), finite and positive.

    Raises
    ------
    ValueError
        Naming the bad shape or the first bad value and its cell.
    """
    sigma = np.asarray(sigma, dtype=float)
    if sigma.shape != (n_cells,):
        raise ValueError(f"conductivity must have shape ({n_cells},) (one value per cell), got {sigma.shape}")
    bad = ~np.isfinite(sigma) | (sigma <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"conductivity must be positive and finite: cell {i} has {float(sigma[i])!r} "
            f"({int(bad.sum())} bad value(s) in all)"
        )
    return sigma


@dataclass(frozen=True)
class P1Discretisation:
    """Geometry of a P1 triangle mesh as plain arrays (local to this process)."""

    coordinates: np.ndarray  # (n_nodes, 2) node coordinates, in dof order
    cells: np.ndarray  # (n_cells, 3) node indices of each triangle
    areas: np.ndarray  # (n_cells,)
    stiffness: np.ndarray  # (n_cells, 3, 3) int_T grad(phi_i) . grad(phi_j)
    electrode_edges: tuple[np.ndarray, ...]  # per electrode: (n_edges, 2) node indices

    @property
    def n_nodes(self) -> int:
        return self.coordinates.shape[0]

    @property
    def n_cells(self) -> int:
        return self.cells.shape[0]

    @property
    def centroids(self) -> np.ndarray:
        """Cell centroids, shape (n_cells, 2)."""
        return self.coordinates[self.cells].mean(axis=1)


def p1_discretisation(tank_mesh: TankMesh) -> P1Discretisation:
    """Extract node coordinates, triangles and electrode edges from a dolfinx mesh (serial)."""
    mesh = tank_mesh.mesh
    if mesh.comm.size > 1:
        raise NotImplementedError("p1_discretisation works on a mesh held by one process")
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    cells = np.asarray(V.dofmap.list, dtype=np.int64)
    coords = V.tabulate_dof_coordinates()[:, :2].copy()
    tdim = mesh.topology.dim
    mesh.topology.create_connectivity(tdim, 0)
    mesh.topology.create_connectivity(tdim - 1, 0)
    c_to_v = mesh.topology.connectivity(tdim, 0).array.reshape(-1, 3)
    vertex_to_dof = np.empty(mesh.topology.index_map(0).size_local, dtype=np.int64)
    vertex_to_dof[c_to_v.ravel()] = cells.ravel()  # P1: dof i of a cell sits on its vertex i
    f_to_v = mesh.topology.connectivity(tdim - 1, 0).array.reshape(-1, 2)
    ft = tank_mesh.facet_tags
    edges = tuple(
        vertex_to_dof[f_to_v[ft.indices[ft.values == l + 1]]] for l in range(tank_mesh.tank.n_electrodes)
    )
    p = coords[cells]  # (n_cells, 3, 2)
    jac = np.stack([p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]], axis=2)  # columns are edge vectors
    det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
    inv = np.linalg.inv(jac)  # rows: gradients of barycentric coordinates 1 and 2
    ref_grads = np.array([[-1.0, -1.0], [1.0, 0.0], [0.0, 1.0]])
    grads = np.einsum("ik,ckd->cid", ref_grads, inv)  # (n_cells, 3, 2)
    areas = 0.5 * np.abs(det)
    stiffness = areas[:, None, None] * np.einsum("cid,cjd->cij", grads, grads)
    return P1Discretisation(coords, cells, areas, stiffness, edges)


class _PatternIndex:
    """Maps (row, col) entries onto the positions of a fixed CSR sparsity pattern."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, n: int):
        keys = np.unique(rows * n + cols)
        self.n = n
        self.keys = keys
        self.indptr = np.searchsorted(keys // n, np.arange(n + 1)).astype(np.int64)
        self.indices = (keys % n).astype(np.int64)

    def positions(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.keys, rows * self.n + cols)

    def matrix(self, data: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((data, self.indices, self.indptr), shape=(self.n, self.n))


class CEMSystem:
    """The assembled CEM operator of one mesh: builds and factorises K(sigma) for any sigma.

    Parameters
    ----------
    tank_mesh : TankMesh
        Mesh with electrode facet tags; its tank provides the contact impedances.
    """

    def __init__(self, tank_mesh: TankMesh):
        self.tank = tank_mesh.tank
        self.disc = p1_discretisation(tank_mesh)
        disc = self.disc
        n, L = disc.n_nodes, self.tank.n_electrodes
        self.n_nodes, self.n_electrodes = n, L
        self.size = n + L
        z = self.tank.impedances
        # Sigma-dependent block: 9 entries per cell.
        cr = np.repeat(disc.cells, 3, axis=1).ravel()
        cc = np.tile(disc.cells, (1, 3)).ravel()
        # Constant blocks B, C, D from the electrode edges (1-D P1 mass and load on each edge).
        br, bc, bv, cr_, cc_, cv = [], [], [], [], [], []
        lengths = np.zeros(L)
        for l, e in enumerate(disc.electrode_edges):
            h = np.linalg.norm(disc.coordinates[e[:, 0]] - disc.coordinates[e[:, 1]], axis=1)
            lengths[l] = h.sum()
            mass = np.array([[2.0, 1.0], [1.0, 2.0]]) / 6.0
            br.append(np.repeat(e, 2, axis=1).ravel())
            bc.append(np.tile(e, (1, 2)).ravel())
            bv.append((h[:, None, None] * mass / z[l]).ravel())
            cr_.append(e.ravel())
            cc_.append(np.full(e.size, n + l))
            cv.append(np.repeat(-h / (2 * z[l]), 2))
        self.electrode_lengths = lengths
        br, bc, bv = np.concatenate(br), np.concatenate(bc), np.concatenate(bv)
        cr_, cc_, cv = np.concatenate(cr_), np.concatenate(cc_), np.concatenate(cv)
        dr, dc = (a.ravel() + n for a in np.meshgrid(np.arange(L), np.arange(L), indexing="ij"))
        # Rank-one grounding term, scaled like D so it does not hurt the conditioning.
        c = float(np.mean(lengths / z))
        dv = (np.diag(lengths / z) + c * np.ones((L, L))).ravel()
        rows = np.concatenate([cr, br, cr_, cc_, dr])
        cols = np.concatenate([cc, bc, cc_, cr_, dc])
        self._pattern = _PatternIndex(rows, cols, self.size)
        nnz = self._pattern.keys.size
        stiff_pos = self._pattern.positions(cr, cc)
        cell_index = np.repeat(np.arange(disc.n_cells), 9)
        self._sigma_to_values = sp.csr_matrix(
            (disc.stiffness.ravel(), (stiff_pos, cell_index)), shape=(nnz, disc.n_cells)
        )
        const_pos = self._pattern.positions(np.concatenate([br, cr_, cc_, dr]), np.concatenate([bc, cc_, cr_, dc]))
        self._constant_values = np.bincount(const_pos, weights=np.concatenate([bv, cv, cv, dv]), minlength=nnz)

    @property
    def n_cells(self) -> int:
        """Number of cells (length of a conductivity vector)."""
        return self.disc.n_cells

    def matrix(self, sigma: np.ndarray) -> sp.csr_matrix:
        """The system matrix K(sigma) (grounded, SPD) as a CSR matrix."""
        sigma = check_conductivity(sigma, self.n_cells)
        return self._pattern.matrix(self._constant_values + self._sigma_to_values @ sigma)

    def factorize(self, sigma: np.ndarray) -> CEMFactorization:
        """Assemble and factorise K(sigma) once; the result solves any number of patterns."""
        sigma = check_conductivity(sigma, self.n_cells)
        return CEMFactorization(self, sigma, _CholeskySolver(self.matrix(sigma)))

    def electrode_rhs(self, values: np.ndarray) -> np.ndarray:
        """Right-hand sides [0; values_p] for values of shape (P, L); returns (N, P)."""
        values = np.asarray(values, dtype=float)
        if values.ndim != 2 or values.shape[1] != self.n_electrodes:
            raise ValueError(
                f"electrode values must have shape (P, {self.n_electrodes}), got {values.shape}"
            )
        rhs = np.zeros((self.size, values.shape[0]))
        rhs[self.n_nodes :] = values.T
        return rhs

    def cell_bilinear(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Per-cell sums ``sum_p left_p^T (dK/dsigma_T) right_p`` for node fields (P, n_nodes).

        This is the derivative of ``sum_p left_p^T K(sigma) right_p`` with respect to each
        cell conductivity, the core of every adjoint gradient.
        """
        cells = self.disc.cells
        return np.einsum("pci,cij,pcj->c", left[:, cells], self.disc.stiffness, right[:, cells], optimize=True)


@dataclass
class CEMSolution:
    """Solution of the CEM for P current patterns."""

    potentials: np.ndarray  # (P, n_nodes) nodal potentials u_p
    electrode_potentials: np.ndarray  # (P, L) grounded electrode potentials U_p


class _CholeskySolver:
    """Sparse Cholesky factorisation (MUMPS through PETSc) with multi-right-hand-side solves.

    MUMPS' factorisation is ~3x and its 16-column solve ~10x faster than SciPy's SuperLU on the
    default mesh (measured in benchmarks/forward.py).
    """

    def __init__(self, matrix: sp.csr_matrix):
        self._mat = PETSc.Mat().createAIJ(
            size=matrix.shape,
            csr=(matrix.indptr.astype(PETSc.IntType), matrix.indices.astype(PETSc.IntType), matrix.data),
            comm=PETSc.COMM_SELF,
        )
        self._mat.assemble()
        self._ksp = PETSc.KSP().create(PETSc.COMM_SELF)
        self._ksp.setOperators(self._mat)
        self._ksp.setType("preonly")
        pc = self._ksp.getPC()
        pc.setType("cholesky")
        pc.setFactorSolverType("mumps")
        self._ksp.setUp()
        self._factor = pc.getFactorMatrix()

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solve K X = rhs for rhs of shape (N, P); returns (N, P)."""
        array = np.asfortranarray(rhs, dtype=PETSc.ScalarType)
        b = PETSc.Mat().createDense(rhs.shape, array=array, comm=PETSc.COMM_SELF)
        x = b.duplicate()
        self._factor.matSolve(b, x)
        out = x.getDenseArray().copy()
        b.destroy()
        x.destroy()
        return out

    def __del__(self) -> None:
        # Free the MUMPS factors now rather than at interpreter exit: bounded memory over many calls.
        for obj in ("_ksp", "_mat"):
            if hasattr(self, obj):
                getattr(self, obj).destroy()


class CEMFactorization:
    """K(sigma) factorised once; forward solves, vector-Jacobian products and Jacobians reuse it."""

    def __init__(self, system: CEMSystem, sigma: np.ndarray, solver: _CholeskySolver):
        self.system = system
        self.sigma = sigma
        self._solver = solver

    def _solve(self, rhs: np.ndarray) -> np.ndarray:
        return self._solver.solve(rhs)

    def solve(self, currents: np.ndarray) -> CEMSolution:
        """Solve for current patterns of shape (P, L) (each row summing to zero)."""
        x = self._solve(self.system.electrode_rhs(currents))
        n = self.system.n_nodes
        return CEMSolution(potentials=x[:n].T.copy(), electrode_potentials=x[n:].T.copy())

    def electrode_adjoint(self, solution: CEMSolution, grad_electrode: np.ndarray) -> np.ndarray:
        """Gradient with respect to sigma of ``sum_p <grad_electrode_p, U_p>``, shape (n_cells,).

        One back-substitution per pattern: lambda_p = K^{-1} [0; g_p] (K is symmetric), then
        dJ/dsigma_T = -sum_p lambda_p^T (dK/dsigma_T) u_p.
        """
        lam = self._solve(self.system.electrode_rhs(grad_electrode))[: self.system.n_nodes].T
        return -self.system.cell_bilinear(lam, solution.potentials)

    def electrode_jacobian(self, solution: CEMSolution, measurement: np.ndarray) -> np.ndarray:
        """Jacobian of the measurements ``M U_p`` w.r.t. sigma, shape (P, M, n_cells).

        Uses one adjoint solve per measurement row (not per pattern).
        """
        lam = self._solve(self.system.electrode_rhs(measurement))[: self.system.n_nodes].T  # (M, n)
        cells = self.system.disc.cells
        return -np.einsum(
            "mci,cij,pcj->pmc", lam[:, cells], self.system.disc.stiffness, solution.potentials[:, cells],
            optimize=True,
        )
