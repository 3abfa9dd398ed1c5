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
``setValuesCOO`` and one numeric MUMPS Cholesky factorisation (the symbolic analysis, half the
cost of a fresh factorisation on the coarse mesh, is done once per system), and recompiles
nothing. The L unit electrode problems are solved right after, as one multi-right-hand-side
solve, and every later solve (all current patterns, every adjoint) combines them.

MPI: the mesh may be distributed over a communicator. Each process assembles the entries of
the cells and electrode facets it owns (PETSc sends off-process entries where they belong), the
L electrode unknowns are owned by the last process, and MUMPS factorises in parallel. Every
per-cell array of the public API (conductivities, gradients, Jacobian columns, centroids) is
replicated on all processes in the *canonical* cell order, the order of the cells in the gmsh
model (``original_cell_index``), so serial and parallel runs see the same vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dolfinx
import dolfinx.la
import numpy as np
import scipy.sparse as sp
from mpi4py import MPI
from petsc4py import PETSc

from eit_manifold.operators.eit.mesh import TankMesh

SOLVERS = ("auto", "direct", "iterative")
# Threshold of solver="auto" on 3-D meshes (docs/mpi.md, benchmarks/scaling.py, idle machine): MUMPS
# was still 1.4x faster at 101 650 nodes, CG + GAMG 1.6x faster at ~350 000; with this value auto
# stays within 1.44x of the faster solver at every size measured. On 2-D meshes MUMPS was faster
# at every size measured.
ITERATIVE_MIN_NODES_3D = 40_000
#: Cells per block of the per-cell adjoint sums (temporaries of a few MB that stay in cache).
CELL_BLOCK = 16_384
# CG relative residual: the electrode data then agree with the direct solve to ~1e-10 (tested 1e-8).
ITERATIVE_RTOL = 1e-10


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
    """The part of a P1 simplex mesh (triangles or tetrahedra) this process owns, as plain arrays.

    Cells are the owned cells in local order; node indices are local (owned nodes first, then
    ghosts); ``global_nodes`` maps them to the global numbering and ``cell_original`` maps owned
    cells to the canonical (gmsh) order. ``d`` is the dimension (2 or 3): cells have d+1 nodes,
    electrode facets (edges in 2-D, triangles in 3-D) d nodes.
    """

    coordinates: np.ndarray  # (n_local_nodes, d), owned then ghost nodes
    cells: np.ndarray  # (n_cells, d+1) local node indices of each owned simplex
    areas: np.ndarray  # (n_cells,) cell measures (areas in 2-D, volumes in 3-D)
    stiffness: np.ndarray  # (n_cells, d+1, d+1) int_T grad(phi_i) . grad(phi_j)
    electrode_edges: tuple[np.ndarray, ...]  # per electrode: (n_facets, d) local node indices
    global_nodes: np.ndarray  # (n_local_nodes,) global index of each local node
    cell_original: np.ndarray  # (n_cells,) canonical index of each owned cell
    n_owned_nodes: int
    n_global_nodes: int
    n_global_cells: int

    @property
    def dim(self) -> int:
        """Spatial dimension d."""
        return self.coordinates.shape[1]

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
        """Centroids of the owned cells, shape (n_cells, d), local order."""
        return self.coordinates[self.cells].mean(axis=1)

    def facet_measures(self, facets: np.ndarray) -> np.ndarray:
        """Lengths (2-D) or areas (3-D) of boundary facets given as (n, d) local node indices."""
        p = self.coordinates[facets]
        if self.dim == 2:
            return np.linalg.norm(p[:, 1] - p[:, 0], axis=1)
        return 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)


