"""The ``learned`` KTC method: phantoms, simulated pairs, the U-Net segmenter, its checks."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from ktc_paths import ktc_dir

from eit_manifold.ktc.phantoms import CONTRAST_EXPONENTS, Target, label_image, labels_at, sample_phantom
from eit_manifold.ktc.segmenter import (
    SegmenterNet,
    SegmenterTrainConfig,
    load_segmenter,
    predict,
    save_segmenter,
    segmentation_loss,
    train_segmenter,
)

R = 0.115


def _square(cx: float, cy: float, half: float, label: int, factor: float) -> Target:
    v = np.array([[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half]])
    return Target(v, label, factor)


def test_labels_and_label_image_orientation():
    targets = [_square(0.0, 0.06, 0.02, 2, 100.0), _square(-0.05, -0.05, 0.01, 1, 0.01)]
    label, factor = labels_at(targets, np.array([[0.0, 0.06], [-0.05, -0.05], [0.05, 0.05], [0.0, 0.081]]))
    assert label.tolist() == [2, 1, 0, 0] and factor.tolist() == [100.0, 0.01, 1.0, 1.0]
    img = label_image(targets, 64)
    rows, cols = np.nonzero(img == 2)
    assert rows.max() < 32 and abs(cols.mean() - 31.5) < 1  # +y is the top of the image (row 0)
    # the square's area to within the pixels its edges cut
    h = 2 * R / 64
    assert abs((img == 2).sum() * h * h - 0.04**2) < 4 * 0.04 * h
    with pytest.raises(ValueError, match="points"):
        labels_at(targets, np.zeros((3, 3)))


def test_phantoms_are_reproducible_and_within_their_ranges():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sample_phantom(rng) for _ in range(200)]

    a, b = draw(1), draw(1)
    assert all(np.array_equal(s.vertices, t.vertices) for p, q in zip(a, b, strict=True)
               for s, t in zip(p, q, strict=True))
    targets = [t for p in a for t in p]
    assert {len(p) for p in a} == {1, 2, 3, 4}
    assert {t.label for t in targets} == {1, 2}
    lo, hi = CONTRAST_EXPONENTS
    for t in targets:
        exponent = np.log10(t.factor) * (1 if t.label == 2 else -1)
        assert lo <= exponent <= hi
        assert np.hypot(*t.vertices.T).max() <= R * (1 - 0.08) + 1e-12  # inside the allowed disk
    # some targets are non-convex (area below that of their convex hull)
    from scipy.spatial import ConvexHull

    def area(v):
        x, y = v.T
        return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))

    ratios = [area(t.vertices) / ConvexHull(t.vertices).volume for t in targets]
    assert min(ratios) < 0.8 and max(ratios) > 0.99
    # the smooth blobs (64 vertices) are among them, some non-convex too
    blobs = [r for t, r in zip(targets, ratios, strict=True) if len(t.vertices) == 64]
    assert blobs and min(blobs) < 0.95


@functools.cache
def _small_tank():
    """A coarse 32-electrode tank of the KTC radius and a reference measurement on it (2 patterns)."""
    from eit_manifold.ktc.calibration import Calibration, forward_model
    from eit_manifold.ktc.data import read_ktc
    from eit_manifold.operators.eit import MeshOptions

    ref = read_ktc(ktc_dir() / "ref.mat", 1)
    keep = [0, 16]
    from dataclasses import replace

    ref = replace(ref, currents=ref.currents[keep], data=ref.data[keep], patterns=ref.patterns[keep])
    cal = Calibration(0.73, np.full(32, 4e-4), 0.0, currents="nominal",
                      mesh_options=MeshOptions(mesh_size=0.02, refinement=4.0, grading_radius=2.0))
    return cal, ref, forward_model(cal.mesh(), ref, cal.contact_impedance, cal.currents)


def test_simulated_pairs_are_reproducible_and_physical():
    from eit_manifold.ktc.simulation import SimulationConfig, simulate_pairs

    cal, ref, _ = _small_tank()
    seen = []

    def reconstruct(changes):
        seen.append(changes.shape)
        return np.zeros((changes.shape[1], 8, 8))

    exact = {"shift_std": 0.0, "width_std": 0.0, "impedance_std": 0.0, "contact_change_std": 0.0,
             "offset_std": 0.0, "offset_drift": 0.0}
    config = SimulationConfig(noise=(1e-9, 1e-9), drift=0.0, mesh_size=0.015, label_size=16, **exact)
    a = simulate_pairs(cal, ref, reconstruct, 6, np.random.default_rng(3), config, truth_size=32, progress=False)
    b = simulate_pairs(cal, ref, None, 6, np.random.default_rng(3), config, progress=False)
    assert seen == [(2 * 31, 6)] and "inputs" not in b  # without a reconstruction: changes only
    assert np.array_equal(a["changes"], b["changes"]) and np.array_equal(a["labels"], b["labels"])
    assert a["inputs"].shape == (6, 8, 8) and a["labels"].shape == (6, 16, 16) and a["truths"].shape == (6, 32, 32)
    assert np.all(np.abs(a["changes"]).max(axis=1) > 0)  # every phantom has a target, so the data change
    # Without model error the simulated change is F(sigma) - F(sigma0): redo one by hand from the same draws.
    rng = np.random.default_rng(3)
    rng.uniform(size=6)  # the noise levels are drawn first
    rng.standard_normal((4, 32))  # then the tank: shifts, widths, impedances, their change (all scaled by 0)
    targets = sample_phantom(rng)
    from eit_manifold.ktc.calibration import forward_model, ktc_mesh
    from eit_manifold.operators.eit import MeshOptions

    opts = MeshOptions(mesh_size=0.015, refinement=cal.mesh_options.refinement,
                       grading_radius=cal.mesh_options.grading_radius)
    model = forward_model(ktc_mesh(cal.tank(), opts), ref, cal.contact_impedance, cal.currents)
    _, factor = labels_at(targets, model.centroids)
    expected = model.measurements(cal.sigma * factor) - model.measurements(np.full(model.n_cells, cal.sigma))
    assert np.allclose(a["clean"][0], expected.ravel(), rtol=1e-4, atol=1e-6)
    assert np.allclose(a["changes"][0], expected.ravel(), rtol=1e-4, atol=1e-6)
    # With the default model error the same phantoms give other, similar-sized changes; the noise
    # (changes - clean) has the drawn level.
    c = simulate_pairs(cal, ref, None, 6, np.random.default_rng(3), SimulationConfig(mesh_size=0.015, label_size=16),
                       progress=False)
    assert np.array_equal(c["labels"], a["labels"])
    # the model error is of the size of the calibration's misfit (a few per cent of the data), not more
    err = np.linalg.norm(c["clean"] - a["clean"], axis=1) / np.linalg.norm(ref.data)
    assert np.all(err > 1e-5) and np.all(err < 0.03)
    scale = np.sqrt(np.mean(ref.data**2))
    rms = np.sqrt(np.mean((c["changes"] - c["clean"]) ** 2, axis=1)) / scale
    np.testing.assert_allclose(rms, c["noise"], rtol=0.35)
    with pytest.raises(ValueError, match="noise range"):
        SimulationConfig(noise=(0.02, 0.01))


def _disk_task(n: int, seed: int):
    """Toy segmentation task: a signed disk in a noisy blurred image; labels = the disk's class."""
    rng = np.random.default_rng(seed)
    c = (np.arange(32) + 0.5) / 32 * 2 - 1
    X, Y = np.meshgrid(c, -c)
    c16 = (np.arange(16) + 0.5) / 16 * 2 - 1
    X16, Y16 = np.meshgrid(c16, -c16)
    inputs, labels = [], []
    for _ in range(n):
        cx, cy, r = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(0.2, 0.4)
        sign = rng.choice([-1.0, 1.0])
        blob = np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * r * r))
        inputs.append(sign * blob + 0.05 * rng.standard_normal(X.shape))
        labels.append(np.where(np.hypot(X16 - cx, Y16 - cy) < r, 2 if sign > 0 else 1, 0))
    return np.array(inputs, dtype=np.float32), np.array(labels, dtype=np.uint8)


