"""Adjoint gradients and the torch bridge: gradcheck, Taylor test, Jacobian, batching, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cached_mesh

from eit_manifold.operators.eit import EITOperator, MeshOptions, Tank, image_to_conductivity

SMALL_TANK = Tank(n_electrodes=8, electrode_width=0.3)


@pytest.fixture(scope="module")
def small_op():
    return EITOperator(SMALL_TANK, mesh=MeshOptions(0.4, 2.0, 2.0), image_shape=(6, 6))


def test_gradcheck_cells_and_pixels(small_op):
    gen = torch.Generator().manual_seed(0)
    cells = (1 + torch.rand(2, small_op.n_cells, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(small_op, (cells,), eps=1e-6, atol=1e-7)
    pixels = (1 + torch.rand(1, 6, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(small_op, (pixels,), eps=1e-6, atol=1e-7)


def test_taylor_remainder_is_second_order_on_default_mesh():
    op = EITOperator(Tank(), mesh=cached_mesh("default"), image_shape=None)
    c = torch.from_numpy(op.model.centroids)
    sigma = 1 + 0.5 * torch.sin(2 * c[:, 0]) * torch.cos(3 * c[:, 1])
    d = op(sigma[None] * 1.3).detach()

    def J(s):
        return 0.5 * ((op(s[None]) - d) ** 2).sum()

    s = sigma.clone().requires_grad_()
    (grad,) = torch.autograd.grad(J(s), s)
    delta = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, op.n_cells))
    J0 = J(sigma).item()
    slope = float(grad @ delta)
    eps = 0.2 * 0.5 ** np.arange(5)
    rem = [abs(J(sigma + e * delta).item() - J0 - e * slope) for e in eps]
    ratios = [a / b for a, b in zip(rem, rem[1:], strict=False)]
    assert all(3.5 < r < 4.5 for r in ratios), ratios


def test_vjp_equals_jacobian_transpose_times_g(small_op):
    gen = torch.Generator().manual_seed(1)
    x = (1 + torch.rand(6, 6, generator=gen, dtype=torch.float64))
    Jx = small_op.jacobian(x)  # (P*M, 36)
    g = torch.randn(1, *small_op.data_shape, generator=gen, dtype=torch.float64)
    xr = x[None].clone().requires_grad_()
    (vjp,) = torch.autograd.grad((small_op(xr) * g).sum(), xr)
    assert torch.allclose(vjp.reshape(-1), Jx.T @ g.reshape(-1), rtol=1e-10, atol=1e-12)
    cells = small_op.to_cells(x[None])[0]
    Jc = small_op.jacobian(cells)
    assert Jc.shape == (np.prod(small_op.data_shape), small_op.n_cells)
    fd = (small_op(cells[None] + 1e-6 * torch.eye(small_op.n_cells, dtype=torch.float64)[:3]) - small_op(cells[None]))
    assert torch.allclose(fd.reshape(3, -1) / 1e-6, Jc[:, :3].T, rtol=1e-4, atol=1e-6)


def test_items_with_zero_output_gradient_skip_the_adjoint(small_op, monkeypatch):
    # A batch differentiated through some of its items only (the descent's line search): the
    # others get an exact zero gradient without an adjoint solve; the rest is unchanged.
    gen = torch.Generator().manual_seed(2)
    x = (1 + torch.rand(3, 6, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    g = torch.randn(3, *small_op.data_shape, generator=gen, dtype=torch.float64)
    g[1] = 0.0
    calls = []
    vjp = small_op.model.vjp
    monkeypatch.setattr(small_op.model, "vjp", lambda r, gi: calls.append(1) or vjp(r, gi))
    (grad,) = torch.autograd.grad((small_op(x) * g).sum(), x)
    assert len(calls) == 2 and torch.count_nonzero(grad[1]) == 0
    for i in (0, 2):
        xi = x[i:i + 1].detach().clone().requires_grad_()
        (gi,) = torch.autograd.grad((small_op(xi) * g[i:i + 1]).sum(), xi)
        assert torch.allclose(grad[i], gi[0], rtol=1e-12, atol=1e-14)


def test_batch_equals_loop(small_op):
    gen = torch.Generator().manual_seed(2)
    x = (0.5 + torch.rand(3, 6, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    y = small_op(x)
    g = torch.randn_like(y)
    (gb,) = torch.autograd.grad((y * g).sum(), x)
    for i in range(3):
        xi = x[i : i + 1].detach().clone().requires_grad_()
        yi = small_op(xi)
        assert torch.allclose(yi, y[i : i + 1])
        (gi,) = torch.autograd.grad((yi * g[i : i + 1]).sum(), xi)
        assert torch.allclose(gi, gb[i : i + 1])


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda n: -torch.ones(1, n), ValueError, "item 0, cell 0 has -1.0"),
        (lambda n: torch.full((2, n), float("nan")), ValueError, "positive and finite"),
        (lambda n: torch.ones(1, n + 1), ValueError, "shape"),
        (lambda n: torch.ones(n), ValueError, "shape"),
        (lambda n: np.ones((1, n)), TypeError, "torch tensor"),
    ],
)
def test_bad_conductivity_errors(small_op, make, error, match):
    with pytest.raises(error, match=match):
        small_op(make(small_op.n_cells))
    img = torch.ones(1, 6, 6, dtype=torch.float64)
    img[0, 2, 3] = 0.0
    with pytest.raises(ValueError, match="pixel 15"):
        small_op(img)


def test_second_derivative_is_a_clear_error(small_op):
    x = torch.ones(1, small_op.n_cells, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(small_op(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


def test_memory_stays_bounded(small_op):
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    x = torch.ones(2, 6, 6, dtype=torch.float64, requires_grad=True)
    for _ in range(50):
        small_op(x).sum().backward()
    before = rss_mb()
    for _ in range(1000):
        small_op(x).sum().backward()
    assert rss_mb() - before < 30


def test_parametrisation_and_lbfgs_fit(small_op):
    # The README example: fit a conductivity image with torch.optim.LBFGS.
    truth = torch.full((1, 6, 6), 0.5, dtype=torch.float64)
    truth[0, 1:3, 1:3] = 0.9
    data = small_op(image_to_conductivity(truth)).detach()
    x = torch.full((1, 6, 6), 0.5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([x], max_iter=60, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ((small_op(image_to_conductivity(x)) - data) ** 2).sum()
        loss.backward()
        return loss

    start = closure().item()
    opt.step(closure)
    assert closure().item() < 1e-4 * start


def test_operator_carries_a_relative_noise_model(small_op):
    from eit_manifold.operators.noise import RelativeNoise

    assert small_op.noise_model == RelativeNoise(0.0)
    op = EITOperator.from_model(small_op.model, image_shape=(6, 6), noise_model=RelativeNoise(0.01))
    sigma = torch.ones(1, 6, 6, dtype=torch.float64)
    clean = op(sigma)
    a, b = (op.measure(sigma, torch.Generator().manual_seed(2)) for _ in range(2))
    assert torch.equal(a, b)
    expected = clean + op.noise_model.std(clean) * torch.randn(
        clean.shape, generator=torch.Generator().manual_seed(2), dtype=clean.dtype)
    torch.testing.assert_close(a, expected)
    assert not torch.equal(a, clean)


def test_the_one_conductivity_map_numpy_torch_clip_check_inverse() -> None:
    from eit_manifold.operators.eit import conductivity_to_image

    x = np.array([[-0.1, 0.0, 0.5], [1.0, 1.2, 0.25]])
    np.testing.assert_allclose(image_to_conductivity(x), 0.2 + 1.6 * x)
    np.testing.assert_allclose(image_to_conductivity(x, clip=True), 0.2 + 1.6 * np.clip(x, 0, 1))
    t = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    out = image_to_conductivity(t, 0.5, 2.5, clip=True)
    assert out.dtype == torch.float64  # the operator's dtype
    out.sum().backward()
    strict = (x != 0) & (x != 1)  # the clamp's derivative at its ends is a convention; not checked
    np.testing.assert_allclose(t.grad.numpy()[strict], (2.0 * ((x > 0) & (x < 1)))[strict])
    np.testing.assert_allclose(conductivity_to_image(image_to_conductivity(x, 0.3, 1.1), 0.3, 1.1), x)
    assert torch.allclose(conductivity_to_image(image_to_conductivity(t.detach(), 0.3, 1.1), 0.3, 1.1), t.detach())
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\]"):
        image_to_conductivity(x, check=True)
    with pytest.raises(ValueError, match="non-finite"):
        image_to_conductivity(np.array([np.nan]), check=True)
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        image_to_conductivity(x, 1.0, 0.5)
