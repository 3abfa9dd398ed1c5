"""Learned segmentation of linearised KTC reconstructions (a small U-Net), trained on simulations.

The network maps linearised difference reconstructions (``channels`` images of any ``h x w`` on
[-R, R]^2, divided by the water conductivity, e.g. the same data reconstructed with several
regularisation strengths) to class logits (water, resistive, conductive) on a 64 x 64 grid; the
logits are resampled bilinearly to the 256 x 256 truth grid and the most likely class wins. Inputs
are resampled to 64 x 64 first, each channel scaled by its own training rms, and two coordinate
channels (x, y) are added, because the sensitivity of EIT, and so the look of a target, depends on
where it is.

Training (:func:`train_segmenter`): cross-entropy plus a soft Dice loss of the two target classes
(targets cover a few per cent of the image), Adam with a cosine learning-rate decay, a checkpoint
after every epoch from which training resumes. A trained network is a directory with
``config.json`` (format tag, architecture, input scale, training and simulation settings, kept
patterns/measurements, SHA-256 of the weights) and ``segmenter.pt``; loading validates all of it.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from eit_manifold.io import read_json, write_json
from eit_manifold.ktc.segmentation import remove_small_components
from eit_manifold.manifold.checkpoint import (
    file_sha256,
    load_training_checkpoint,
    save_training_checkpoint,
    torch_load_checked,
    torch_save_atomic,
    validate_state_dict,
)

SEGMENTER_FORMAT = "eit-manifold-ktc-segmenter/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "segmenter.pt"
N_CLASSES = 3
MAX_WIDTH, MAX_SIZE, MAX_CHANNELS = 256, 1024, 64  # architecture bounds (a 256-wide net has ~0.5e9 weights)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class SegmenterNet(nn.Module):
    """U-Net with three poolings: (B, C, h, w) reconstructions -> (B, 3, size, size) class logits.

    Parameters
    ----------
    width : int
        Channels of the first level (doubled at each pooling).
    size : int
        Side of the working grid and of the output (a multiple of 8).
    channels : int
        Input images per sample (``C``); with one, inputs may also be given as (B, h, w).
    """

    def __init__(self, width: int = 16, size: int = 64, channels: int = 1):
        super().__init__()
        from eit_manifold.validation import check_int

        # bounded before any allocation (a config.json may say anything)
        width, size, channels = (check_int("width", width, 1, MAX_WIDTH), check_int("size", size, 8, MAX_SIZE),
                                 check_int("channels", channels, 1, MAX_CHANNELS))
        if size % 8:
            raise ValueError(f"size must be a multiple of 8, got {size}")
        self.width, self.size, self.channels = width, size, channels
        w = self.width
        self.encoders = nn.ModuleList([_block(self.channels + 2, w), _block(w, 2 * w), _block(2 * w, 4 * w)])
        self.bottleneck = _block(4 * w, 8 * w)
        self.ups = nn.ModuleList([nn.ConvTranspose2d(c, c // 2, 2, stride=2) for c in (8 * w, 4 * w, 2 * w)])
        self.decoders = nn.ModuleList([_block(8 * w, 4 * w), _block(4 * w, 2 * w), _block(2 * w, w)])
        self.head = nn.Conv2d(w, N_CLASSES, 1)
        c = (torch.arange(size) + 0.5) / size * 2 - 1
        y, x = torch.meshgrid(-c, c, indexing="ij")  # row 0 at the top (y = +1)
        self.register_buffer("coords", torch.stack([x, y]))
        self.register_buffer("input_scale", torch.ones(self.channels))  # per channel, set by training

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim == 3 and self.channels == 1:
            image = image[:, None]
        if image.ndim != 4 or image.shape[1] != self.channels:
            raise ValueError(f"expected images of shape (B, {self.channels}, h, w), got {tuple(image.shape)}")
        x = F.interpolate(image * self.input_scale[:, None, None], size=(self.size, self.size), mode="bilinear",
                          align_corners=False)
        x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], dim=1)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)


@dataclass(frozen=True)
class SegmenterTrainConfig:
    """Training settings of :func:`train_segmenter`."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    width: int = 16
    size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        from eit_manifold.validation import MAX_SEED, check_float, check_int

        check_int("--epochs", self.epochs, 1, 10**6)
        check_int("batch_size", self.batch_size, 1, 10**6)
        check_float("lr", self.lr, 0.0, 1.0, lo_open=True)
        check_int("--width", self.width, 1, MAX_WIDTH)
        check_int("size", self.size, 8, MAX_SIZE)
        if self.size % 8:
            raise ValueError(f"size must be a multiple of 8, got {self.size}")
        check_int("--seed", self.seed, 0, MAX_SEED)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus ``1 -`` the mean soft Dice coefficient of the two target classes."""
    ce = F.cross_entropy(logits, labels)
    prob = logits.softmax(dim=1)[:, 1:]
    onehot = F.one_hot(labels, N_CLASSES).permute(0, 3, 1, 2)[:, 1:].to(prob.dtype)
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    dice = (2 * inter + 1.0) / (prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3)) + 1.0)
    return ce + (1.0 - dice.mean())


def _as_channels(inputs: np.ndarray) -> np.ndarray:
    """Training inputs as (n, C, h, w): (n, h, w) is one channel."""
    return inputs[:, None] if inputs.ndim == 3 else inputs


def _check_pairs(inputs: np.ndarray, labels: np.ndarray, size: int) -> None:
    if inputs.ndim not in (3, 4) or labels.ndim != 3 or len(inputs) != len(labels) or len(inputs) == 0:
        raise ValueError(f"need inputs (n, h, w) or (n, C, h, w) and labels (n, s, s) with the same n > 0, got "
                         f"{inputs.shape} and {labels.shape}")
    if labels.shape[1:] != (size, size):
        raise ValueError(f"labels must be {size} x {size} (the network's grid), got {labels.shape[1:]}")
    if not np.all(np.isfinite(inputs)):
        raise ValueError("inputs contain non-finite values")
    bad = np.setdiff1d(np.unique(labels), np.arange(N_CLASSES))
    if bad.size:
        raise ValueError(f"labels must be 0, 1 or 2, found {bad.tolist()[:5]}")


class ArraySource:
    """Fixed training inputs (n, C, h, w) as a batch source of :func:`train_segmenter`."""

    def __init__(self, inputs: np.ndarray):
        self.inputs = np.ascontiguousarray(_as_channels(inputs), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def channels(self) -> int:
        return self.inputs.shape[1]

    def rms(self) -> np.ndarray:
        """Per-channel rms over the training set."""
        return np.sqrt(np.mean(self.inputs.astype(np.float64) ** 2, axis=(0, 2, 3)))

    def batch(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Inputs of samples ``idx`` (``rng`` unused: fixed inputs)."""
        return self.inputs[idx]


