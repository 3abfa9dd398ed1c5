"""Gaussian blur operator: kernel, adjoint, background, noise, errors."""

from __future__ import annotations

import pytest
import torch

from eit_manifold.operators.blur import GaussianBlur, gaussian_kernel, paper_kernel_params


def test_kernel_normalised_and_symmetric() -> None:
    k = gaussian_kernel(10, 3.75)
    assert k.shape == (10, 10)
    assert float(k.sum()) == pytest.approx(1.0)
    assert torch.allclose(k, torch.flip(k, (0, 1)))
    assert torch.allclose(k, k.T)


def test_paper_kernel_scaling() -> None:
    assert paper_kernel_params(128) == (40, 15.0)
    assert paper_kernel_params(32) == (10, 3.75)
    assert paper_kernel_params(64) == (20, 7.5)


@pytest.mark.parametrize(("size", "std", "shape"), [(10, 3.75, (32, 32)), (7, 1.5, (20, 13))])
def test_adjoint_identity(size: int, std: float, shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    op = GaussianBlur(size, std, background=0.3)
    x = torch.randn(3, *shape, generator=gen, dtype=torch.float64)
    y = torch.randn(3, *shape, generator=gen, dtype=torch.float64)
    lhs = (op.linear(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-12)


def test_adjoint_matches_autograd() -> None:
    op = GaussianBlur(6, 2.0)
    x = torch.randn(2, 16, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 16, 16, dtype=torch.float64)
    (g,) = torch.autograd.grad((op.linear(x) * y).sum(), x)
    assert torch.allclose(g, op.adjoint(y))


def test_background_is_fixed_point_and_mass_preserved_inside() -> None:
    op = GaussianBlur(5, 1.0, background=0.4)
    bg = torch.full((1, 24, 24), 0.4, dtype=torch.float64)
    assert torch.allclose(op(bg), bg)
    x = bg.clone()
    x[0, 10:14, 10:14] += 0.25  # a bump far from the border keeps its mass
    assert float((op(x) - 0.4).sum()) == pytest.approx(float((x - 0.4).sum()))


def test_blur_of_a_point_is_the_kernel() -> None:
    op = GaussianBlur(5, 1.0)
    x = torch.zeros(15, 15, dtype=torch.float64)
    x[7, 7] = 1.0
    assert torch.allclose(op(x)[5:10, 5:10], op.kernel)
    assert op(x).shape == (15, 15)


def test_noise_statistics_and_reproducibility() -> None:
    op = GaussianBlur(5, 1.0, noise_std=0.1)
    x = torch.zeros(4, 64, 64, dtype=torch.float64)
    y1 = op.measure(x, torch.Generator().manual_seed(3))
    y2 = op.measure(x, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)
    assert float(y1.std()) == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel_size": 0, "std": 1.0}, "kernel_size"),
        ({"kernel_size": 5, "std": -1.0}, "std"),
        ({"kernel_size": 5, "std": 1.0, "noise_std": -0.1}, "noise_std"),
        ({"kernel_size": 5, "std": 1.0, "background": float("nan")}, "background"),
    ],
)
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GaussianBlur(**kwargs)


def test_bad_image_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        GaussianBlur(3, 1.0)(torch.zeros(5))


@pytest.mark.parametrize("size", [10, 7])
def test_separable_matrices_match_convolution(size: int) -> None:
    op = GaussianBlur(size, 2.5)
    x = torch.randn(2, 18, 12, dtype=torch.float64)
    kh, kw = op.matrix_1d(18), op.matrix_1d(12)
    assert torch.allclose(kh @ x @ kw.T, op.linear(x), atol=1e-14)


@pytest.mark.parametrize(("size", "kernel_size", "std"), [(128, 40, 15.0), (64, 20, 7.5)])
def test_paper_operator_parameters(size: int, kernel_size: int, std: float) -> None:
    op = GaussianBlur.paper(size, background=0.5, noise_std=0.1)
    assert (op.kernel_size, op.std, op.background, op.noise_model.sigma) == (kernel_size, std, 0.5, 0.1)
    t = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-(t**2) / (2 * std**2))
    torch.testing.assert_close(op.kernel, torch.outer(g, g) / torch.outer(g, g).sum())
    # applied to x - 0.5: the background is a fixed point, a contrast is blurred with unit mass
    x = torch.full((1, size, size), 0.5, dtype=torch.float64)
    torch.testing.assert_close(op(x), x)
    x[0, size // 2, size // 2] += 1.0
    assert float((op(x) - 0.5).sum()) == pytest.approx(1.0)
