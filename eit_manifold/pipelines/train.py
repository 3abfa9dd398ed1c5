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

import numpy as np
import torch

from eit_manifold.data import (
    check_dataset,
    distance_to_manifold,
    is_image_dataset,
    make_dataset,
    true_latent_dim,
)
from eit_manifold.io import check_output_dir, read_json, staged_dir, write_json
from eit_manifold.manifold.atlas import Atlas
from eit_manifold.manifold.chart import ChartConfig
from eit_manifold.manifold.checkpoint import load_atlas, save_atlas
from eit_manifold.manifold.training import (
    CHECKPOINT_FILE,
    AtlasTrainConfig,
    check_resumable,
    relative_projection_error,
    train_atlas,
)
from eit_manifold.seeding import seed_everything
from eit_manifold.validation import InputError, check_int, check_seed

JOB_FILE = "train.json"
MAX_TRAIN_ITEMS = 1_000_000

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

# The paper's schedule for its balls atlases (200 epochs, the last 50 with overlap), with the
# 2 000 images and decoder noise 0.02 that the first bundled balls atlases were tuned to.
_BALLS_DEFAULTS: dict = {
    **_IMAGE_DEFAULTS,
    "n_train": 2000,
    "chart": {**_IMAGE_DEFAULTS["chart"], "sigma_hd": 0.02},
    "train": {**_IMAGE_DEFAULTS["train"], "epochs": 200, "overlap_epochs": 50},
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
    "balls": _BALLS_DEFAULTS,
    "balls-signed": _BALLS_DEFAULTS,
    "balls-mixed": _BALLS_DEFAULTS,
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
    train : AtlasTrainConfig
        Optimisation settings (its ``seed`` is the run's seed).
    """

    dataset: str
    charts: int
    latent_dim: int
    n_train: int
    size: int = 64
    data_seed: int = 0
    chart: dict = field(default_factory=dict)
    train: AtlasTrainConfig = field(default_factory=AtlasTrainConfig)

    def __post_init__(self) -> None:
        """Check the sizes before anything is allocated (the dataset and the atlas are built later)."""
        from eit_manifold.manifold.chart import MAX_ATLAS_PARAMETERS, estimated_parameters

        check_dataset(self.dataset)
        self.charts = check_int("--charts", self.charts, 1, 256)
        self.latent_dim = check_int("--latent-dim", self.latent_dim, 1)
        self.n_train = check_int("--n-train", self.n_train, 1, MAX_TRAIN_ITEMS)
        self.size = check_int("--size", self.size, 8, 256)
        self.data_seed = check_seed("data_seed", self.data_seed)
        if is_image_dataset(self.dataset) and self.size % 8:
            raise InputError(f"--size must be a multiple of 8, got {self.size}")
        if self.n_train < self.charts:
            raise InputError(f"--n-train ({self.n_train}) must be at least --charts ({self.charts})")
        cfg = self.chart_config()  # checks the architecture's sizes
        if estimated_parameters(cfg, self.charts) > MAX_ATLAS_PARAMETERS:
            raise InputError(f"the atlas would have about {estimated_parameters(cfg, self.charts):.3g} parameters "
                             f"(limit {MAX_ATLAS_PARAMETERS:.0e}): lower --hidden, --blocks or --conv-hidden")

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

    Keys of ``overrides`` may be :class:`TrainJob` fields, :class:`AtlasTrainConfig` fields (``epochs``,
    ``seed``, ...) or :class:`ChartConfig` fields (``sigma_hd``, ``hidden``, ...).
    """
    check_dataset(dataset)
    spec = DATASET_DEFAULTS[dataset]
    job_keys = {f.name for f in fields(TrainJob)} - {"chart", "train", "dataset"}
    train_keys = {f.name for f in fields(AtlasTrainConfig)}
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
    return TrainJob(dataset=dataset, chart=chart, train=AtlasTrainConfig(**train), **job)


def job_from_dict(d: dict) -> TrainJob:
    """Inverse of :meth:`TrainJob.to_dict`."""
    d = dict(d)
    d["train"] = AtlasTrainConfig(**d["train"])
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
    save_partial: bool = False,
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
    save_partial : bool
        With ``stop_after``: save, evaluate and plot the atlas as it is when the run stops (a
        time-boxed run; ``train.json`` records ``stopped_after`` and ``finished: false``, and
        ``resume`` continues the schedule).
    """
    out = check_output_dir(out, "--out")
    job_path = out / JOB_FILE
    previous_time = 0.0
    provenance = job_provenance(job)
    if resume:
        if not job_path.is_file():
            raise FileNotFoundError(f"cannot resume: no {JOB_FILE} in {out} (no training run there)")
        saved = read_json(job_path)
        if not isinstance(saved, dict) or saved.get("job") != job.to_dict():
            raise ValueError(f"cannot resume: the job differs from the one in {job_path}")
        previous_time = float(saved.get("train_seconds", 0.0))
        ckpt = out / CHECKPOINT_FILE
        if not ckpt.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt}")
        check_resumable(ckpt, job.train, provenance)  # before the data are built
    elif (out / CHECKPOINT_FILE).exists():
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
        atlas, data, job.train, out, resume=resume, stop_after=stop_after, progress=progress,
        provenance=provenance,
    )
    summary["train_seconds"] = previous_time + time.perf_counter() - start
    summary["history"] = history
    summary["finished"] = bool(history) and history[-1]["epoch"] == job.train.epochs
    summary["torch_threads"] = torch.get_num_threads()
    summary["parameters"] = count_parameters(atlas)
    partial = save_partial and stop_after is not None and bool(history) and not summary["finished"]
    if partial:
        summary["stopped_after"] = history[-1]["epoch"]
    if not (summary["finished"] or partial):
        write_json(job_path, summary)
        return summary
    # the atlas, its figures and the final train.json appear together
    with staged_dir(out) as stage:
        save_atlas(
            atlas, stage, extra={"command": command, "train_seconds": summary["train_seconds"]}
        )
        summary["evaluation"] = evaluate(atlas, job.dataset, size=job.size)
        if plots:
            from eit_manifold.plotting import plot_atlas, plot_loss_curve

            plot_loss_curve(history, stage / "loss.png")
            plot_atlas(load_atlas(stage), stage / "atlas.png", dataset=job.dataset)
        write_json(stage / JOB_FILE, summary)
    return summary


def job_provenance(job: TrainJob) -> dict:
    """What identifies a training run besides its optimisation settings (stored in its checkpoints):
    dataset, sizes, seeds and architecture."""
    return {k: v for k, v in job.to_dict().items() if k != "train"}


def count_parameters(atlas: Atlas) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in atlas.parameters())

