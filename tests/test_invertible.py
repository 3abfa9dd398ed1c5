"""Invertible blocks: exact inverses and log-determinants against brute-force Jacobians."""

from __future__ import annotations

import pytest
import torch

from eit_manifold.manifold.chart import Chart, ChartConfig
from eit_manifold.manifold.flows import latent_flow
from eit_manifold.manifold.invertible import (
    ConvCoupling,
    DenseCoupling,
    ElementwiseAffine,
    InvertibleDownsample,
    InvertibleSequential,
    InvertibleUpsample,
    OrthogonalMixing,
)


def _randomise(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    """Move every parameter away from its (identity) initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def _brute_log_det(block, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of ``block`` at each item of ``x`` from the full autograd Jacobian."""
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: block(v.unsqueeze(0))[0], xi)
        n = xi.numel()
        out.append(torch.linalg.slogdet(jac.reshape(n, n).double())[1])
    return torch.stack(out)


BLOCKS = {
    "dense-coupling": (lambda: DenseCoupling(5, hidden=16), (3, 5)),
    "conv-coupling": (lambda: ConvCoupling(4, hidden=8), (2, 4, 4, 4)),
    "elementwise-dense": (lambda: ElementwiseAffine(5), (3, 5)),
    "elementwise-conv": (lambda: ElementwiseAffine(3), (2, 3, 4, 4)),
    "orthogonal-dense": (lambda: OrthogonalMixing(5), (3, 5)),
    "orthogonal-conv": (lambda: OrthogonalMixing(4), (2, 4, 3, 3)),
    "downsample": (lambda: InvertibleDownsample(2), (2, 2, 4, 4)),
    "upsample": (lambda: InvertibleUpsample(8), (2, 8, 2, 2)),
    "sequence": (
        lambda: InvertibleSequential(DenseCoupling(4, 8), OrthogonalMixing(4), ElementwiseAffine(4)),
        (3, 4),
    ),
    "latent-flow": (lambda: latent_flow(3, n_blocks=2, hidden=8), (3, 3)),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_inverse_and_log_det(name: str) -> None:
    torch.manual_seed(0)
    make, shape = BLOCKS[name]
    block = make().double()
    _randomise(block)
    x = torch.randn(shape, dtype=torch.float64)
    y, ld = block.forward_and_log_det(x)
    assert y.shape[0] == x.shape[0] and y.numel() == x.numel()
    assert torch.allclose(block.inverse(y), x, atol=1e-10)
    x_back, ld_inv = block.inverse_and_log_det(y)
    assert torch.allclose(ld_inv, -ld, atol=1e-10)
    assert torch.allclose(ld, _brute_log_det(block, x), atol=1e-8)


def test_coupling_is_nontrivial_after_randomisation() -> None:
    block = DenseCoupling(4, hidden=8).double()
    _randomise(block)
    x = torch.randn(3, 4, dtype=torch.float64)
    assert not torch.allclose(block(x), x)
    assert block.log_det(x).abs().max() > 1e-3


def test_soft_clamp_bounds_log_scale() -> None:
    block = DenseCoupling(2, hidden=4, clamp=0.5)
    _randomise(block, scale=50.0)
    x = 100 * torch.randn(64, 2)
    assert block.log_det(x).abs().max() < 0.5 + 1e-6


def test_orthogonal_mixing_is_orthogonal() -> None:
    mix = OrthogonalMixing(6)
    _randomise(mix)
    q = mix.matrix()
    assert torch.allclose(q @ q.T, torch.eye(6), atol=1e-5)


def test_upsample_shapes_and_errors() -> None:
    up = InvertibleUpsample(16)
    assert up(torch.zeros(1, 16, 3, 5)).shape == (1, 4, 6, 10)
    with pytest.raises(ValueError, match="multiple of 4"):
        InvertibleUpsample(6)
    with pytest.raises(ValueError, match="even height"):
        InvertibleDownsample(1)(torch.zeros(1, 1, 3, 4))


@pytest.mark.parametrize(
    "cfg",
    [
        ChartConfig(data_shape=(3,), latent_dim=2, blocks=3, hidden=16),
        ChartConfig(data_shape=(16, 16), latent_dim=3, blocks=2, hidden=16, conv_blocks=1, conv_hidden=8, levels=2),
    ],
    ids=["dense", "conv"],
)
def test_encoder_is_left_inverse_of_decoder(cfg: ChartConfig) -> None:
    torch.manual_seed(1)
    chart = Chart(cfg)
    _randomise(chart, scale=0.1)
    w = chart.sample_latent(16)
    x = chart.decode(w)
    assert x.shape == (16, *cfg.data_shape)
    assert (chart.encode(x) - w).abs().max() < 1e-5
    # the projection is idempotent, and off-manifold points move
    xp = chart.project(x + 0.1 * torch.randn_like(x))
    assert (chart.project(xp) - xp).abs().max() < 1e-4
    assert (xp - x).abs().max() > 1e-3


def test_decode_supports_forward_mode_jacobians() -> None:
    cfg = ChartConfig(data_shape=(16, 16), latent_dim=2, blocks=2, hidden=8, conv_blocks=1, conv_hidden=8, levels=2)
    chart = Chart(cfg)
    _randomise(chart, scale=0.1)
    w = chart.sample_latent(1)
    tangent = torch.tensor([[1.0, 0.0]])
    _, jvp = torch.func.jvp(chart.decode, (w,), (tangent,))
    eps = 1e-2
    fd = (chart.decode(w + eps * tangent) - chart.decode(w - eps * tangent)) / (2 * eps)
    assert torch.allclose(jvp, fd, atol=1e-2 * fd.abs().max().item() + 1e-4)
