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
class TrainConfig:
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


def check_checkpoint(path: str | os.PathLike, config: TrainConfig, n: int, provenance: dict | None = None) -> dict:
    """Read a segmenter training checkpoint and check that it belongs to this run (settings, number
    of training pairs and, when given, the provenance: data, simulation, seeds); cheap, so it runs
    before any simulation. ``ValueError`` naming the first differences."""
    path = Path(path)
    state = load_training_checkpoint(path)
    if state.get("config") != asdict(config) or state.get("n") != n:
        raise ValueError(f"checkpoint {path} was written with other settings ({state.get('config')}, "
                         f"n={state.get('n')}); remove it to start afresh")
    if provenance is not None:
        saved = state.get("provenance") or {}
        diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in provenance.items() if saved.get(k) != v]
        if diffs:
            raise ValueError(f"checkpoint {path} was written by another run ({'; '.join(diffs[:3])}); remove it or "
                             "choose another --out")
    return state


def train_segmenter(
    inputs: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig = TrainConfig(),
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    provenance: dict | None = None,
) -> tuple[SegmenterNet, list[float]]:
    """Train a :class:`SegmenterNet` on (reconstruction, classes) pairs.

    Parameters
    ----------
    inputs : array (n, h, w) or (n, C, h, w)
        Reconstructions divided by the water conductivity (``C`` of them per sample).
    labels : array (n, size, size)
        Classes 0/1/2 on the network's grid.
    config : TrainConfig
        Settings; ``config.seed`` fixes the initialisation and the batch order.
    checkpoint : path, optional
        Written after every epoch; if it exists (same settings), training resumes from it.
    provenance : dict, optional
        What identifies the run beyond ``config`` (data, simulation, seeds): stored in the
        checkpoint and required to match when resuming.

    Returns
    -------
    (SegmenterNet, list of float)
        The network (eval mode) and the mean training loss of every epoch.
    """
    _check_pairs(inputs, labels, config.size)
    inputs = _as_channels(inputs)
    torch.manual_seed(config.seed)
    net = SegmenterNet(config.width, config.size, inputs.shape[1])
    # One scale per channel, 1 / its rms over the training set: the first layer sees values of order one.
    rms = np.sqrt(np.mean(inputs.astype(np.float64) ** 2, axis=(0, 2, 3)))
    net.input_scale.copy_(torch.from_numpy(1.0 / np.maximum(rms, 1e-12)))
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(inputs) / config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    history: list[float] = []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        state = check_checkpoint(ckpt, config, len(inputs), provenance)
        validate_state_dict(net, state["model"], str(ckpt))
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = list(state["history"])
    x_all = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    y_all = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    net.train()
    bar = tqdm(range(len(history), config.epochs), desc="training segmenter", disable=not progress)
    for epoch in bar:
        order = np.random.default_rng([config.seed, epoch]).permutation(len(inputs))  # resumable order
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = torch.from_numpy(order[start:start + config.batch_size])
            loss = segmentation_loss(net(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / len(order))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if ckpt is not None:
            save_training_checkpoint(ckpt, {"provenance": provenance, "config": asdict(config), "n": len(inputs),
                                            "model": net.state_dict(),
                                            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                            "history": history})
    return net.eval(), history


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
