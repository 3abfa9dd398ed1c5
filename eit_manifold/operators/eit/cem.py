"""The complete electrode model (CEM): assembly, factorisation, forward and adjoint solves.

Unknowns: the P1 potential ``u`` (n nodes) and the electrode potentials ``U`` (L). The system

    [ A(sigma) + B   C           ] [u]   [0]
    [ C^T            D + c e e^T ] [U] = [I]

is symmetric positive definite: the rank-one term ``c e e^T`` (``e`` = ones on the electrode
block) removes the constant null space and, because ``sum(I) = 0``, its solution satisfies the
ground ``sum_l U_l = 0`` exactly (multiply the system by the null vector). Only ``A`` depends on
sigma, linearly: the matrix is assembled from COO triplets whose positions are fixed once
(PETSc ``setPreallocationCOO``) and whose sigma-dependent values are the per-cell P1 stiffness
entries times the cell conductivity, so a new sigma costs one vector product, one
``setValuesCOO`` and one MUMPS Cholesky factorisation, and recompiles nothing. All current
patterns are solved as one multi-right-hand-side solve.

MPI: the mesh may be distributed over a communicator. Each process assembles the entries of
the cells and electrode facets it owns (PETSc sends off-process entries where they belong), the
L electrode unknowns are owned by the last process, and MUMPS factorises in parallel. Every
per-cell array of the public API (conductivities, gradients, Jacobian columns, centroids) is
replicated on all processes in the *canonical* cell order, the order of the cells in the gmsh
model (``original_cell_index``), so serial and parallel runs see the same vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import dolfinx
import dolfinx.la
import numpy as np
import scipy.sparse as sp
from mpi4py import MPI
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
    """The part of a P1 triangle mesh this process owns, as plain arrays.

    Cells are the owned cells in local order; node indices are local (owned nodes first, then
    ghosts); ``global_nodes`` maps them to the global numbering and ``cell_original`` maps owned
    cells to the canonical (gmsh) order.
    """

    coordinates: np.ndarray  # (n_local_nodes, 2), owned then ghost nodes
    cells: np.ndarray  # (n_cells, 3) local node indices of each owned triangle
    areas: np.ndarray  # (n_cells,)
    stiffness: np.ndarray  # (n_cells, 3, 3) int_T grad(phi_i) . grad(phi_j)
    electrode_edges: tuple[np.ndarray, ...]  # per electrode: (n_edges, 2) local node indices
    global_nodes: np.ndarray  # (n_local_nodes,) global index of each local node
    cell_original: np.ndarray  # (n_cells,) canonical index of each owned cell
    n_owned_nodes: int
    n_global_nodes: int
    n_global_cells: int

    @property
    def n_nodes(self) -> int:
        """Number of local nodes (owned and ghost)."""
        return self.coordinates.shape[0]

    @property
    def n_cells(self) -> int:
        """Number of owned cells."""
        return self.cells.shape[0]

    @property
    def centroids(self) -> np.ndarray:
        """Centroids of the owned cells, shape (n_cells, 2), local order."""
        return self.coordinates[self.cells].mean(axis=1)


def p1_discretisation(tank_mesh: TankMesh) -> P1Discretisation:
    """Extract this process's node coordinates, owned triangles and electrode edges."""
    mesh = tank_mesh.mesh
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    tdim = mesh.topology.dim
    n_owned_cells = mesh.topology.index_map(tdim).size_local
    cells = np.asarray(V.dofmap.list, dtype=np.int64)
    coords = V.tabulate_dof_coordinates()[:, :2].copy()
    imap = V.dofmap.index_map
    n_local = imap.size_local + imap.num_ghosts
    global_nodes = imap.local_to_global(np.arange(n_local, dtype=np.int32)).astype(np.int64)
    mesh.topology.create_connectivity(tdim, 0)
    mesh.topology.create_connectivity(tdim - 1, 0)
    c_to_v = mesh.topology.connectivity(tdim, 0).array.reshape(-1, 3)
    vertex_to_dof = np.empty(c_to_v.max() + 1, dtype=np.int64)
    vertex_to_dof[c_to_v.ravel()] = cells.ravel()  # P1: dof i of a cell sits on its vertex i
    f_to_v = mesh.topology.connectivity(tdim - 1, 0).array.reshape(-1, 2)
    n_owned_facets = mesh.topology.index_map(tdim - 1).size_local
    ft = tank_mesh.facet_tags
    owned = ft.indices < n_owned_facets  # a ghost facet is assembled by its owner
    edges = tuple(
        vertex_to_dof[f_to_v[ft.indices[owned & (ft.values == l + 1)]]] for l in range(tank_mesh.tank.n_electrodes)
    )
    cells = cells[:n_owned_cells]
    p = coords[cells]  # (n_cells, 3, 2)
    jac = np.stack([p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]], axis=2)  # columns are edge vectors
    det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
    inv = np.linalg.inv(jac)  # rows: gradients of barycentric coordinates 1 and 2
    ref_grads = np.array([[-1.0, -1.0], [1.0, 0.0], [0.0, 1.0]])
    grads = np.einsum("ik,ckd->cid", ref_grads, inv)  # (n_cells, 3, 2)
    areas = 0.5 * np.abs(det)
    stiffness = areas[:, None, None] * np.einsum("cid,cjd->cij", grads, grads)
    original = np.asarray(mesh.topology.original_cell_index[:n_owned_cells], dtype=np.int64)
    return P1Discretisation(
        coords, cells, areas, stiffness, edges, global_nodes, original,
        imap.size_local, imap.size_global, mesh.topology.index_map(tdim).size_global,
    )


