"""The CEM on tetrahedra: 2-D reference for full-height electrodes, tags, conservation, reciprocity,
gradients, iterative = direct, voxel grids, tagged .msh files."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from eit_manifold.operators.eit import CEMForwardModel, EITOperator, MeshOptions, Tank
from eit_manifold.operators.eit.analytic import homogeneous_disk_potentials
from eit_manifold.operators.eit.cem import CEMSystem
from eit_manifold.operators.eit.mesh import create_tank_mesh
from eit_manifold.operators.eit.patterns import injection_patterns
from eit_manifold.operators.eit3d import CylinderTank, create_cylinder_mesh, load_mesh_3d, preset_options_3d

ADJ = injection_patterns("adjacent", 16)
# full-height electrodes over a shallow depth: the potential does not depend on z
VERIFY = CylinderTank(Tank(), height=0.1)
# electrodes of finite height in a part-filled tank: a genuinely 3-D field
PATCHES = CylinderTank(Tank(n_electrodes=8, electrode_width=0.3), height=1.0, water_level=0.8,
                       electrode_bottom=0.2, electrode_top=0.5)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@functools.cache
def _mesh(tank: CylinderTank, h: float, refinement: float = 5.0, grading: float = 3.0, kind: str = "extruded"):
    return create_cylinder_mesh(tank, MeshOptions(h, refinement, grading), kind=kind)


@functools.cache
def _reference() -> np.ndarray:
    return homogeneous_disk_potentials(Tank(), 1.0, ADJ)


def _verify_error(mesh) -> float:
    system = CEMSystem(mesh)
    U = system.factorize(np.ones(system.n_cells), "direct").solve(ADJ).electrode_potentials
    # current I over an electrode of height H = current I / H per unit length in 2-D
    return _rel(U * mesh.tank.water_level, _reference())


def test_full_height_cylinder_equals_the_2d_fem_and_approaches_the_disk():
    opts = MeshOptions(0.1, 5.0, 3.0)
    err3 = _verify_error(_mesh(VERIFY, 0.1))
    s2 = CEMSystem(create_tank_mesh(Tank(), opts))
    U2 = s2.factorize(np.ones(s2.n_cells)).solve(ADJ).electrode_potentials
    err2 = _rel(U2, _reference())
    # the extruded mesh carries the 2-D one's cross-section: the same discretisation error
    assert err3 < 0.03 and abs(err3 - err2) < 0.15 * err2, (err3, err2)


def test_unstructured_mesh_tags_and_reference():
    mesh = _mesh(VERIFY, 0.2, kind="unstructured")
    system = CEMSystem(mesh)
    assert np.allclose(system.electrode_lengths, VERIFY.electrode_areas, rtol=1e-3)
    assert system.disc.areas.sum() == pytest.approx(np.pi * 0.1, rel=3e-3)
    assert _verify_error(mesh) < 0.1


def test_finite_electrodes_are_tagged_inside_their_rectangles():
    for kind in ("extruded", "unstructured"):
        mesh = _mesh(PATCHES, 0.2, kind=kind)
        disc = CEMSystem(mesh).disc
        for l, facets in enumerate(disc.electrode_edges):
            mid = disc.coordinates[facets].mean(axis=1)
            ang = np.angle(np.exp(1j * (np.arctan2(mid[:, 1], mid[:, 0]) - PATCHES.electrode_angles[l])))
            assert np.all(np.abs(ang) <= PATCHES.widths[l] / 2 + 1e-9)
            assert np.all((mid[:, 2] >= 0.2 - 1e-9) & (mid[:, 2] <= 0.5 + 1e-9))
            assert disc.facet_measures(facets).sum() == pytest.approx(0.3 * 0.3, rel=2e-2)
        assert disc.coordinates[:, 2].max() == pytest.approx(0.8)  # the water level, not the wall


@pytest.fixture(scope="module")
def hetero():
    model = CEMForwardModel(_mesh(PATCHES, 0.2), "trigonometric", "ground", solver="direct")
    c = model.centroids
    sigma = 1.0 + 0.5 * np.sin(3 * c[:, 0]) * np.cos(2 * c[:, 1]) + 0.6 * (c[:, 2] > 0.4)
    return model, sigma


def test_currents_are_conserved_and_transfer_matrix_symmetric(hetero):
    model, sigma = hetero
    res = model.solve(sigma)
    system, disc = model.system, model.system.disc
    U, u = res.electrode_potentials, res.solution.potentials
    z = system.tank.impedances
    for l, facets in enumerate(disc.electrode_edges):
        integral_u = (u[:, facets].mean(axis=2) * disc.facet_measures(facets)).sum(axis=1)
        current = (system.electrode_lengths[l] * U[:, l] - integral_u) / z[l]
        assert np.allclose(current, model.currents[:, l], atol=1e-9)
    assert np.allclose(U.sum(axis=1), 0, atol=1e-10)
    T = model.currents @ U.T
    assert np.abs(T - T.T).max() <= 1e-10 * np.abs(T).max()


def test_iterative_solver_matches_direct(hetero):
    model, sigma = hetero
    direct = model.solve(sigma)
    fac = model.system.factorize(sigma, "iterative")
    U = fac.solve(model.currents).electrode_potentials
    assert _rel(U, direct.electrode_potentials) <= 1e-8
    g = np.random.default_rng(0).standard_normal(model.data_shape) @ model.measurement_matrix
    it = fac.electrode_adjoint(fac.solve(model.currents), g)
    ref = direct.factorization.electrode_adjoint(direct.solution, g)
    assert _rel(it, ref) <= 1e-8
    assert model.system.choose_solver("auto") == "direct"  # small meshes: the direct solver
    with pytest.raises(ValueError, match="unknown solver"):
        model.system.factorize(sigma, "amg")


def test_taylor_and_vjp_equals_jacobian_transpose(hetero):
    model, sigma = hetero
    op = EITOperator.from_model(model, image_shape=None)
    s0 = torch.from_numpy(sigma)
    d = op(s0[None] * 1.2).detach()

    def J(s):
        return 0.5 * ((op(s[None]) - d) ** 2).sum()

    s = s0.clone().requires_grad_()
    (grad,) = torch.autograd.grad(J(s), s)
    delta = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, op.n_cells))
    J0, slope = J(s0).item(), float(grad @ delta)
    rem = [abs(J(s0 + e * delta).item() - J0 - e * slope) for e in 0.2 * 0.5 ** np.arange(4)]
    ratios = [a / b for a, b in zip(rem, rem[1:], strict=False)]
    assert all(3.5 < r < 4.5 for r in ratios), ratios
    g = torch.from_numpy(np.random.default_rng(2).standard_normal((1, *op.data_shape)))
    (vjp,) = torch.autograd.grad((op(s[None]) * g).sum(), s)
    Jac = op.jacobian(s0)
    assert torch.allclose(vjp, Jac.T @ g.reshape(-1), rtol=1e-10, atol=1e-13)


def test_voxel_grid_operator(hetero):
    model, _ = hetero
    op = EITOperator.from_model(model, image_shape=(4, 6, 6))
    P = model.pixel_map((4, 6, 6))
    assert P.shape == (model.n_cells, 144) and np.allclose(P.sum(axis=1), 1)
    # a voxel image that is constant per layer reproduces z-layered cell values
    layers = torch.tensor([1.0, 1.5, 2.0, 2.5], dtype=torch.float64)[:, None, None].expand(4, 6, 6)
    cells = op.to_cells(layers[None])[0].numpy()
    z = model.centroids[:, 2]
    inside = np.abs((z / 0.2) - np.round(z / 0.2)) > 0.05  # away from layer boundaries (tets straddle them)
    assert np.all(np.abs(cells - (1 + 0.5 * np.floor(z / 0.2)))[inside & (np.floor(z / 0.2) < 4)] < 0.51)
    x = (1 + torch.rand(1, 4, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    x.requires_grad_()
    g = torch.randn(1, *op.data_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (vjp,) = torch.autograd.grad((op(x) * g).sum(), x)
    Jx = op.jacobian(x[0].detach())
    assert torch.allclose(vjp.reshape(-1), Jx.T @ g.reshape(-1), rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="voxel"):
        model.pixel_map((6, 6))


def test_tagged_msh_round_trip_and_errors(tmp_path, hetero):
    model, sigma = hetero
    path = tmp_path / "tank.msh"
    mesh = create_cylinder_mesh(PATCHES, MeshOptions(0.2, 5.0, 3.0), msh_file=path)
    loaded = load_mesh_3d(path, PATCHES)
    assert loaded.n_cells == mesh.n_cells
    a = CEMForwardModel(loaded, "trigonometric", "ground").measurements(np.ones(loaded.n_cells))
    b = model.measurements(np.ones(model.n_cells))
    assert _rel(a, b) < 1e-12
    with pytest.raises(ValueError, match="lacks facets tagged"):
        load_mesh_3d(path, CylinderTank(Tank(n_electrodes=9, electrode_width=0.2)))
    with pytest.raises(FileNotFoundError):
        load_mesh_3d(tmp_path / "missing.msh", PATCHES)
    flat = tmp_path / "flat.msh"
    create_tank_mesh(Tank(), MeshOptions(0.3, 2.0, 2.0), msh_file=flat)
    with pytest.raises(ValueError, match="not a 3-D"):
        load_mesh_3d(flat, Tank())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"height": -1.0}, "height"), ({"water_level": 2.0}, "water_level"),
     ({"electrode_bottom": 0.6, "electrode_top": 0.5}, "electrode heights"),
     ({"water_level": 0.3, "electrode_bottom": 0.4}, "above the water level")],
)
def test_invalid_cylinder_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CylinderTank(Tank(), **kwargs)


def test_cylinder_round_trip_and_clipping():
    t = CylinderTank(Tank(n_electrodes=4), height=1.0, water_level=0.6, electrode_bottom=0.2, electrode_top=0.9)
    assert np.allclose(t.electrode_heights, [[0.2, 0.6]] * 4)
    assert np.allclose(t.electrode_areas, 0.2 * 0.4)
    assert CylinderTank.from_dict(t.to_dict()).to_dict() == t.to_dict()
    assert not t.full_height and VERIFY.full_height


@pytest.mark.slow
def test_default_3d_mesh_matches_the_disk_and_converges_like_2d():
    # the default preset on the full-height cylinder (target: within 2e-3 of the 2-D reference)
    err = _verify_error(create_cylinder_mesh(VERIFY, preset_options_3d("default")))
    assert err <= 2e-3, err
    # graded meshes, h halved: the 3-D error follows the 2-D one of the same cross-section, and
    # falls like 1/(cross-section cells) = h_eff^2, the 2-D rate (tests/test_cem.py)
    e3, e2, n2 = [], [], []
    for h in (0.2, 0.1, 0.05):
        e3.append(_verify_error(_mesh(VERIFY, h, 10.0, 6.0)))
        s2 = CEMSystem(create_tank_mesh(Tank(), MeshOptions(h, 10.0, 6.0)))
        e2.append(_rel(s2.factorize(np.ones(s2.n_cells)).solve(ADJ).electrode_potentials, _reference()))
        n2.append(s2.n_cells)
    assert all(abs(a - b) < 0.2 * b for a, b in zip(e3, e2, strict=True)), (e3, e2)
    orders = [np.log(e3[i] / e3[i + 1]) / np.log(np.sqrt(n2[i + 1] / n2[i])) for i in range(2)]
    assert all(o > 1.8 for o in orders), (e3, n2, orders)