def simplex_stiffness(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Measures (n,) and P1 stiffness matrices (n, d+1, d+1) of simplices given by points (n, d+1, d)."""
    d = points.shape[2]
    jac = np.swapaxes(points[:, 1:] - points[:, :1], 1, 2)  # (n, d, d): columns are edge vectors
    det = np.linalg.det(jac)
    inv = np.linalg.inv(jac)  # rows: gradients of barycentric coordinates 1..d
    ref_grads = np.vstack([-np.ones((1, d)), np.eye(d)])  # (d+1, d)
    grads = np.einsum("ik,ckd->cid", ref_grads, inv)  # (n, d+1, d)
    measures = np.abs(det) / math.factorial(d)
    return measures, measures[:, None, None] * np.einsum("cid,cjd->cij", grads, grads)


def facet_mass(d: int) -> np.ndarray:
    """P1 mass matrix of a (d-1)-simplex of unit measure: (1 + delta_ij) / (d (d+1))."""
    return (np.ones((d, d)) + np.eye(d)) / (d * (d + 1))


def p1_discretisation(tank_mesh: TankMesh) -> P1Discretisation:
    """Extract this process's node coordinates, owned cells and electrode facets (2-D or 3-D)."""
    mesh = tank_mesh.mesh
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    tdim = mesh.topology.dim
    n_owned_cells = mesh.topology.index_map(tdim).size_local
    cells = np.asarray(V.dofmap.list, dtype=np.int64)
    coords = V.tabulate_dof_coordinates()[:, :tdim].copy()
    imap = V.dofmap.index_map
    n_local = imap.size_local + imap.num_ghosts
    global_nodes = imap.local_to_global(np.arange(n_local, dtype=np.int32)).astype(np.int64)
    mesh.topology.create_connectivity(tdim, 0)
    mesh.topology.create_connectivity(tdim - 1, 0)
    c_to_v = mesh.topology.connectivity(tdim, 0).array.reshape(-1, tdim + 1)
    vertex_to_dof = np.empty(c_to_v.max() + 1, dtype=np.int64)
    vertex_to_dof[c_to_v.ravel()] = cells.ravel()  # P1: dof i of a cell sits on its vertex i
    f_to_v = mesh.topology.connectivity(tdim - 1, 0).array.reshape(-1, tdim)
    n_owned_facets = mesh.topology.index_map(tdim - 1).size_local
    ft = tank_mesh.facet_tags
    owned = ft.indices < n_owned_facets  # a ghost facet is assembled by its owner
    edges = tuple(
        vertex_to_dof[f_to_v[ft.indices[owned & (ft.values == l + 1)]]] for l in range(tank_mesh.tank.n_electrodes)
    )
    cells = cells[:n_owned_cells]
    areas, stiffness = simplex_stiffness(coords[cells])
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


def _coo_template(comm: MPI.Comm, n_local: int, n_global: int, rows: np.ndarray, cols: np.ndarray) -> PETSc.Mat:
    """A square AIJ matrix with a fixed COO pattern (global indices); values are set per sigma."""
    mat = PETSc.Mat().create(comm)
    mat.setSizes(((n_local, n_global), (n_local, n_global)))
    mat.setType("aij")
    mat.setPreallocationCOO(rows.astype(PETSc.IntType), cols.astype(PETSc.IntType))
    return mat


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
        k = cells.shape[1]  # nodes per cell
        stiff_rows = np.repeat(cells, k, axis=1).ravel()
        stiff_cols = np.tile(cells, (1, k)).ravel()
        # Electrode terms: B (node-node, 1/z_l times the facet mass), C (node-electrode) and D.
        b_rows, b_cols, b_vals, c_rows, c_cols, c_vals = [], [], [], [], [], []
        local_lengths = np.zeros(L)
        d = disc.dim
        mass = facet_mass(d)
        for l, e in enumerate(disc.electrode_edges):
            h = disc.facet_measures(e)
            local_lengths[l] = h.sum()
            ge = g[e]
            b_rows.append(np.repeat(ge, d, axis=1).ravel())
            b_cols.append(np.tile(ge, (1, d)).ravel())
            b_vals.append((h[:, None, None] * mass / z[l]).ravel())
            c_rows.append(ge.ravel())
            c_cols.append(np.full(ge.size, l))
            c_vals.append(np.repeat(-h / (d * z[l]), d))  # -int_F phi_i / z_l: each P1 function integrates to |F|/d
        # electrode_lengths: lengths in 2-D, areas in 3-D (the measure |e_l| of each electrode)
        self.electrode_lengths = self.comm.allreduce(local_lengths, op=MPI.SUM)
        # D plus the grounding term, scaled like D so it does not hurt the conditioning.
        c = float(np.mean(self.electrode_lengths / z))
        self.electrode_block = np.diag(self.electrode_lengths / z) + c * np.ones((L, L))
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
        self._b = (cat(b_rows), cat(b_cols), cat(b_vals))
        self._c = (cat(c_rows), cat(c_cols), cat(c_vals))
        self._stiff_pattern = (stiff_rows, stiff_cols)
        self._stiffness_values = disc.stiffness.reshape(len(cells), -1)
        rows = [stiff_rows, self._b[0], self._c[0], self._c[1] + self.n_nodes]
        cols = [stiff_cols, self._b[1], self._c[1] + self.n_nodes, self._c[0]]
        vals = [self._b[2], self._c[2], self._c[2]]
        if self.comm.rank == 0:
            er, ec = (a.ravel() + self.n_nodes for a in np.meshgrid(np.arange(L), np.arange(L), indexing="ij"))
            rows.append(er)
            cols.append(ec)
            vals.append(self.electrode_block.ravel())
        self._constant_values = np.concatenate(vals)
        self._template = _coo_template(self.comm, self.n_local_rows, self.size, np.concatenate(rows),
                                       np.concatenate(cols))
        self._node_template: PETSc.Mat | None = None
        self._row_start = self.comm.exscan(self.n_local_rows) or 0
        self.centroids = self.gather_cells(disc.centroids)
        # Ghost updates of solution fields (distributed meshes only): one function space and one
        # vector per block size, made once (each dolfinx vector builds a scatterer with its own MPI
        # neighbourhood communicators; no need to do that on every solve).
        self._scatter_space = (dolfinx.fem.functionspace(tank_mesh.mesh, ("Lagrange", 1))
                               if self.comm.size > 1 else None)
        self._scatter_vectors: dict[int, dolfinx.la.Vector] = {}
        self._cholesky: _CholeskySolver | None = None  # made on the first direct factorisation

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
        mat = self._template.duplicate(copy=False)  # keeps the COO pattern; no new symbolic work
        self.set_values(mat, sigma)
        return mat

    def set_values(self, mat: PETSc.Mat, sigma: np.ndarray) -> None:
        """Overwrite the values of ``mat`` (a matrix with this system's COO pattern) with K(sigma)."""
        sigma = check_conductivity(sigma, self.n_cells)
        values = np.concatenate([(self._stiffness_values * self.local_cells(sigma)[:, None]).ravel(),
                                 self._constant_values])
        mat.setValuesCOO(values.astype(PETSc.ScalarType), addv=PETSc.InsertMode.INSERT_VALUES)
        mat.assemble()

    def matrix(self, sigma: np.ndarray) -> sp.csr_matrix:
        """K(sigma) as a SciPy CSR matrix (serial only; for inspection and tests)."""
        if self.comm.size > 1:
            raise RuntimeError("matrix() gathers nothing: use petsc_matrix() on a distributed mesh")
        mat = self.petsc_matrix(sigma)
        indptr, indices, data = mat.getValuesCSR()
        mat.destroy()
        return sp.csr_matrix((data, indices, indptr), shape=(self.size, self.size))

    def node_matrix(self, sigma: np.ndarray) -> PETSc.Mat:
        """The potential block A(sigma) + B (SPD: z_l > 0) as a PETSc matrix, rows the owned nodes."""
        sigma = check_conductivity(sigma, self.n_cells)
        if self._node_template is None:
            rows = np.concatenate([self._stiff_pattern[0], self._b[0]])
            cols = np.concatenate([self._stiff_pattern[1], self._b[1]])
            self._node_template = _coo_template(self.comm, self.disc.n_owned_nodes, self.n_nodes, rows, cols)
        values = np.concatenate([(self._stiffness_values * self.local_cells(sigma)[:, None]).ravel(), self._b[2]])
        mat = self._node_template.duplicate(copy=False)
        mat.setValuesCOO(values.astype(PETSc.ScalarType), addv=PETSc.InsertMode.INSERT_VALUES)
        mat.assemble()
        return mat

    def coupling_columns(self) -> np.ndarray:
        """The owned rows of the node-electrode block C, dense (n_owned_nodes, L); constant in sigma."""
        if getattr(self, "_c_local", None) is None:
            rows, cols, vals = self._c
            if self.comm.size == 1:
                out = np.zeros((self.n_nodes, self.n_electrodes))
                np.add.at(out, (rows, cols), vals)
            else:  # facets assemble into nodes another process may own: PETSc moves those entries
                out = np.empty((self.disc.n_owned_nodes, self.n_electrodes))
                for l in range(self.n_electrodes):
                    vec = PETSc.Vec().createMPI((self.disc.n_owned_nodes, self.n_nodes), comm=self.comm)
                    vec.set(0.0)
                    mine = cols == l
                    vec.setValues(rows[mine].astype(PETSc.IntType), vals[mine], addv=PETSc.InsertMode.ADD_VALUES)
                    vec.assemble()
                    out[:, l] = vec.getArray()
                    vec.destroy()
            self._c_local = out
        return self._c_local

    def choose_solver(self, solver: str = "auto") -> str:
        """Resolve ``auto`` to ``direct`` or ``iterative`` (see :data:`ITERATIVE_MIN_NODES_3D`)."""
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}")
        if solver != "auto":
            return solver
        return "iterative" if self.disc.dim == 3 and self.n_nodes >= ITERATIVE_MIN_NODES_3D else "direct"

    def factorize(self, sigma: np.ndarray, solver: str = "auto", rtol: float = ITERATIVE_RTOL) -> CEMFactorization:
        """Assemble and factorise K(sigma) once; the result solves any number of patterns.

        Parameters
        ----------
        sigma : array (n_cells,)
            Per-cell conductivity, canonical order.
        solver : {"auto", "direct", "iterative"}
            MUMPS Cholesky of the whole system, or CG + GAMG on the potential block with the
            electrode unknowns eliminated (:class:`_SchurCGSolver`); ``auto`` picks by mesh size.
        rtol : float
            Relative residual of the CG solves (iterative only).
        """
        sigma = check_conductivity(sigma, self.n_cells)
        if self.choose_solver(solver) == "iterative":
            return CEMFactorization(self, sigma, solver=_SchurCGSolver(self, sigma, rtol))
        if self._cholesky is None:
            self._cholesky = _CholeskySolver(self)
        units = self.split_solution(self._cholesky.unit_solutions(sigma))
        return CEMFactorization(self, sigma, units=units)

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
        cells, stiffness = self.disc.cells, self.disc.stiffness
        left_t, right_t = np.ascontiguousarray(left.T), np.ascontiguousarray(right.T)
        local = np.empty(cells.shape[0])
        # (cells, d+1, P) gathers and one batched matmul (~1.5x faster than a three-operand einsum),
        # in blocks of cells: whole-mesh temporaries (~1 GB each at 1.9M tetrahedra) made the VJP
        # memory-bound, blocks that stay in cache are 5-10x faster with the same sums.
        for s in range(0, cells.shape[0], CELL_BLOCK):
            c = cells[s:s + CELL_BLOCK]
            stiff_right = np.matmul(stiffness[s:s + CELL_BLOCK], right_t[c])
            local[s:s + CELL_BLOCK] = np.einsum("cip,cip->c", left_t[c], stiff_right)
        return self.gather_cells(local)


