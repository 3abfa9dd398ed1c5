"""Deblurring pipeline, baselines and the bar-angle estimator (fast settings)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eit_manifold.baselines.image import div2d, grad2d, tikhonov_deblur, tv_deblur
from eit_manifold.data.images import BAR_BACKGROUND, make_images, render_bar
from eit_manifold.manifold import Atlas, ChartConfig, save_atlas
from eit_manifold.metrics import angle_error, psnr
from eit_manifold.operators.blur import GaussianBlur
from eit_manifold.pipelines.deblur import DeblurConfig, bar_angle, run_deblur


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


def test_tikhonov_meets_discrepancy_and_beats_data(blurred_bars) -> None:
    x, op, y = blurred_bars
    res = tikhonov_deblur(y, op, 0.02)
    assert np.allclose(res.residual, 0.02 * 32, rtol=1e-3)
    assert np.mean(psnr(res.x, x, batch=True)) > np.mean(psnr(y, x, batch=True))


def test_tv_meets_discrepancy_and_beats_data(blurred_bars) -> None:
    x, op, y = blurred_bars
    res = tv_deblur(y, op, 0.02, n_bisect=10, n_iter=150)
    assert np.allclose(res.residual, 0.02 * 32, rtol=0.05)
    assert np.mean(psnr(res.x, x, batch=True)) > np.mean(psnr(y, x, batch=True))


def test_baselines_reject_bad_noise(blurred_bars) -> None:
    _, op, y = blurred_bars
    with pytest.raises(ValueError, match="noise_std"):
        tikhonov_deblur(y, op, 0.0)
    with pytest.raises(ValueError, match="shape"):
        tv_deblur(y[0, 0], op, 0.1)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="noise"):
        DeblurConfig(noise=-1.0)
    with pytest.raises(ValueError, match="n must"):
        DeblurConfig(n=0)
    assert DeblurConfig(atlas="foo").atlas_k1 == "foo-k1"


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
    assert set(saved["methods"]) == {"atlas K=2", "atlas K=1", "Tikhonov", "TV"}
    for m in saved["methods"].values():
        assert len(m["psnr"]["values"]) == 2
        assert m["psnr"]["mean"] == pytest.approx(np.mean(m["psnr"]["values"]))
        assert 0 <= m["angle_error_deg"]["mean"] <= 90
    assert "| atlas K=2 |" in (tmp_path / "out" / "results.md").read_text()
    again = run_deblur(cfg, tmp_path / "out2")
    assert again["methods"] == res["methods"]
