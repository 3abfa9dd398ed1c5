"""Generic linearised EIT baselines (smoothness prior, TV) on a small synthetic tank."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import cached_mesh

from eit_manifold.baselines.eit_linear import (
    grid_gradient,
    jacobian_in_basis,
    lagged_diffusivity_tv,
    noise_std,
    pixel_basis,
    smoothness_prior_factor,
    tikhonov_solve,
)
from eit_manifold.operators.eit import CEMForwardModel


@functools.cache
def _setup():
    model = CEMForwardModel(cached_mesh(0.2))
    basis = pixel_basis(model, 16)
    res = model.solve(np.ones(model.n_cells))
    jac = jacobian_in_basis(model, res, basis.matrix)
    return model, basis, res, jac


def test_jacobian_in_basis_matches_full_jacobian():
    model, basis, res, jac = _setup()
    full = model.jacobian(res).reshape(-1, model.n_cells) @ basis.matrix
    assert np.allclose(jac, full, rtol=1e-10, atol=1e-12)
    assert jac.shape == (np.prod(model.data_shape), basis.size)


def test_prior_factor_inverts_covariance():
    pts = np.random.default_rng(0).uniform(-1, 1, (30, 2))
    L = smoothness_prior_factor(pts, 1.0, 0.1)
    b = 1.0 / np.sqrt(2 * np.log(100))
    d2 = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    gamma = (0.01 - 1e-9) * np.exp(-d2 / (2 * b * b)) + 1e-9 * np.eye(30)
    assert np.allclose(L.T @ L @ gamma, np.eye(30), atol=1e-5)
    with pytest.raises(ValueError, match="corr_length"):
        smoothness_prior_factor(pts, -1.0, 0.1)


def test_gradient_kills_constants():
    _, basis, _, _ = _setup()
    G = grid_gradient(basis)
    assert G.shape == (2 * basis.size, basis.size)
    assert np.abs(G @ np.ones(basis.size)).max() == 0


@pytest.mark.parametrize("method", ["tikhonov", "tv"])
def test_recovers_sign_and_place_of_a_blob(method):
    model, basis, res, jac = _setup()
    truth = np.where(np.hypot(basis.centres[:, 0] - 0.4, basis.centres[:, 1]) < 0.3, 0.3, 0.0)
    sigma = 1.0 + basis.matrix @ truth
    change = (model.measurements(sigma) - res.measurements).ravel()
    std = noise_std(res.measurements, 0.01, 0.001)
    L = smoothness_prior_factor(basis.centres, 1.0, 0.1)
    x = tikhonov_solve(jac, change, std, L)
    if method == "tv":
        x, it = lagged_diffusivity_tv(jac, change, std, grid_gradient(basis), lam=10.0, cell_area=basis.pixel_size**2,
                         beta=1e-3, x0=x, max_iter=10)
        assert it >= 1
    peak = basis.centres[np.argmax(x)]
    assert x.max() > 0 and abs(x.max()) > abs(x.min())
    assert np.hypot(peak[0] - 0.4, peak[1]) < 0.35
    assert np.corrcoef(x, truth)[0, 1] > 0.5


def test_tikhonov_solve_of_several_data_is_column_by_column():
    model, basis, res, jac = _setup()
    rng = np.random.default_rng(0)
    data = rng.standard_normal((jac.shape[0], 3))
    std = noise_std(res.measurements, 0.01, 0.001)
    L = smoothness_prior_factor(basis.centres, 1.0, 0.1)
    together = tikhonov_solve(jac, data, std, L)
    for k in range(3):
        assert np.allclose(together[:, k], tikhonov_solve(jac, data[:, k], std, L), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="data must have shape"):
        tikhonov_solve(jac, data[:-1], std, L)


def test_noise_std_rule():
    u = np.array([1.0, -2.0, 0.0])
    assert np.allclose(noise_std(u, 0.1, 0.01), np.sqrt((0.1 * np.abs(u)) ** 2 + 0.02**2))
    with pytest.raises(ValueError, match="noise levels"):
        noise_std(u, 0.0, 0.0)


def test_absolute_method_recovers_a_blob_despite_channel_offsets():
    from eit_manifold.ktc.calibration import Calibration
    from eit_manifold.ktc.data import KTCMeasurement
    from eit_manifold.ktc.methods import KTC_METHODS, ReconstructionContext

    model, basis, _, _ = _setup()
    sigma0 = 0.8
    ref = model.solve(np.full(model.n_cells, sigma0))
    P, M = model.data_shape
    # instrument offsets per channel, the same in the reference and the case (as in the KTC files)
    offsets = 0.05 * np.abs(ref.measurements).max() * np.random.default_rng(0).standard_normal(M)
    truth = np.where(np.hypot(basis.centres[:, 0] - 0.4, basis.centres[:, 1]) < 0.3, -0.4, 0.0)
    u_ref = ref.measurements + offsets
    change = (model.measurements(sigma0 + basis.matrix @ truth) + offsets - u_ref).ravel()
    reference = KTCMeasurement(model.currents, model.measurement_matrix, u_ref, 1, np.arange(P), np.arange(M))
    cal = Calibration(sigma0, model.tank.impedances.copy(), 0.0, offsets=offsets)
    ctx = ReconstructionContext(model, cal, reference, basis, np.zeros((P * M, basis.size)),
                                noise_std(u_ref, 0.01, 0.001))
    image = KTC_METHODS["absolute"](ctx, change).image
    x = image.ravel()[basis.active]
    assert x.min() < 0 and abs(x.min()) > abs(x.max())  # resistive
    low = basis.centres[np.argmin(x)]
    assert np.hypot(low[0] - 0.4, low[1]) < 0.35
    assert np.corrcoef(x, truth)[0, 1] > 0.5
    # without the offsets the same data give a worse image: the method must use them
    ctx_raw = ReconstructionContext(model, Calibration(sigma0, model.tank.impedances.copy(), 0.0), reference,
                                    basis, ctx.jacobian, ctx.std)
    x_raw = KTC_METHODS["absolute"](ctx_raw, change).image.ravel()[basis.active]
    assert np.linalg.norm(x_raw - truth) > np.linalg.norm(x - truth)