@dataclass
class CEMSolution:
    """Solution of the CEM for P current patterns."""

    potentials: np.ndarray  # (P, n_local_nodes) nodal potentials u_p on this process (with ghosts)
    electrode_potentials: np.ndarray  # (P, L) grounded electrode potentials U_p (replicated)


class _CholeskySolver:
    """Sparse Cholesky factorisation (MUMPS through PETSc) of K(sigma), one per system, reused.

    MUMPS' factorisation is ~3x and its 16-column solve ~10x faster than SciPy's SuperLU on the
    default mesh, and it runs in parallel on a distributed matrix. The symbolic analysis
    (ordering, elimination tree) depends only on the sparsity pattern, so it is done once, on
    K(1); each new sigma overwrites the matrix values and refactorises numerically (coarse mesh:
    4.4 ms against 8.9 ms for a fresh factorisation). The analysis is always that of K(1), so a
    factorisation depends on its sigma alone, not on which conductivities came before (chains
    spread over MPI processes see different sequences and must get the same numbers).

    Only :meth:`unit_solutions` uses the factor, right after refactorising: a caller that needs
    solves later keeps those (every electrode right-hand side is a combination of them).
    """

    def __init__(self, system: CEMSystem):
        self._system = system
        self._mat = system.petsc_matrix(np.ones(system.n_cells))
        self._comm = self._mat.getComm()
        self._ksp = PETSc.KSP().create(self._comm)
        self._ksp.setOperators(self._mat)
        self._ksp.setType("preonly")
        pc = self._ksp.getPC()
        pc.setType("cholesky")
        pc.setFactorSolverType("mumps")
        pc.setFactorSetUpSolverType()
        # Approximate minimum fill ordering: 3x faster analysis+factorisation than MUMPS' automatic
        # choice on these 2-D meshes, serial and on 2 processes, with the same or less fill.
        # On 3-D meshes nested dissection (METIS) fills much less.
        pc.getFactorMatrix().setMumpsIcntl(7, 5 if system.disc.dim == 3 else 2)
        self._ksp.setUp()
        # The unit right-hand sides [0; e_l] and their solutions, dense, made once.
        rhs = np.asfortranarray(system.electrode_rhs(np.eye(system.n_electrodes)), dtype=PETSc.ScalarType)
        n_local, L = rhs.shape
        self._rhs_array = rhs  # PETSc uses this memory without copying it: keep it alive
        self._rhs = PETSc.Mat().createDense(((n_local, system.size), (PETSc.DECIDE, L)), array=rhs,
                                            comm=self._comm)
        self._x = self._rhs.duplicate()

    def unit_solutions(self, sigma: np.ndarray) -> np.ndarray:
        """This process's rows (n_local_rows, L) of K(sigma)^{-1} [0; I]: refactorise, then one solve."""
        self._system.set_values(self._mat, sigma)
        # Same matrix object, new values: PETSc redoes only the numeric factorisation.
        self._ksp.setOperators(self._mat)
        self._ksp.setUp()
        self._ksp.getPC().getFactorMatrix().matSolve(self._rhs, self._x)
        return self._x.getDenseArray().copy()

    def __del__(self) -> None:
        # Free the MUMPS factors explicitly, the factor matrix first: petsc4py defers freeing
        # parallel objects that Python collects (PETSc.garbage_cleanup), and a factor left to it
        # keeps MUMPS' 13 duplicated communicators (per factorisation object, when every sigma
        # made one, that exhausted MPICH's 2048 context ids in a two-process reconstruction).
        if hasattr(self, "_ksp"):
            self._ksp.getPC().getFactorMatrix().destroy()
        for obj in ("_x", "_rhs", "_ksp", "_mat"):
            if hasattr(self, obj):
                getattr(self, obj).destroy()