def gather_cells(comm: MPI.Comm, cell_original: np.ndarray, values: np.ndarray, n_global: int) -> np.ndarray:
    """Assemble per-owned-cell values (n_owned, ...) into a canonical array on every process."""
    if comm.size == 1:
        out = np.empty((n_global, *values.shape[1:]), dtype=values.dtype)
        out[cell_original] = values
        return out
    idx = np.concatenate(comm.allgather(cell_original))
    out = np.empty((n_global, *values.shape[1:]), dtype=values.dtype)
    out[idx] = np.concatenate(comm.allgather(np.ascontiguousarray(values)))
    return out


class CEMSystem:
    """The assembled CEM operator of one mesh: builds and factorises K(sigma) for any sigma.

    Parameters
    ----------
    tank_mesh : TankMesh
        Mesh with electrode facet tags; its tank provides the contact impedances.
    """

    def __init__(self, tank_mesh: TankMesh):
        self.tank = tank_mesh.tank
        self.comm: MPI.Comm = tank_mesh.comm
        self.disc = disc = p1_discretisation(tank_mesh)
        L = self.tank.n_electrodes
        self.n_electrodes = L
        self.n_nodes = disc.n_global_nodes
        self.size = disc.n_global_nodes + L
        last = self.comm.rank == self.comm.size - 1
        # PETSc rows: the owned nodes (contiguous in the global numbering), then on the last
        # process the L electrode unknowns, numbered after all nodes.
        self.n_local_rows = disc.n_owned_nodes + (L if last else 0)
        z = self.tank.impedances
        g = disc.global_nodes
        cells = g[disc.cells]
        stiff_rows = np.repeat(cells, 3, axis=1).ravel()
        stiff_cols = np.tile(cells, (1, 3)).ravel()
        rows, cols, vals = [], [], []
        local_lengths = np.zeros(L)
        mass = np.array([[2.0, 1.0], [1.0, 2.0]]) / 6.0
        for l, e in enumerate(disc.electrode_edges):
            h = np.linalg.norm(disc.coordinates[e[:, 0]] - disc.coordinates[e[:, 1]], axis=1)
            local_lengths[l] = h.sum()
            ge = g[e]
            rows += [np.repeat(ge, 2, axis=1).ravel(), ge.ravel(), np.full(ge.size, self.n_nodes + l)]
            cols += [np.tile(ge, (1, 2)).ravel(), np.full(ge.size, self.n_nodes + l), ge.ravel()]
            c_vals = np.repeat(-h / (2 * z[l]), 2)
            vals += [(h[:, None, None] * mass / z[l]).ravel(), c_vals, c_vals]
        self.electrode_lengths = self.comm.allreduce(local_lengths, op=MPI.SUM)
        if self.comm.rank == 0:
            # D plus the grounding term, scaled like D so it does not hurt the conditioning.
            c = float(np.mean(self.electrode_lengths / z))
            er, ec = (a.ravel() + self.n_nodes for a in np.meshgrid(np.arange(L), np.arange(L), indexing="ij"))
            rows.append(er)
            cols.append(ec)
            vals.append((np.diag(self.electrode_lengths / z) + c * np.ones((L, L))).ravel())
        self._stiffness_values = disc.stiffness.reshape(-1, 9)
        self._constant_values = np.concatenate(vals) if vals else np.zeros(0)
        all_rows = np.concatenate([stiff_rows, *rows]).astype(PETSc.IntType)
        all_cols = np.concatenate([stiff_cols, *cols]).astype(PETSc.IntType)
        self._template = PETSc.Mat().create(self.comm)
        self._template.setSizes(((self.n_local_rows, self.size), (self.n_local_rows, self.size)))
        self._template.setType("aij")
        self._template.setPreallocationCOO(all_rows, all_cols)
        self._row_start = self.comm.exscan(self.n_local_rows) or 0
        self.centroids = self.gather_cells(disc.centroids)
        # Ghost updates of solution fields (distributed meshes only): one function space and one
        # vector per block size, made once (each dolfinx vector builds a scatterer with its own MPI
        # neighbourhood communicators; no need to do that on every solve).
        self._scatter_space = (dolfinx.fem.functionspace(tank_mesh.mesh, ("Lagrange", 1))
                               if self.comm.size > 1 else None)
        self._scatter_vectors: dict[int, dolfinx.la.Vector] = {}

    @property
    def n_cells(self) -> int:
        """Global number of cells (length of a conductivity vector)."""
        return self.disc.n_global_cells

    def gather_cells(self, values: np.ndarray) -> np.ndarray:
        """Per-owned-cell values (n_owned, ...) -> canonical array (n_cells, ...) on every process."""
        return gather_cells(self.comm, self.disc.cell_original, values, self.n_cells)

    def local_cells(self, sigma: np.ndarray) -> np.ndarray:
        """The owned cells' entries of a canonical per-cell vector, in local order."""
        return sigma[self.disc.cell_original]

    def petsc_matrix(self, sigma: np.ndarray) -> PETSc.Mat:
        """The system matrix K(sigma) (grounded, SPD) as a PETSc matrix on the mesh's communicator."""
        sigma = check_conductivity(sigma, self.n_cells)
        values = np.concatenate([(self._stiffness_values * self.local_cells(sigma)[:, None]).ravel(),
                                 self._constant_values])
        mat = self._template.duplicate(copy=False)  # keeps the COO pattern; no new symbolic work
        mat.setValuesCOO(values.astype(PETSc.ScalarType), addv=PETSc.InsertMode.INSERT_VALUES)
        mat.assemble()
        return mat

    def matrix(self, sigma: np.ndarray) -> sp.csr_matrix:
        """K(sigma) as a SciPy CSR matrix (serial only; for inspection and tests)."""
        if self.comm.size > 1:
            raise RuntimeError("matrix() gathers nothing: use petsc_matrix() on a distributed mesh")
        mat = self.petsc_matrix(sigma)
        indptr, indices, data = mat.getValuesCSR()
        mat.destroy()
        return sp.csr_matrix((data, indices, indptr), shape=(self.size, self.size))

    def factorize(self, sigma: np.ndarray) -> CEMFactorization:
        """Assemble and factorise K(sigma) once; the result solves any number of patterns."""
        sigma = check_conductivity(sigma, self.n_cells)
        return CEMFactorization(self, sigma, _CholeskySolver(self.petsc_matrix(sigma)))

    def electrode_rhs(self, values: np.ndarray) -> np.ndarray:
        """This process's rows of the right-hand sides [0; values_p] for values (P, L): (n_local_rows, P)."""
        values = np.asarray(values, dtype=float)
        if values.ndim != 2 or values.shape[1] != self.n_electrodes:
            raise ValueError(f"electrode values must have shape (P, {self.n_electrodes}), got {values.shape}")
        rhs = np.zeros((self.n_local_rows, values.shape[0]))
        if self.n_local_rows > self.disc.n_owned_nodes:
            rhs[self.disc.n_owned_nodes :] = values.T
        return rhs

    def split_solution(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local solution rows (n_local_rows, P) -> node fields with ghosts (P, n_local_nodes) and U (P, L).

        U lives on the last process and is broadcast; ghost node values come from their owners.
        """
        P = x.shape[1]
        n_owned = self.disc.n_owned_nodes
        U = self.comm.bcast(x[n_owned:].T.copy() if self.comm.rank == self.comm.size - 1 else None,
                            root=self.comm.size - 1)
        if self.comm.size == 1:
            return x[:n_owned].T.copy(), U
        vec = self._scatter_vectors.get(P)
        if vec is None:
            vec = self._scatter_vectors[P] = dolfinx.la.vector(self._scatter_space.dofmap.index_map, bs=P)
        vec.array.reshape(-1, P)[:n_owned] = x[:n_owned]
        vec.scatter_forward()
        return vec.array.reshape(-1, P).T.copy(), U

    def cell_bilinear(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Canonical per-cell sums ``sum_p left_p^T (dK/dsigma_T) right_p`` for node fields (P, n_local_nodes).

        This is the derivative of ``sum_p left_p^T K(sigma) right_p`` with respect to each
        cell conductivity, the core of every adjoint gradient.
        """
        cells = self.disc.cells
        # (cells, 3, P) gathers and one batched matmul: ~1.5x faster than a three-operand einsum
        stiff_right = np.matmul(self.disc.stiffness, np.ascontiguousarray(right.T)[cells])
        local = np.einsum("cip,cip->c", np.ascontiguousarray(left.T)[cells], stiff_right)
        return self.gather_cells(local)


@dataclass
class CEMSolution:
    """Solution of the CEM for P current patterns."""

    potentials: np.ndarray  # (P, n_local_nodes) nodal potentials u_p on this process (with ghosts)
    electrode_potentials: np.ndarray  # (P, L) grounded electrode potentials U_p (replicated)


class _CholeskySolver:
    """Sparse Cholesky factorisation (MUMPS through PETSc) with multi-right-hand-side solves.

    MUMPS' factorisation is ~3x and its 16-column solve ~10x faster than SciPy's SuperLU on the
    default mesh, and it runs in parallel on a distributed matrix.
    """

    def __init__(self, matrix: PETSc.Mat):
        self._mat = matrix
        self._comm = matrix.getComm()
        self._ksp = PETSc.KSP().create(self._comm)
        self._ksp.setOperators(matrix)
        self._ksp.setType("preonly")
        pc = self._ksp.getPC()
        pc.setType("cholesky")
        pc.setFactorSolverType("mumps")
        pc.setFactorSetUpSolverType()
        self._factor = pc.getFactorMatrix()
        # Approximate minimum fill ordering: 3x faster analysis+factorisation than MUMPS' automatic
        # choice on these 2-D meshes, serial and on 2 processes, with the same or less fill.
        self._factor.setMumpsIcntl(7, 2)
        self._ksp.setUp()

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solve K X = rhs for this process's rows of rhs (n_local_rows, P); returns the same rows of X."""
        n_local, P = rhs.shape
        n_global = self._mat.getSize()[0]
        array = np.asfortranarray(rhs, dtype=PETSc.ScalarType)
        b = PETSc.Mat().createDense(((n_local, n_global), (PETSc.DECIDE, P)), array=array, comm=self._comm)
        x = b.duplicate()
        self._factor.matSolve(b, x)
        out = x.getDenseArray().copy()
        b.destroy()
        x.destroy()
        return out

    def __del__(self) -> None:
        # Free the MUMPS factors now rather than at interpreter exit: bounded memory over many calls.
        # Every PETSc object must be destroyed explicitly, the factor matrix first: petsc4py defers
        # freeing parallel objects that Python collects (PETSc.garbage_cleanup), and a factor left to
        # it keeps MUMPS' 13 duplicated communicators per factorisation, which exhausted MPICH's 2048
        # context ids in the 15th step of a two-process reconstruction.
        for obj in ("_factor", "_ksp", "_mat"):
            if hasattr(self, obj):
                getattr(self, obj).destroy()


class CEMFactorization:
    """K(sigma) factorised once; forward solves, vector-Jacobian products and Jacobians reuse it.

    Every electrode right-hand side [0; v] is a combination of the L unit ones [0; e_l], so when
    a solve has at least L right-hand sides it is cheaper to solve the L unit problems once and
    combine them: the forward solve then costs L back-substitutions for any number P >= L of
    patterns, and the adjoint of a vector-Jacobian product or a Jacobian costs none at all.
    """

    def __init__(self, system: CEMSystem, sigma: np.ndarray, solver: _CholeskySolver):
        self.system = system
        self.sigma = sigma
        self._solver = solver
        self._units: tuple[np.ndarray, np.ndarray] | None = None

    def _direct(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.system.split_solution(self._solver.solve(self.system.electrode_rhs(values)))

    def unit_solutions(self) -> tuple[np.ndarray, np.ndarray]:
        """Node fields (L, n_local_nodes) and electrode potentials (L, L) for the unit right-hand sides."""
        if self._units is None:
            self._units = self._direct(np.eye(self.system.n_electrodes))
        return self._units

    def _solve_electrode(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(values, dtype=float)
        if self._units is None and not (values.ndim == 2 and values.shape[0] >= self.system.n_electrodes):
            return self._direct(values)
        if values.ndim != 2 or values.shape[1] != self.system.n_electrodes:
            raise ValueError(f"electrode values must have shape (P, {self.system.n_electrodes}), got {values.shape}")
        nodes, electrodes = self.unit_solutions()
        return values @ nodes, values @ electrodes

    def solve(self, currents: np.ndarray) -> CEMSolution:
        """Solve for current patterns of shape (P, L) (each row summing to zero)."""
        u, U = self._solve_electrode(currents)
        return CEMSolution(potentials=u, electrode_potentials=U)

    def electrode_adjoint(self, solution: CEMSolution, grad_electrode: np.ndarray) -> np.ndarray:
        """Gradient with respect to sigma of ``sum_p <grad_electrode_p, U_p>``, shape (n_cells,).

        lambda_p = K^{-1} [0; g_p] (K is symmetric; a combination of the unit solutions when they
        exist, else one back-substitution per pattern), then dJ/dsigma_T = -sum_p lambda_p^T (dK/dsigma_T) u_p.
        """
        lam, _ = self._solve_electrode(grad_electrode)
        return -self.system.cell_bilinear(lam, solution.potentials)

    def electrode_jacobian(self, solution: CEMSolution, measurement: np.ndarray) -> np.ndarray:
        """Jacobian of the measurements ``M U_p`` w.r.t. sigma, shape (P, M, n_cells).

        One adjoint field per measurement row (not per pattern).
        """
        lam, _ = self._solve_electrode(measurement)  # (M, n_local_nodes)
        cells = self.system.disc.cells
        stiff_u = np.matmul(self.system.disc.stiffness, np.ascontiguousarray(solution.potentials.T)[cells])
        local = -np.matmul(np.ascontiguousarray(lam.T)[cells].transpose(0, 2, 1), stiff_u)  # (cells, M, P)
        return np.moveaxis(self.system.gather_cells(local), 0, -1).transpose(1, 0, 2)
