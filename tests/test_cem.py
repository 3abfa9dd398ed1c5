"""CEM solver: reference checks against the semi-analytic disk, conservation, reciprocity, scaling."""

from __future__ import annotations

import dolfinx
import numpy as np
import pytest
import ufl
from conftest import cached_mesh

from eit_manifold.operators.eit.analytic import homogeneous_disk_potentials
from eit_manifold.operators.eit.cem import CEMSystem, check_conductivity
from eit_manifold.operators.eit.forward import CEMForwardModel
from eit_manifold.operators.eit.geometry import Tank
from eit_manifold.operators.eit.mesh import MeshOptions, TankMesh, create_tank_mesh
from eit_manifold.operators.eit.patterns import injection_patterns, measurement_matrix


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def reference():
    tank = Tank()
    currents = injection_patterns("adjacent", 16)
    return homogeneous_disk_potentials(tank, 1.0, currents)


def test_semi_analytic_reference_is_converged():
    tank = Tank()
    currents = injection_patterns("adjacent", 16)
    a = homogeneous_disk_potentials(tank, 1.0, currents, n_modes=512)
    b = homogeneous_disk_potentials(tank, 1.0, currents, n_modes=1024)
    # Richardson-extrapolated solutions with N and 2N modes agree far below the FEM's 1e-3.
    assert _rel(a, b) < 2e-5
    assert np.allclose(a.sum(axis=1), 0, atol=1e-12)


def test_default_mesh_matches_semi_analytic_disk(default_mesh, reference):
    system = CEMSystem(default_mesh)
    U = system.factorize(np.ones(system.n_cells)).solve(injection_patterns("adjacent", 16)).electrode_potentials
    assert _rel(U, reference) <= 1e-3


def _errors(reference, options_list):
    tank = Tank()
    out = []
    for options in options_list:
        system = CEMSystem(create_tank_mesh(tank, options))
        U = system.factorize(np.ones(system.n_cells)).solve(injection_patterns("adjacent", 16)).electrode_potentials
        out.append((system.n_cells, _rel(U, reference)))
    return out


def test_error_falls_like_h_squared_on_graded_meshes(reference):
    # Graded meshes, h halved each time: the error falls like 1/(number of cells) = h_eff^2
    # (h_eff = sqrt(area / cells)); this is the rate DESIGN §2 reports.
    errs = _errors(reference, [MeshOptions(h, 10.0, 6.0) for h in (0.2, 0.1, 0.05, 0.025)])
    for (n0, e0), (n1, e1) in zip(errs, errs[1:], strict=False):
        order = np.log(e0 / e1) / np.log(np.sqrt(n1 / n0))
        assert order >= 1.9, errs


def test_uniform_refinement_converges_at_nearly_second_order(reference):
    # Uniform refinement (every triangle split in four, boundary nodes on the circle): the CEM
    # solution is only H^{2-eps} at the electrode edges, so the order approaches 2 from below.
    errs = _errors(reference, [MeshOptions(0.1, 10.0, 3.0, k) for k in range(3)])
    orders = [np.log2(e0 / e1) for (_, e0), (_, e1) in zip(errs, errs[1:], strict=False)]
    assert all(o > 1.7 for o in orders), orders
    assert orders[1] >= orders[0] - 0.05


@pytest.fixture(scope="module")
def hetero():
    mesh = cached_mesh("coarse")
    model = CEMForwardModel(mesh, "trigonometric", "ground")
    c = model.centroids
    sigma = 1.0 + 0.8 * np.sin(3 * c[:, 0]) * np.cos(2 * c[:, 1]) + 0.5 * (c[:, 0] > 0.3)
    return model, sigma


def test_electrode_currents_are_conserved(hetero):
    model, sigma = hetero
    res = model.solve(sigma)
    system, disc = model.system, model.system.disc
    z = system.tank.impedances
    U, u = res.electrode_potentials, res.solution.potentials
    for l, edges in enumerate(disc.electrode_edges):
        h = np.linalg.norm(disc.coordinates[edges[:, 0]] - disc.coordinates[edges[:, 1]], axis=1)
        integral_u = (u[:, edges].mean(axis=2) * h).sum(axis=1)
        current = (system.electrode_lengths[l] * U[:, l] - integral_u) / z[l]
        assert np.allclose(current, model.currents[:, l], atol=1e-9)
    assert np.allclose(U.sum(axis=1), 0, atol=1e-10)  # the ground


def test_transfer_matrix_is_symmetric(hetero):
    model, sigma = hetero
    U = model.solve(sigma).electrode_potentials
    T = model.currents @ U.T  # T_pq = I_p . U_q
    assert np.abs(T - T.T).max() <= 1e-10 * np.abs(T).max()