class _SchurCGSolver:
    """CG + algebraic multigrid (PETSc GAMG) on the potential block, the electrodes eliminated.

    With ``A' = A(sigma) + B`` (SPD, where multigrid works: a scalar elliptic operator) and the
    sigma-independent coupling C and electrode block D', the L unit-electrode problems are

        W = -A'^{-1} C   (L CG solves, one GAMG set-up),   S = D' + C^T W   (L x L),

    and the solution for the right-hand side [0; v] is U = S^{-1} v, u = W U. Everything the
    forward model and its adjoints need is a combination of these L fields, so the L solves are
    done once per conductivity (the same count as the direct path's back-substitutions).
    """

    def __init__(self, system: CEMSystem, sigma: np.ndarray, rtol: float):
        self._system = system
        comm = system.comm
        A = system.node_matrix(sigma)
        A.setOption(PETSc.Mat.Option.SPD, True)
        ksp = PETSc.KSP().create(comm)
        ksp.setOperators(A)
        ksp.setType("cg")
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)  # rtol on the true residual
        ksp.setTolerances(rtol=rtol, atol=0.0, max_it=2000)
        pc = ksp.getPC()
        pc.setType("gamg")
        ksp.setFromOptions()
        ksp.setUp()
        C = system.coupling_columns()  # (n_owned, L)
        L = system.n_electrodes
        W = np.empty_like(C)
        b, x = A.createVecs()
        self.iterations = []
        for l in range(L):
            b.array[:] = -C[:, l]
            x.set(0.0)
            ksp.solve(b, x)
            if ksp.getConvergedReason() <= 0:
                raise RuntimeError(f"CG did not converge for electrode {l + 1}: reason {ksp.getConvergedReason()}, "
                                   f"{ksp.getIterationNumber()} iterations")
            self.iterations.append(ksp.getIterationNumber())
            W[:, l] = x.array
        S = system.electrode_block + comm.allreduce(C.T @ W, op=MPI.SUM)
        self._S_inv = np.linalg.inv(0.5 * (S + S.T))
        self._W = W
        for obj in (ksp, A, b, x):
            obj.destroy()

    def solve_electrode(self, values: np.ndarray) -> np.ndarray:
        """This process's rows (n_local_rows, P) of K^{-1} [0; values_p] for values (P, L)."""
        values = np.asarray(values, dtype=float)
        U = self._S_inv @ values.T  # (L, P)
        rows = self._W @ U
        if self._system.n_local_rows > self._system.disc.n_owned_nodes:  # the last process owns U
            rows = np.vstack([rows, U])
        return rows


