"""Atlas API, bounded prior, and checkpoint save/load with validation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from eit_manifold.manifold import Atlas, ChartConfig, bundled_atlases, load_atlas, save_atlas
from eit_manifold.manifold.flows import BoundedPrior


def _atlas(k: int = 3, seed: int = 0, **cfg) -> Atlas:
    torch.manual_seed(seed)
    atlas = Atlas(ChartConfig(data_shape=(3,), latent_dim=2, blocks=2, hidden=8, **cfg), k)
    with torch.no_grad():
        for p in atlas.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return atlas.eval()


def test_bounded_prior_density_and_samples() -> None:
    prior = BoundedPrior(1)
    t = torch.linspace(-2, 2, 40001).unsqueeze(1)
    mass = prior.log_prob(t).exp().sum() * (4 / 40000)
    assert mass == pytest.approx(1.0, abs=1e-3)
    assert prior.energy(torch.tensor([[0.79], [1.0]])).tolist() == pytest.approx([0.0, 8.0])
    s = BoundedPrior(2).sample(20000, torch.Generator().manual_seed(0))
    assert s.abs().max() < 1.3
    inside = (s.abs() <= 0.8).float().mean().item()
    assert inside == pytest.approx(1.6 / (1.6 + math.sqrt(2 * math.pi) * 0.05), abs=0.01)


def test_atlas_api_shapes() -> None:
    atlas = _atlas()
    assert (atlas.n_charts, atlas.latent_dim, atlas.data_shape, atlas.image_shape) == (3, 2, (3,), None)
    x, charts = atlas.sample(50, torch.Generator().manual_seed(0), return_charts=True)
    assert x.shape == (50, 3) and charts.shape == (50,) and set(charts.tolist()) <= {0, 1, 2}
    probs = atlas.chart_probabilities(x)
    assert probs.shape == (50, 3)
    assert torch.allclose(probs.sum(1), torch.ones(50))
    # a sample of chart k is (numerically) on chart k, so its projection there returns it
    with torch.no_grad():
        w = atlas.sample_latent(1, 10)
        xk = atlas.charts[1].decode(w)
        assert torch.allclose(atlas.charts[1].encode(xk), w, atol=1e-5)
        proj = atlas.project(xk + 0.05)
        assert torch.allclose(atlas.project(proj), proj, atol=1e-4)


def test_log_prior_latent_is_the_chart_prior_plus_the_log_weight() -> None:
    atlas = _atlas(k=3)
    atlas.set_weights(torch.tensor([0.2, 0.3, 0.5]))
    w = torch.tensor([[0.1, -0.2], [0.9, 0.0], [0.0, 1.2]], dtype=torch.float64)
    charts = torch.tensor([2, 0, 2])
    log_z = 2 * math.log(1.6 + math.sqrt(2 * math.pi) * 0.05)  # the bounded prior's normaliser, d = 2
    # energies 0 (plateau), 0.1^2 / (2 0.05^2) = 2 and 0.4^2 / (2 0.05^2) = 32
    want = [math.log(0.5) - log_z, math.log(0.2) - 2.0 - log_z, math.log(0.5) - 32.0 - log_z]
    got = atlas.log_prior_latent(charts, w)
    assert got.dtype == torch.float64 and got.tolist() == pytest.approx(want, rel=1e-6)
    # the start score of the descent: negative log-likelihood minus this log-prior
    from eit_manifold.optim import posterior_score

    score = posterior_score(atlas, lambda x: torch.full((len(x),), 10.0, dtype=torch.float64))
    assert score(torch.zeros(3, 3), charts, w).tolist() == pytest.approx([10.0 - v for v in want], rel=1e-6)


def test_project_is_the_nearest_chart_projection_and_fixes_every_chart_image() -> None:
    atlas = _atlas()
    with torch.no_grad():
        x = torch.randn(40, 3)
        candidates = torch.stack([c.project(x) for c in atlas.charts], dim=1)
        nearest = (candidates - x[:, None]).norm(dim=2).min(dim=1).values
        proj = atlas.project(x)
        assert torch.allclose((proj - x).norm(dim=1), nearest)
        points, charts = atlas.project_on_every_chart(x)
        assert points.shape == (3 * 40, 3) and charts.tolist() == [k for k in range(3) for _ in range(40)]
        assert torch.equal(points[40:80], atlas.charts[1].project(x))
    # an overlap: chart 1 is a slightly perturbed copy of chart 0, and chart 0 is far more responsible
    atlas = _atlas(k=2)
    with torch.no_grad():
        atlas.charts[1].load_state_dict(atlas.charts[0].state_dict())
        for p in atlas.charts[1].parameters():
            p.add_(1e-3 * torch.randn_like(p, generator=torch.Generator().manual_seed(1)))
        atlas.set_weights(torch.tensor([0.999, 0.001]))
        x1 = atlas.charts[1].decode(atlas.sample_latent(1, 30))
        assert (atlas.best_chart(x1) == 0).all()
        assert (atlas.charts[0].project(x1) - x1).norm(dim=1).max() > 1e-4  # the charts disagree
        assert torch.allclose(atlas.project(x1), x1, atol=1e-5)  # yet chart 1's points stay in place


def test_bad_inputs_raise_clear_errors() -> None:
    atlas = _atlas()
    with pytest.raises(ValueError, match=r"expected data of shape \(B, 3\), got \(4, 2\)"):
        atlas.project(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"expected latents of shape \(B, 2\)"):
        atlas.charts[0].decode(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="chart index"):
        atlas.sample_latent(5, 2)
    with pytest.raises(ValueError, match="latent_dim"):
        ChartConfig(data_shape=(3,), latent_dim=3)
    with pytest.raises(ValueError, match="divisible"):
        ChartConfig(data_shape=(60, 60), latent_dim=2)


def test_save_load_roundtrip(tmp_path) -> None:
    atlas = _atlas()
    atlas.set_weights(torch.tensor([0.2, 0.3, 0.5]))
    save_atlas(atlas, tmp_path)
    loaded = load_atlas(tmp_path)
    assert not loaded.training
    x = atlas.sample(20, torch.Generator().manual_seed(1))
    assert torch.equal(loaded.project(x), atlas.project(x))
    assert torch.allclose(loaded.weights, torch.tensor([0.2, 0.3, 0.5]))


def test_corrupt_and_mismatched_files_are_rejected(tmp_path) -> None:
    atlas = _atlas()
    save_atlas(atlas, tmp_path / "a")
    weights = tmp_path / "a" / "atlas.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="hash mismatch"):
        load_atlas(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    config.pop("sha256")
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="corrupt checkpoint file"):
        load_atlas(tmp_path / "a")

    # weights of a different architecture under a valid config: error names the entry
    save_atlas(atlas, tmp_path / "b")
    save_atlas(_atlas(k=1), tmp_path / "c")
    (tmp_path / "b" / "atlas.pt").write_bytes((tmp_path / "c" / "atlas.pt").read_bytes())
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config.pop("sha256")
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match the model: missing keys"):
        load_atlas(tmp_path / "b")

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt JSON"):
        load_atlas(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="no atlas"):
        load_atlas(tmp_path / "missing")


def test_shape_mismatch_names_entry(tmp_path) -> None:
    save_atlas(_atlas(k=2), tmp_path / "a")
    state = torch.load(tmp_path / "a" / "atlas.pt")
    key = next(k for k in state if k.endswith("raw"))
    state[key] = torch.zeros(7, 7)
    torch.save(state, tmp_path / "a" / "atlas.pt")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    config.pop("sha256")
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"entry '{key}' has shape \(7, 7\)"):
        load_atlas(tmp_path / "a")


def test_image_shape_is_checked_before_the_weights_are_read(tmp_path) -> None:
    """``load_atlas(..., image_shape)``: one check for every caller, fixed by the hint's option."""
    save_atlas(_atlas(), tmp_path / "a")
    (tmp_path / "a" / "atlas.pt").unlink()  # a shape error must not need the weights
    with pytest.raises(ValueError, match=r"makes images of shape None, \(8, 8\) are needed: use None instead"):
        load_atlas(tmp_path / "a", (8, 8), ": use {size} instead")
    assert load_atlas("bars", (64, 64)).image_shape == (64, 64)
    with pytest.raises(ValueError, match=r"'bars' makes images of shape \(64, 64\), \(32, 32\) are needed: "
                                         r"pass --image-size 64"):
        load_atlas("bars", (32, 32), ": pass --image-size {size}")
    with pytest.raises(ValueError, match=r"needed \(those of 'a\{b\}'\)"):  # other braces stay as they are
        load_atlas("bars", (32, 32), " (those of 'a{b}')")


