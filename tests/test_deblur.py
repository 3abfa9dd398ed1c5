"""Deblurring pipeline, baselines and the bar-angle estimator (fast settings)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eit_manifold.baselines.image import (
    div2d,
    grad2d,
    select_parameter,
    tikhonov_deblur,
    tv_deblur,
    validation_split,
)
from eit_manifold.data.images import BAR_BACKGROUND, make_images, render_bar
from eit_manifold.manifold import Atlas, ChartConfig, save_atlas
from eit_manifold.metrics import angle_error, psnr
from eit_manifold.operators.blur import GaussianBlur
from eit_manifold.pipelines.deblur import (
    OUT_OF_FAMILY,
    DeblurConfig,
    bar_angle,
    out_of_family_images,
    run_deblur,
)


@pytest.mark.parametrize("angle", [0.0, 0.4, 1.2, 2.0, 3.0])
def test_bar_angle_recovers_generating_angle(angle: float) -> None:
    est = bar_angle(render_bar(angle, 64))
    assert angle_error(est[0], angle) < math.radians(1.0)


def test_grad_div_adjoint() -> None:
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 9, 7, generator=gen, dtype=torch.float64)
    p = torch.randn(2, 2, 9, 7, generator=gen, dtype=torch.float64)
    assert float((grad2d(u) * p).sum()) == pytest.approx(-float((u * div2d(p)).sum()), rel=1e-12)


@pytest.fixture(scope="module")
def blurred_bars():
    images, _ = make_images("bars", 3, "test", 0, 32)
    x = torch.from_numpy(images).double()
    op = GaussianBlur.paper(32, background=BAR_BACKGROUND, noise_std=0.02)
    return x, op, op.measure(x, torch.Generator().manual_seed(0))


def test_tikhonov_is_the_regularised_least_squares_solution(blurred_bars) -> None:
    x, op, y = blurred_bars
    alpha = 0.05
    res = tikhonov_deblur(y, op, alpha)
    # Normal equations (A0^T A0 + alpha I) u = A0^T f, solved densely as a reference.
    n = 32 * 32
    a0 = torch.kron(op.matrix_1d(32), op.matrix_1d(32))
    f = (y - BAR_BACKGROUND).reshape(3, n).T
    u = torch.linalg.solve(a0.T @ a0 + alpha * torch.eye(n, dtype=a0.dtype), a0.T @ f)
    torch.testing.assert_close(res.x.reshape(3, n).T - BAR_BACKGROUND, u, atol=1e-8, rtol=1e-6)
    r = torch.linalg.norm(a0 @ u - f, dim=0).numpy()
    np.testing.assert_allclose(res.residual, r, rtol=1e-6)


def test_tv_decreases_its_objective_and_beats_data(blurred_bars) -> None:
    x, op, y = blurred_bars
    lam = 0.01

    def objective(xh: torch.Tensor) -> float:
        u = xh - BAR_BACKGROUND
        tv = torch.sqrt((grad2d(u) ** 2).sum(dim=1)).sum()
        return float(0.5 * ((op.linear(u) - (y - BAR_BACKGROUND)) ** 2).sum() + lam * tv)

    short, long = tv_deblur(y, op, lam, n_iter=20), tv_deblur(y, op, lam, n_iter=400)
    assert objective(long.x) < objective(short.x) < objective(torch.full_like(y, BAR_BACKGROUND))
    assert np.mean(psnr(long.x, x, batch=True)) > np.mean(psnr(y, x, batch=True))


def test_baselines_reject_bad_parameters(blurred_bars) -> None:
    _, op, y = blurred_bars
    with pytest.raises(ValueError, match="alpha"):
        tikhonov_deblur(y, op, 0.0)
    with pytest.raises(ValueError, match="shape"):
        tv_deblur(y[0, 0], op, 0.1)
    with pytest.raises(ValueError, match="method"):
        select_parameter("wiener", op, 32)


@pytest.fixture(scope="module")
def paper_choices():
    """The validation rule at the paper's setting (64 x 64, noise std 0.1)."""
    op = GaussianBlur.paper(64, background=BAR_BACKGROUND, noise_std=0.1)
    return op, {m: select_parameter(m, op, 64) for m in ("tikhonov", "tv")}