class CEMFactorization:
    """K(sigma) factorised once; forward solves, vector-Jacobian products and Jacobians reuse it.

    Every electrode right-hand side [0; v] is a combination of the L unit ones [0; e_l]. The
    direct solver solves the L unit problems when it factorises (``units``) and every solve is a
    combination of them: the forward solve costs L back-substitutions for any number of patterns,
    and the adjoint of a vector-Jacobian product or a Jacobian costs none at all. The iterative
    solver (``solver``) solves right-hand sides directly, and its unit solutions when P >= L.
    """

    def __init__(self, system: CEMSystem, sigma: np.ndarray, solver: _SchurCGSolver | None = None,
                 units: tuple[np.ndarray, np.ndarray] | None = None):
        if (solver is None) == (units is None):
            raise ValueError("a factorisation needs exactly one of solver and units")
        self.system = system
        self.sigma = sigma
        self._solver = solver
        self._units: tuple[np.ndarray, np.ndarray] | None = units

    def _direct(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(values, dtype=float)
        if values.ndim != 2 or values.shape[1] != self.system.n_electrodes:
            raise ValueError(f"electrode values must have shape (P, {self.system.n_electrodes}), got {values.shape}")
        return self.system.split_solution(self._solver.solve_electrode(values))

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
        cells, stiffness = self.system.disc.cells, self.system.disc.stiffness
        u_t, lam_t = np.ascontiguousarray(solution.potentials.T), np.ascontiguousarray(lam.T)
        local = np.empty((cells.shape[0], lam.shape[0], solution.potentials.shape[0]))  # (cells, M, P)
        for s in range(0, cells.shape[0], CELL_BLOCK):  # blocks of cells, as in cell_bilinear
            c = cells[s:s + CELL_BLOCK]
            stiff_u = np.matmul(stiffness[s:s + CELL_BLOCK], u_t[c])
            local[s:s + CELL_BLOCK] = -np.matmul(lam_t[c].transpose(0, 2, 1), stiff_u)
        return np.moveaxis(self.system.gather_cells(local), 0, -1).transpose(1, 0, 2)