def test_segmenter_learns_a_toy_task_and_resumes_exactly(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    x, y = _disk_task(96, 0)
    config = SegmenterTrainConfig(epochs=12, batch_size=16, lr=5e-3, width=8, size=16, seed=0)
    net, history = train_segmenter(x, y, config, progress=False)
    assert history[-1] < 0.5 * history[0]
    xv, yv = _disk_task(32, 1)
    labels, prob = predict(net, xv, out_size=16)
    assert prob.shape == (32, 3, 16, 16) and np.allclose(prob.sum(axis=1), 1, atol=1e-5)
    inside = np.hypot(*np.meshgrid(np.arange(16) - 7.5, np.arange(16) - 7.5)) < 8
    assert np.mean(labels[:, inside] == yv[:, inside]) > 0.9
    assert np.all(labels[:, ~inside] == 0)
    # Interrupt after the 5th epoch's checkpoint, then resume: the same network as without interruption.
    import eit_manifold.ktc.segmenter as seg

    real_save, calls = seg.save_training_checkpoint, []

    def save_then_stop(path, state):
        real_save(path, state)
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt.pt"
    monkeypatch.setattr(seg, "save_training_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(x, y, config, checkpoint=ckpt, progress=False)
    monkeypatch.setattr(seg, "save_training_checkpoint", real_save)
    resumed, history2 = train_segmenter(x, y, config, checkpoint=ckpt, progress=False)
    assert history2 == history
    for (k, a), b in zip(net.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="other settings"):
        train_segmenter(x, y, SegmenterTrainConfig(epochs=13, batch_size=16, lr=5e-3, width=8, size=16),
                        checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="labels must be 0, 1 or 2"):
        train_segmenter(x, np.full_like(y, 3), config, progress=False)


def test_loss_is_small_for_confident_right_answers():
    labels = torch.randint(0, 3, (2, 8, 8))
    right = 20.0 * torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert float(segmentation_loss(right, labels)) < 1e-3 + 0.05
    assert float(segmentation_loss(-right, labels)) > 1.0


def test_save_and_load_round_trip_and_corruption(tmp_path):
    torch.manual_seed(0)
    net = SegmenterNet(width=4, size=16).eval()
    net.input_scale.fill_(3.0)
    save_segmenter(net, tmp_path / "net", {"level": 1})
    loaded, meta = load_segmenter(tmp_path / "net")
    assert meta["level"] == 1 and float(loaded.input_scale) == 3.0
    x = torch.randn(2, 12, 12)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    weights = tmp_path / "net" / "segmenter.pt"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError, match="hash mismatch"):
        load_segmenter(tmp_path / "net")
    cfg = json.loads((tmp_path / "net" / "config.json").read_text())
    (tmp_path / "net" / "config.json").write_text(json.dumps({**cfg, "format": "other"}))
    with pytest.raises(ValueError, match="not a KTC segmenter"):
        load_segmenter(tmp_path / "net")
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        load_segmenter(tmp_path / "nothing")
    with pytest.raises(ValueError, match="multiple of 8"):
        SegmenterNet(width=4, size=12)
    with pytest.raises(ValueError, match="shape"):
        predict(net, np.zeros((2, 2, 3, 3)))


def _small_context():
    """A ReconstructionContext on the small tank (16-pixel grid) and a data change (a 10 % drop)."""
    from eit_manifold.baselines.eit_linear import jacobian_in_basis, noise_std, pixel_basis
    from eit_manifold.ktc.methods import ReconstructionContext

    cal, ref, model = _small_tank()
    basis = pixel_basis(model, 16)
    res = model.solve(np.full(model.n_cells, cal.sigma))
    ctx = ReconstructionContext(model, cal, ref, basis, jacobian_in_basis(model, res, basis.matrix),
                                noise_std(ref.data))
    change = (model.measurements(np.full(model.n_cells, 0.9 * cal.sigma)) - res.measurements).ravel()
    return ctx, change


def test_segmenter_inputs_are_linear_reconstructions_with_weaker_priors():
    from eit_manifold.ktc.methods import linear_images, segmenter_inputs

    ctx, change = _small_context()
    rng = np.random.default_rng(0)
    changes = np.stack([change, change + 0.01 * np.abs(change).max() * rng.standard_normal(change.size)], axis=1)
    inputs = segmenter_inputs(ctx, changes, [1.0, 3.0, 30.0])
    assert inputs.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(inputs[:, 0], linear_images(ctx, changes) / ctx.sigma0)
    # the cached linear map gives the MAP estimate with the prior's std times the scale
    from eit_manifold.baselines.eit_linear import tikhonov_solve

    direct = tikhonov_solve(ctx.jacobian, changes, ctx.std, ctx.prior() / 30.0) / ctx.sigma0
    np.testing.assert_allclose(inputs[:, 2].reshape(2, -1)[:, ctx.basis.active], direct.T, rtol=1e-7,
                               atol=1e-9 * np.abs(direct).max())
    # A weaker prior fits the data better: the weighted misfit falls as the prior's std grows.
    for k in range(2):
        misfits = []
        for c in range(3):
            pixels = inputs[k, c].ravel()[ctx.basis.active] * ctx.sigma0
            misfits.append(np.linalg.norm((ctx.jacobian @ pixels - changes[:, k]) / ctx.std))
        assert misfits[0] > misfits[1] > misfits[2]
    for bad in ([], [1.0, 0.0], [float("nan")]):
        with pytest.raises(ValueError, match="prior scales"):
            segmenter_inputs(ctx, changes, bad)


def test_multichannel_segmenter_round_trip_and_shapes(tmp_path):
    torch.manual_seed(0)
    net = SegmenterNet(width=4, size=16, channels=3).eval()
    net.input_scale.copy_(torch.tensor([1.0, 2.0, 3.0]))
    save_segmenter(net, tmp_path / "net", {"prior_scales": [1, 3, 10]})
    loaded, meta = load_segmenter(tmp_path / "net")
    assert meta["channels"] == 3 and loaded.channels == 3
    assert torch.equal(loaded.input_scale, torch.tensor([1.0, 2.0, 3.0]))
    x = np.random.default_rng(1).standard_normal((5, 3, 12, 12)).astype(np.float32)
    labels, prob = predict(loaded, x, out_size=32)
    assert labels.shape == (5, 32, 32) and prob.shape == (5, 3, 32, 32)
    one, _ = predict(loaded, x[2], out_size=32)
    np.testing.assert_array_equal(one, labels[2])
    # the channels are used: changing the third one changes the output
    y = x.copy()
    y[:, 2] *= -5
    assert not np.allclose(predict(loaded, y, out_size=32)[1], prob)
    with pytest.raises(ValueError, match=r"\(k, 3, h, w\)"):
        predict(loaded, x[:, :2])
    with pytest.raises(ValueError, match=r"\(B, 3, h, w\)"):
        loaded(torch.zeros(1, 12, 12))
    with pytest.raises(ValueError, match=r"channels must be in \[1, 64\]"):
        SegmenterNet(width=4, size=16, channels=0)


def test_networks_saved_before_channels_still_load(tmp_path):
    """A network saved with a scalar ``input_scale`` and no ``channels`` entry is a 1-channel network."""
    from eit_manifold.manifold.checkpoint import file_sha256

    torch.manual_seed(0)
    net = SegmenterNet(width=4, size=16).eval()
    net.input_scale.fill_(2.5)
    save_segmenter(net, tmp_path / "old", {})
    state = net.state_dict()
    state["input_scale"] = torch.tensor(2.5)
    torch.save(state, tmp_path / "old" / "segmenter.pt")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    cfg.pop("channels")
    cfg["sha256"] = file_sha256(tmp_path / "old" / "segmenter.pt")
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    loaded, _ = load_segmenter(tmp_path / "old")
    assert loaded.channels == 1 and torch.equal(loaded.input_scale, torch.tensor([2.5]))
    x = torch.randn(2, 12, 12)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))