class BatchSource(Protocol):
    """Training inputs made per batch (e.g. fresh noise and a random level for every sample)."""

    def __len__(self) -> int: ...  # noqa: D105

    @property
    def channels(self) -> int: ...  # noqa: D102

    def rms(self) -> np.ndarray: ...  # noqa: D102

    def batch(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...  # noqa: D102


def initialise_from(net: SegmenterNet, state: dict) -> None:
    """Copy a trained network's weights into ``net`` where the shapes allow: the first convolution of a
    network with more input channels keeps the trained weights of the first channels and gets zeros
    for the new ones (so it starts out computing what the trained one did), ``input_scale`` likewise."""
    own = net.state_dict()
    for name, value in state.items():
        if name not in own:
            continue
        target = own[name]
        if target.shape == value.shape:
            target.copy_(value)
        elif name == "input_scale" and value.ndim == 1 and value.numel() < target.numel():
            target[: value.numel()] = value
        elif name == "encoders.0.0.weight" and value.shape[1] < target.shape[1]:
            c_old = value.shape[1] - 2  # the trained network's image channels; the last two are coordinates
            target.zero_()
            target[:, :c_old] = value[:, :c_old]
            target[:, -2:] = value[:, -2:]
    net.load_state_dict(own)


def check_checkpoint(path: str | os.PathLike, config: SegmenterTrainConfig, n: int,
                     provenance: dict | None = None) -> dict:
    """Read a segmenter training checkpoint and check that it belongs to this run (settings, number
    of training pairs and, when given, first the provenance: data, simulation, seeds); cheap, so it runs
    before any simulation. ``ValueError`` naming the first differences."""
    path = Path(path)
    state = load_training_checkpoint(path)
    if provenance is not None:
        saved = state.get("provenance") or {}
        diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in provenance.items() if saved.get(k) != v]
        if diffs:
            raise ValueError(f"checkpoint {path} was written by another run ({'; '.join(diffs[:3])}); remove it or "
                             "choose another --out")
    if state.get("config") != asdict(config) or state.get("n") != n:
        raise ValueError(f"checkpoint {path} was written with other settings ({state.get('config')}, "
                         f"n={state.get('n')}); remove it to start afresh")
    return state


