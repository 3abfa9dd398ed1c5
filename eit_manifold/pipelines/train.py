"""The ``train`` job: build a dataset, train an atlas, save it, evaluate it, draw figures.

Output directory layout::

    config.json, atlas.pt   the trained atlas (load with ``load_atlas(out)``)
    checkpoint.pt           training state (model, optimizer, RNG) for ``--resume``
    train.json              job config, history, wall time, evaluation figures
    loss.png                loss curve
    atlas.png               points coloured by chart (toys) or samples per chart (images)
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from eit_manifold.data import (
    check_dataset,
    distance_to_manifold,
    is_image_dataset,
    make_dataset,
    true_latent_dim,
)
from eit_manifold.io import read_json, write_json
from eit_manifold.manifold.atlas import Atlas
from eit_manifold.manifold.chart import ChartConfig
from eit_manifold.manifold.checkpoint import load_atlas, save_atlas
from eit_manifold.manifold.training import TrainConfig, relative_projection_error, train_atlas
from eit_manifold.seeding import seed_everything

JOB_FILE = "train.json"

_IMAGE_DEFAULTS: dict = {
    "charts": 2,
    "n_train": 1000,
    "chart": {"sigma_hd": 0.05, "blocks": 4, "hidden": 128, "conv_blocks": 2, "conv_hidden": 64},
    "train": {
        "batch_size": 32,
        "epochs": 20,
        "lr": 2e-3,
        "pretrain_epochs": 3,
        "lipschitz_epochs": 4,
        "overlap_epochs": 3,
        "lipschitz_weight": 1e-5,
        "checkpoint_every": 2,
    },
}

#: The paper's bars schedule: 200 epochs of which the last 50 are overlap epochs (the seeding and
#: Lipschitz phases keep their share of the 20-epoch image schedule). 100 training images (angles
#: 1.8 deg apart on a one-dimensional family) give 800 optimiser steps, about the 625 of the former
#: 20-epoch, 1000-image schedule, so the run fits a shared CPU thread.
_BARS_DEFAULTS: dict = {
    **_IMAGE_DEFAULTS,
    "n_train": 100,
    "train": {
        **_IMAGE_DEFAULTS["train"],
        "epochs": 200,
        "pretrain_epochs": 30,
        "lipschitz_epochs": 40,
        "overlap_epochs": 50,
        "checkpoint_every": 10,
    },
}

#: Per-dataset defaults: (charts, chart-config overrides, train-config overrides, n_train).
DATASET_DEFAULTS: dict[str, dict] = {
    "two-circles": {
        "charts": 4,
        "n_train": 2000,
        "chart": {"sigma_hd": 0.02},
        "train": {"epochs": 40, "lr": 5e-3},
    },
    "ring": {"charts": 2, "n_train": 4000, "chart": {"sigma_hd": 0.02}, "train": {}},
    "sphere": {"charts": 2, "n_train": 4000, "chart": {"sigma_hd": 0.02}, "train": {}},
    "torus": {"charts": 6, "n_train": 6000, "chart": {"sigma_hd": 0.02}, "train": {}},
    "swiss-roll": {"charts": 4, "n_train": 4000, "chart": {"sigma_hd": 0.02}, "train": {}},
    "bars": _BARS_DEFAULTS,
    "balls": _IMAGE_DEFAULTS,
    "ktc": _IMAGE_DEFAULTS,
}


@dataclass
class TrainJob:
    """Everything that defines a training run (saved to ``train.json``).

    Attributes
    ----------
    dataset : str
        Dataset name.
    charts : int
        Number of charts ``K``.
    latent_dim : int
        Latent dimension ``d``.
    n_train : int
        Number of training items.
    size : int
        Image size (images only).
    data_seed : int
        Seed of the training set.
    chart : dict
        :class:`ChartConfig` overrides.
    train : TrainConfig
        Optimisation settings (its ``seed`` is the run's seed).
    """

    dataset: str
    charts: int
    latent_dim: int
    n_train: int
    size: int = 64
    data_seed: int = 0
    chart: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    def chart_config(self) -> ChartConfig:
        """The architecture for this job."""
        shape = (
            (self.size, self.size)
            if is_image_dataset(self.dataset)
            else (make_dataset(self.dataset, 1).shape[1],)
        )
        return ChartConfig(data_shape=shape, latent_dim=self.latent_dim, **self.chart)

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary."""
        d = asdict(self)
        d["train"] = asdict(self.train)
        return d


def default_job(dataset: str, **overrides: object) -> TrainJob:
    """A :class:`TrainJob` with the dataset's defaults; ``overrides`` that are ``None`` are ignored.

    Keys of ``overrides`` may be :class:`TrainJob` fields, :class:`TrainConfig` fields (``epochs``,
    ``seed``, ...) or :class:`ChartConfig` fields (``sigma_hd``, ``hidden``, ...).
    """
    check_dataset(dataset)
    spec = DATASET_DEFAULTS[dataset]
    job_keys = {f.name for f in fields(TrainJob)} - {"chart", "train", "dataset"}
    train_keys = {f.name for f in fields(TrainConfig)}
    chart_keys = {f.name for f in fields(ChartConfig)} - {"data_shape", "latent_dim"}
    job = {
        "charts": spec["charts"],
        "n_train": spec["n_train"],
        "latent_dim": true_latent_dim(dataset),
    }
    chart, train = dict(spec["chart"]), dict(spec["train"])
    for key, value in overrides.items():
        if value is None:
            continue
        if key in job_keys:
            job[key] = value
        elif key in train_keys:
            train[key] = value
        elif key in chart_keys:
            chart[key] = value
        else:
            raise ValueError(f"unknown training option {key!r}")
    return TrainJob(dataset=dataset, chart=chart, train=TrainConfig(**train), **job)


def job_from_dict(d: dict) -> TrainJob:
    """Inverse of :meth:`TrainJob.to_dict`."""
    d = dict(d)
    d["train"] = TrainConfig(**d["train"])
    return TrainJob(**d)


def build_atlas(job: TrainJob, data: torch.Tensor) -> Atlas:
    """A fresh atlas for ``job`` (deterministic under the job's seed), normalised on ``data``."""
    seed_everything(job.train.seed)
    atlas = Atlas(job.chart_config(), job.charts, meta={"dataset": job.dataset, "size": job.size})
    shift = data.mean(0)
    scale = float((data - shift).pow(2).mean().sqrt()) or 1.0
    atlas.set_normalization(shift, scale)
    return atlas


def evaluate(
    atlas: Atlas,
    dataset: str,
    n_test: int = 500,
    n_samples: int = 2000,
    size: int = 64,
    seed: int = 0,
) -> dict:
    """Held-out figures: relative projection error; for toys, sample and projection distances.

    Parameters
    ----------
    atlas : Atlas
        Trained atlas.
    dataset : str
        Dataset it was trained on.
    n_test : int
        Number of held-out items.
    n_samples : int
        Number of atlas samples (toys).
    size : int
        Image size.
    seed : int
        Seed of the sampling generator.
    """
    test = torch.from_numpy(make_dataset(dataset, n_test, "test", 0, size))
    rel = relative_projection_error(atlas, test)
    out = {
        "n_test": n_test,
        "projection_rel_error_mean": float(rel.mean()),
        "projection_rel_error_median": float(np.median(rel)),
    }
    if not is_image_dataset(dataset):
        with torch.no_grad():
            samples = atlas.sample(n_samples, torch.Generator().manual_seed(seed)).numpy()
            proj = atlas.project(test).numpy()
        dist = distance_to_manifold(dataset, samples)
        out.update(
            {
                "n_samples": n_samples,
                "sample_distance_mean": float(dist.mean()),
                "sample_within_0.1": float((dist < 0.1).mean()),
                "projection_distance_max": float(np.linalg.norm(proj - test.numpy(), axis=1).max()),
            }
        )
    return out


def run_train(
    job: TrainJob,
    out: str | os.PathLike,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    command: str | None = None,
    plots: bool = True,
) -> dict:
    """Train, save and evaluate an atlas; return the job summary written to ``out/train.json``.

    Parameters
    ----------
    job : TrainJob
        What to train.
    out : path-like
        Output directory.
    resume : bool
        Continue from ``out/checkpoint.pt`` (the job must equal the saved one).
    stop_after : int, optional
        Stop after this many epochs (simulates an interruption).
    progress : bool
        Progress bar.
    command : str, optional
        Command line recorded in ``train.json`` (defaults to ``sys.argv``).
    plots : bool
        Write ``loss.png`` and ``atlas.png``.
    """
    out = Path(out)
    job_path = out / JOB_FILE
    previous_time = 0.0
    if resume:
        saved = read_json(job_path)
        if saved.get("job") != job.to_dict():
            raise ValueError(f"cannot resume: the job differs from the one in {job_path}")
        previous_time = float(saved.get("train_seconds", 0.0))
    elif (out / "checkpoint.pt").exists():
        raise FileExistsError(f"{out} already holds a training run; pass --resume or a new --out")
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    data = torch.from_numpy(
        make_dataset(job.dataset, job.n_train, "train", job.data_seed, job.size)
    )
    atlas = build_atlas(job, data)
    summary = {
        "job": job.to_dict(),
        "command": command,
        "train_seconds": previous_time,
        "finished": False,
    }
    write_json(job_path, summary)
    start = time.perf_counter()
    history = train_atlas(
        atlas, data, job.train, out, resume=resume, stop_after=stop_after, progress=progress
    )
    summary["train_seconds"] = previous_time + time.perf_counter() - start
    summary["history"] = history
    summary["finished"] = bool(history) and history[-1]["epoch"] == job.train.epochs
    summary["torch_threads"] = torch.get_num_threads()
    summary["parameters"] = count_parameters(atlas)
    if summary["finished"]:
        save_atlas(
            atlas, out, extra={"command": command, "train_seconds": summary["train_seconds"]}
        )
        summary["evaluation"] = evaluate(atlas, job.dataset, size=job.size)
        if plots:
            from eit_manifold.plotting import plot_atlas, plot_loss_curve

            plot_loss_curve(history, out / "loss.png")
            plot_atlas(load_atlas(out), out / "atlas.png", dataset=job.dataset)
    write_json(job_path, summary)
    return summary


def count_parameters(atlas: Atlas) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in atlas.parameters())