@pytest.mark.parametrize("name", ["bars", "bars-k1", "balls", "balls-k1", "balls-signed", "balls-signed-k1"])
def test_bundled_atlases_load(name: str) -> None:
    if name not in bundled_atlases():
        pytest.skip(f"bundled atlas {name} not shipped")
    atlas = load_atlas(name)
    assert atlas.image_shape == (64, 64)
    assert atlas.n_charts == (1 if name.endswith("k1") else 2)
    assert atlas.meta["dataset"] == name.removesuffix("-k1")  # names follow the family they learned
    x = atlas.sample(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 64, 64)
    # The encoder is the exact inverse (float64: 1e-8); in float32 deep invertible networks amplify
    # round-off for a few latents (a few % of prior samples reach 1e-3), so float32 is checked on
    # the median only.
    w = atlas.sample_latent(0, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        back32 = atlas.charts[0].encode(atlas.charts[0].decode(w))
        atlas64 = load_atlas(name).double()
        back64 = atlas64.charts[0].encode(atlas64.charts[0].decode(w.double()))
    assert torch.allclose(back64, w.double(), atol=1e-8)
    assert (back32 - w).abs().max(dim=1).values.median() < 1e-5


def test_calibrate_prior_puts_data_on_the_plateau() -> None:
    atlas = _atlas(k=1)
    chart = atlas.charts[0]
    x = 5.0 * torch.randn(400, 3)
    chart.calibrate_prior(x, quantile=0.05)
    with torch.no_grad():
        w = chart.encode(x)
    lo, hi = torch.quantile(w, 0.05, dim=0), torch.quantile(w, 0.95, dim=0)
    assert torch.allclose(lo, torch.full((2,), -0.8), atol=1e-3)
    assert torch.allclose(hi, torch.full((2,), 0.8), atol=1e-3)