def test_conductivity_and_impedance_scaling(hetero):
    model, sigma = hetero
    U1 = model.solve(sigma).electrode_potentials
    c = 3.7
    m = model.tank_mesh
    scaled_tank = model.tank.with_impedance(model.tank.impedances / c)
    scaled = CEMForwardModel(TankMesh(m.mesh, m.facet_tags, scaled_tank, "scaled"), "trigonometric", "ground")
    U2 = scaled.solve(c * sigma).electrode_potentials
    assert np.allclose(U2, U1 / c, rtol=1e-9, atol=1e-12)


def test_stiffness_matches_dolfinx_assembly(tiny_mesh):
    system = CEMSystem(tiny_mesh)
    mesh = tiny_mesh.mesh
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 2.0, system.n_cells)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    Q = dolfinx.fem.functionspace(mesh, ("DG", 0))
    s = dolfinx.fem.Function(Q)
    s.x.array[:] = sigma[mesh.topology.original_cell_index]  # canonical order -> dolfinx's cell order
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    A_ref = dolfinx.fem.assemble_matrix(dolfinx.fem.form(s * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx)).to_scipy()
    n = system.n_nodes
    K = system.matrix(sigma).tocsr()
    K0 = system.matrix(np.full(system.n_cells, 1e-300)).tocsr()  # the constant (electrode) part
    assert abs((K - K0)[:n, :n] - A_ref).max() < 1e-12


def test_named_patterns_and_user_matrices():
    L = 8
    for kind, P in (("adjacent", 8), ("opposite", 4), ("trigonometric", 7)):
        pats = injection_patterns(kind, L)
        assert pats.shape == (P, L) and np.allclose(pats.sum(axis=1), 0)
        assert np.linalg.matrix_rank(pats) == min(P, L - 1)
    with pytest.raises(ValueError, match="sum to zero"):
        injection_patterns(np.eye(L)[:2], L)
    with pytest.raises(ValueError, match="shape"):
        injection_patterns(np.zeros((3, 5)), L)
    with pytest.raises(ValueError, match="even"):
        injection_patterns("opposite", 7)
    with pytest.raises(ValueError, match="unknown injection"):
        injection_patterns("diagonal", L)
    assert np.allclose(measurement_matrix("adjacent", L) @ np.arange(L), [-1] * 7 + [7])
    with pytest.raises(ValueError, match="unknown measurement"):
        measurement_matrix("x", L)


@pytest.mark.parametrize(
    ("sigma", "match"),
    [(np.zeros(5), "shape"), ("neg", "cell 3 has -1.0"), ("nan", "cell 2 has nan"), ("zero", "positive")],
)
def test_bad_conductivity_is_a_clear_error(sigma, match):
    base = np.ones(10)
    if isinstance(sigma, str):
        base[{"neg": 3, "nan": 2, "zero": 0}[sigma]] = {"neg": -1.0, "nan": np.nan, "zero": 0.0}[sigma]
        sigma = base
    with pytest.raises(ValueError, match=match):
        check_conductivity(sigma, 10)


def test_wrong_current_shape_is_a_clear_error(tiny_mesh):
    system = CEMSystem(tiny_mesh)
    fac = system.factorize(np.ones(system.n_cells))
    with pytest.raises(ValueError, match=r"shape \(P, 16\)"):
        fac.solve(np.ones((3, 15)))


def test_reused_symbolic_factorisation_depends_on_sigma_alone(tiny_mesh):
    # The MUMPS analysis is done once per system (on K(1)) and every sigma refactorises
    # numerically: a factorisation must not depend on the conductivities factorised before it
    # (chains on different MPI processes see different sequences), and it must solve K(sigma).
    rng = np.random.default_rng(3)
    currents = injection_patterns("adjacent", 16)
    system = CEMSystem(tiny_mesh)
    s1, s2 = (np.exp(0.5 * rng.standard_normal(system.n_cells)) for _ in range(2))
    first = system.factorize(s1).solve(currents)
    system.factorize(s2)
    again = system.factorize(s1).solve(currents)
    fresh = CEMSystem(tiny_mesh).factorize(s1).solve(currents)
    for sol in (again, fresh):
        assert np.array_equal(sol.electrode_potentials, first.electrode_potentials)
        assert np.array_equal(sol.potentials, first.potentials)
    # an earlier factorisation keeps its solutions after later ones (they are its unit solutions)
    kept = system.factorize(s2)
    system.factorize(s1)
    U2 = kept.solve(currents).electrode_potentials
    K = system.matrix(s2).toarray()
    x = np.linalg.solve(K, np.vstack([np.zeros((system.n_nodes, 16)), currents.T]))
    assert np.allclose(U2, x[system.n_nodes:].T, rtol=1e-9, atol=1e-12)