def test_learned_method_checks_its_network_against_the_run(tmp_path):
    from eit_manifold.ktc.methods import KTC_METHODS, MethodOptions, MethodResult, Resources

    ctx, change = _small_context()
    cal, ref = ctx.calibration, ctx.reference

    def using(name):
        ctx.resources = Resources(MethodOptions(segmenter=str(tmp_path / name)))
        return KTC_METHODS["learned"](ctx, change)

    net = SegmenterNet(width=4, size=16).eval()
    meta = {"level": 1, "grid": 16, "patterns": ref.patterns.tolist(), "measurements": ref.measurements.tolist(),
            "sigma0": cal.sigma}
    save_segmenter(net, tmp_path / "ok", meta)
    out = using("ok")
    assert isinstance(out, MethodResult) and out.labels.shape == (256, 256) and out.image.shape == (16, 16)
    # a two-channel network gets the reconstructions at its own prior scales
    save_segmenter(SegmenterNet(width=4, size=16, channels=2).eval(), tmp_path / "two",
                   {**meta, "prior_scales": [1.0, 10.0]})
    assert using("two").labels.shape == (256, 256)
    # a mask-conditioned network for several kept sets: one image channel plus the mask
    kept = [{"level": 1, "patterns": [0], "measurements": [0]},
            {"level": 2, "patterns": meta["patterns"], "measurements": meta["measurements"]}]
    save_segmenter(SegmenterNet(width=4, size=16, channels=2).eval(), tmp_path / "mask",
                   {"grid": 16, "sigma0": cal.sigma, "prior_scales": [1.0], "mask_channel": True, "kept_sets": kept})
    assert using("mask").labels.shape == (256, 256)
    save_segmenter(SegmenterNet(width=4, size=16, channels=2).eval(), tmp_path / "mask",
                   {"grid": 16, "sigma0": cal.sigma, "prior_scales": [1.0], "mask_channel": True,
                    "kept_sets": kept[:1]})
    with pytest.raises(ValueError, match=r"trained for level\(s\) \[1\]"):
        using("mask")
    for bad, match in [({"patterns": [0]}, "level"), ({"grid": 48}, "grid"), ({"sigma0": 2 * cal.sigma}, "water"),
                       ({"prior_scales": [1.0]}, "prior scales")]:
        save_segmenter(SegmenterNet(width=4, size=16, channels=2).eval(), tmp_path / "bad",
                       {**meta, "prior_scales": [1.0, 10.0], **bad})
        with pytest.raises(ValueError, match=match):
            using("bad")


def test_bundled_segmenter_covers_every_level():
    from eit_manifold.ktc.data import read_ktc
    from eit_manifold.ktc.levels import restrict_level
    from eit_manifold.ktc.methods import BUNDLED_SEGMENTER

    net, meta = load_segmenter(BUNDLED_SEGMENTER)
    ref = read_ktc(ktc_dir() / "ref.mat", 1)
    assert meta["levels"] == list(range(1, 8)) and meta["grid"] == 48 and meta["mask_channel"]
    for kept in meta["kept_sets"]:
        sub = restrict_level(ref, kept["level"])
        assert kept["patterns"] == sub.patterns.tolist() and kept["measurements"] == sub.measurements.tolist()
    # on its own simulated validation set it beat the linear method + Otsu rule at every level
    for level in map(str, meta["levels"]):
        assert meta["validation"][level]["learned"]["mean"] > meta["validation"][level]["linear"]["mean"]
    assert len(meta["prior_scales"]) + 1 == net.channels and meta["prior_scales"][0] == 1.0
    labels, _ = predict(net, np.zeros((net.channels, 48, 48)))
    assert labels.shape == (256, 256)