def train_segmenter(
    inputs: np.ndarray | BatchSource,
    labels: np.ndarray,
    config: SegmenterTrainConfig = SegmenterTrainConfig(),
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    init: dict | None = None,
    device: str | None = None,
    provenance: dict | None = None,
) -> tuple[SegmenterNet, list[float]]:
    """Train a :class:`SegmenterNet` on (reconstruction, classes) pairs.

    Parameters
    ----------
    inputs : array (n, h, w) or (n, C, h, w), or BatchSource
        Reconstructions divided by the water conductivity (``C`` of them per sample), or a source
        that makes every batch afresh (its random draws come from a generator seeded by
        ``(config.seed, epoch)``, so a resumed run draws the same).
    labels : array (n, size, size)
        Classes 0/1/2 on the network's grid.
    config : SegmenterTrainConfig
        Settings; ``config.seed`` fixes the initialisation and the batch order.
    checkpoint : path, optional
        Written after every epoch; if it exists (same settings), training resumes from it.
    init : dict, optional
        State dict of a trained network to start from (:func:`initialise_from`).
    device : str, optional
        Torch device; default ``cuda`` when available, else ``cpu``.
    provenance : dict, optional
        What identifies the run beyond ``config`` (data, simulation, seeds): stored in the
        checkpoint and required to match when resuming.

    Returns
    -------
    (SegmenterNet, list of float)
        The network (eval mode, on the CPU) and the mean training loss of every epoch.
    """
    source = inputs if not isinstance(inputs, np.ndarray) else None
    if source is None:
        _check_pairs(inputs, labels, config.size)
        source = ArraySource(inputs)
    elif len(source) != len(labels) or labels.ndim != 3 or labels.shape[1:] != (config.size, config.size):
        raise ValueError(f"need labels (n, {config.size}, {config.size}) for the source's n = {len(source)}, got "
                         f"{labels.shape}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    net = SegmenterNet(config.width, config.size, source.channels)
    if init is not None:
        initialise_from(net, init)
    # One scale per channel, 1 / its rms over the training set: the first layer sees values of order one.
    scale = 1.0 / np.maximum(source.rms(), 1e-12)
    if init is not None and "input_scale" in init:  # the trained channels keep the scale they were trained with
        k = min(int(init["input_scale"].numel()), scale.size)
        scale[:k] = init["input_scale"].reshape(-1)[:k].numpy()
    net.input_scale.copy_(torch.from_numpy(scale).float())
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(source) / config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    history: list[float] = []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        state = check_checkpoint(ckpt, config, len(source), provenance)
        validate_state_dict(net, state["model"], str(ckpt))
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = list(state["history"])
    y_all = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    net.train()
    bar = tqdm(total=config.epochs * steps_per_epoch, initial=len(history) * steps_per_epoch,
               desc="training segmenter", disable=not progress)  # per batch: the bar's ETA is the run's
    for epoch in range(len(history), config.epochs):
        rng = np.random.default_rng([config.seed, epoch])  # resumable order and draws
        order = rng.permutation(len(source))
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            x = torch.from_numpy(np.ascontiguousarray(source.batch(idx, rng), dtype=np.float32)).to(device)
            loss = segmentation_loss(net(x), y_all[torch.from_numpy(idx)].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.update()
        history.append(total / len(order))
        bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.4f}")
        if ckpt is not None:
            save_training_checkpoint(ckpt, {"provenance": provenance, "config": asdict(config), "n": len(source),
                                            "model": net.state_dict(),
                                            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                            "history": history})
    bar.close()
    return net.cpu().eval(), history


PRESENCE_FEATURES = ("area", "mass")


def presence_features(labels: np.ndarray, probabilities: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per sample and target class (k, 2): ``area``, the pixels labelled with the class, and (with
    ``probabilities`` (k, 3, s, s)) ``mass``, the sum of the class' probability over those pixels
    (a large region the network is unsure of weighs less than its area)."""
    labels = np.asarray(labels)
    out = {"area": np.stack([(labels == c).sum(axis=(1, 2)) for c in (1, 2)], axis=1).astype(float)}
    if probabilities is not None:
        out["mass"] = np.stack([np.where(labels == c, probabilities[:, c], 0).sum(axis=(1, 2)) for c in (1, 2)],
                               axis=1)
    return out


def fit_presence_rule(features: dict[str, np.ndarray], truths: np.ndarray) -> dict:
    """Fit the class-presence rule on simulated pairs: class ``c`` counts as present when its feature
    (:func:`presence_features`) reaches ``t_c``; per class the feature and threshold with the fewest
    presence errors win (ties: ``area``, then the smallest threshold).

    Returns
    -------
    dict
        ``{"features": [f_1, f_2], "thresholds": [t_1, t_2], "errors": [..], "errors_before": [..], "n": k}``
        (errors: presence decisions that disagree with the truths, with the rule; before: any pixel
        of the class counts as presence), thresholds in pixels of the 256 x 256 grid.
    """
    present = presence_features(truths)["area"] > 0
    scale = 256**2 / (truths.shape[-1] * truths.shape[-2])
    chosen, thresholds, errors, before = [], [], [], []
    for c in range(2):
        best = None
        for name in PRESENCE_FEATURES:
            if name not in features:
                continue
            values = np.asarray(features[name][:, c], dtype=float)
            candidates = np.unique(np.concatenate([[0.0], values]))
            for t in candidates:
                err = int(np.sum((values >= t) & (values > 0) != present[:, c]))
                if best is None or err < best[0]:
                    best = (err, name, float(t))
        chosen.append(best[1])
        thresholds.append(best[2] * scale)
        errors.append(best[0])
        before.append(int(np.sum((features["area"][:, c] > 0) != present[:, c])))
    return {"features": chosen, "thresholds": thresholds, "errors": errors, "errors_before": before,
            "n": int(len(truths))}


def presence_errors(rule: dict | None, features: dict[str, np.ndarray], truths: np.ndarray) -> list[int]:
    """Presence errors per target class of ``rule`` (None: any pixel counts) on other pairs (features
    on the grid of ``truths``)."""
    present = presence_features(truths)["area"] > 0
    if rule:
        scale = truths.shape[-1] * truths.shape[-2] / 256**2
        rule = {**rule, "thresholds": [t * scale for t in rule["thresholds"]]}
    kept = kept_classes(rule, features)
    return [int(np.sum(kept[:, c] != present[:, c])) for c in range(2)]


def kept_classes(rule: dict | None, features: dict[str, np.ndarray]) -> np.ndarray:
    """(k, 2) bool: whether each target class is kept (present) under ``rule`` (None: any pixel)."""
    area = features["area"]
    kept = area > 0
    if rule:
        for c, (name, t) in enumerate(zip(rule["features"], rule["thresholds"], strict=True)):
            if name not in PRESENCE_FEATURES:
                raise ValueError(f"unknown class-presence feature {name!r}")
            kept[:, c] &= features[name][:, c] >= t
    return kept


def apply_presence_rule(labels: np.ndarray, probabilities: np.ndarray | None, rule: dict | None) -> np.ndarray:
    """``labels`` (k, s, s) with every class that the rule finds absent set to water (no rule: unchanged).
    Thresholds are in pixels of the 256 x 256 grid; other grids are scaled by area."""
    if not rule:
        return labels
    scale = labels.shape[-1] * labels.shape[-2] / 256**2
    features = presence_features(labels, probabilities)
    return drop_absent(labels, kept_classes({**rule, "thresholds": [t * scale for t in rule["thresholds"]]},
                                            features))


def drop_absent(labels: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``labels`` (k, s, s) with class ``c`` set to water in every sample where ``kept[:, c - 1]`` is False."""
    out = np.array(labels, copy=True)
    for c in (1, 2):
        drop = ~kept[:, c - 1]
        sub = out[drop]
        sub[sub == c] = 0
        out[drop] = sub
    return out


@torch.no_grad()
def predict(
    net: SegmenterNet, images: np.ndarray, out_size: int = 256, batch_size: int = 64, min_pixels: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Classes and class probabilities of reconstructions.

    Parameters
    ----------
    images : array (k, C, h, w) or (C, h, w); with one channel also (k, h, w) or (h, w)
        Reconstructions divided by the water conductivity.
    out_size : int
        Side of the output grid (the logits are resampled bilinearly to it).
    min_pixels : int
        Target components smaller than this (pixels of the output grid) become water
        (:func:`eit_manifold.ktc.segmentation.remove_small_components`); the ``learned`` method uses
        :data:`~eit_manifold.ktc.segmentation.MIN_COMPONENT_PIXELS`.

    Returns
    -------
    labels : array (k, out_size, out_size) uint8 (or 2-D for one sample)
        Most likely class; 0 outside the tank's disk.
    probabilities : array (k, 3, out_size, out_size) float32 (or 3-D)
    """
    arr = np.asarray(images, dtype=np.float32)
    if net.channels == 1 and arr.ndim in (2, 3):
        arr = arr[..., None, :, :]
    single = arr.ndim == 3
    arr = arr[None] if single else arr
    if arr.ndim != 4 or arr.shape[1] != net.channels or not np.all(np.isfinite(arr)):
        raise ValueError(f"images must be finite, of shape (k, {net.channels}, h, w) or ({net.channels}, h, w), "
                         f"got {np.shape(images)}")
    net.eval()
    probs = []
    for start in range(0, len(arr), batch_size):
        logits = net(torch.from_numpy(arr[start:start + batch_size]))
        logits = F.interpolate(logits, size=(out_size, out_size), mode="bilinear", align_corners=False)
        probs.append(logits.softmax(dim=1).numpy())
    prob = np.concatenate(probs)
    labels = prob.argmax(axis=1).astype(np.uint8)
    c = (np.arange(out_size) + 0.5) / out_size * 2 - 1
    labels[:, np.hypot(*np.meshgrid(c, c)) >= 1] = 0
    if min_pixels > 0:
        labels = np.stack([remove_small_components(lab, min_pixels) for lab in labels])
    return (labels[0], prob[0]) if single else (labels, prob)


def save_segmenter(net: SegmenterNet, directory: str | os.PathLike, meta: dict) -> Path:
    """Write ``net`` and ``meta`` (JSON-serialisable) to ``directory`` atomically, file by file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    torch_save_atomic(net.state_dict(), weights)
    write_json(directory / CONFIG_FILE, {"format": SEGMENTER_FORMAT, "width": net.width, "size": net.size,
                                         "channels": net.channels, "sha256": file_sha256(weights), **meta})
    return directory


def load_segmenter(directory: str | os.PathLike) -> tuple[SegmenterNet, dict]:
    """Read a network written by :func:`save_segmenter`; ``ValueError`` naming what is wrong."""
    directory = Path(directory)
    config_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"no segmenter at {directory}: {CONFIG_FILE} missing")
    config = read_json(config_path)
    if not isinstance(config, dict) or config.get("format") != SEGMENTER_FORMAT:
        raise ValueError(f"{config_path} is not a KTC segmenter ({SEGMENTER_FORMAT})")
    try:
        net = SegmenterNet(config["width"], config["size"], config.get("channels", 1))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{config_path}: bad architecture entry: {exc}") from exc
    if not weights.is_file():
        raise FileNotFoundError(f"file not found: {weights}")
    if config.get("sha256") != file_sha256(weights):
        raise ValueError(f"{weights} is corrupt or does not belong to {config_path} (hash mismatch)")
    state = torch_load_checked(weights)
    if isinstance(state, dict) and getattr(state.get("input_scale"), "ndim", None) == 0:
        state["input_scale"] = state["input_scale"].reshape(1)  # networks saved before per-channel scales
    validate_state_dict(net, state, str(weights))
    net.load_state_dict(state)
    return net.eval(), config