def test_every_baseline_beats_the_constant_image_on_each_heldout_bar(paper_choices) -> None:
    op, choices = paper_choices
    images, _ = make_images("bars", 20, "test", 0, 64)  # disjoint from the validation split
    x = torch.from_numpy(images).double()
    y = op.measure(x, torch.Generator().manual_seed(0))
    constant = psnr(torch.full_like(x, BAR_BACKGROUND), x, batch=True)
    for x_hat in (tikhonov_deblur(y, op, choices["tikhonov"].value).x,
                  tv_deblur(y, op, choices["tv"].value).x):
        assert np.all(psnr(x_hat, x, batch=True) > constant)
    for c in choices.values():
        assert c.safeguarded and min(c.grid) < c.value < max(c.grid)


def test_parameter_rule_is_deterministic_and_uses_no_test_images(paper_choices) -> None:
    op, choices = paper_choices
    again = select_parameter("tikhonov", op, 64)
    assert again.value == choices["tikhonov"].value and again.mean_psnr == choices["tikhonov"].mean_psnr
    x_val, _ = validation_split(op, 64)
    x_test, _ = make_images("bars", 20, "test", 0, 64)
    assert not any(np.array_equal(v, t) for v in x_val.numpy() for t in x_test)
    other = select_parameter("tv", op, 64, seed=1)  # another validation split: a nearby weight
    assert abs(math.log10(other.value / choices["tv"].value)) <= 0.5


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="noise"):
        DeblurConfig(noise=-1.0)
    with pytest.raises(ValueError, match="n must"):
        DeblurConfig(n=0)
    assert DeblurConfig(atlas="foo").atlas_k1 == "foo-k1"


def test_out_of_family_images_are_not_bars() -> None:
    x = out_of_family_images(64)
    assert x.shape == (len(OUT_OF_FAMILY), 64, 64)
    bars, _ = make_images("bars", 50, "test", 0, 64)
    for img in x.numpy():
        assert set(np.round(np.unique(img), 6)) >= {0.5}
        assert np.min(np.abs(bars - img).sum(axis=(1, 2))) > 20  # far from every bar
    cross = x[list(OUT_OF_FAMILY).index("cross")]
    assert float(cross.max()) == pytest.approx(0.75)  # overlap keeps the bar value


def _tiny_atlas(path, k: int) -> str:
    torch.manual_seed(k)
    cfg = ChartConfig(
        data_shape=(16, 16),
        latent_dim=1,
        levels=2,
        conv_blocks=1,
        conv_hidden=8,
        blocks=2,
        hidden=16,
    )
    atlas = Atlas(cfg, k)
    atlas.set_normalization(torch.full((16, 16), BAR_BACKGROUND), 0.1)
    save_atlas(atlas, path / f"k{k}")
    return str(path / f"k{k}")


@pytest.mark.slow
def test_pipeline_writes_outputs_and_is_deterministic(tmp_path) -> None:
    # Untrained tiny atlases: exercises the whole pipeline, not the quality.
    a2, a1 = _tiny_atlas(tmp_path, 2), _tiny_atlas(tmp_path, 1)
    cfg = DeblurConfig(atlas=a2, atlas_k1=a1, n=2, n_starts=2, max_iter=3, n_figure=2)
    res = run_deblur(cfg, tmp_path / "out")
    for name in ("results.json", "results.md", "reconstructions.png"):
        assert (tmp_path / "out" / name).is_file()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["methods"]) == {"atlas K=2", "atlas K=1", "Tikhonov", "TV", "constant"}
    for m in saved["methods"].values():
        assert len(m["psnr"]["values"]) == 2
        assert m["psnr"]["mean"] == pytest.approx(np.mean(m["psnr"]["values"]))
        assert 0 <= m["angle_error_deg"]["mean"] <= 90
    for m in saved["out_of_family"].values():
        assert len(m["psnr"]["values"]) == len(OUT_OF_FAMILY)
    assert saved["parameters"]["tv"]["value"] > 0
    assert (tmp_path / "out" / "out_of_family.png").is_file()
    assert "| atlas K=2 |" in (tmp_path / "out" / "results.md").read_text()
    again = run_deblur(cfg, tmp_path / "out2")
    assert again["methods"] == res["methods"]
