"""Training the ``learned`` KTC method: calibrate, simulate, train the segmenter, validate.

``train_ktc_segmenter`` calibrates on ``ref.mat`` at the requested level (the same calibration and
linearisation as ``eit-manifold ktc``), simulates training and validation pairs (phantoms on a
finer mesh than the linearisation's, :mod:`eit_manifold.ktc.simulation`), trains the U-Net of
:mod:`eit_manifold.ktc.segmenter` on ``linear`` reconstructions with several prior strengths
(:func:`~eit_manifold.pipelines.ktc.segmenter_inputs`), and scores it
against the ``linear`` method + Otsu rule on the validation phantoms with the challenge's score.
The simulated data changes and classes (``simulation.npz``) and a per-epoch checkpoint are kept in
the output directory, so an interrupted run resumes without simulating again. Nothing here reads the
targets' data files or truths: the network only ever sees simulations.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eit_manifold.io import check_output_dir, read_json, save_npz_atomic, staged_dir
from eit_manifold.ktc.data import check_level, read_ktc
from eit_manifold.ktc.score import class_scores
from eit_manifold.ktc.segmentation import MIN_COMPONENT_PIXELS, segment
from eit_manifold.ktc.segmenter import (
    SegmenterNet,
    TrainConfig,
    check_checkpoint,
    predict,
    save_segmenter,
    train_segmenter,
)
from eit_manifold.ktc.simulation import SimulationConfig, simulate_pairs
from eit_manifold.pipelines.ktc import (
    MAX_GRID,
    ReconstructionContext,
    build_context,
    check_prior_scales,
    linear_images,
    resample,
    segmenter_inputs,
    truth_grid,
)
from eit_manifold.validation import check_input_dir, check_int

SIMULATION_FILE = "simulation.npz"
CHECKPOINT_FILE = "checkpoint.pt"
DEFAULT_PRIOR_SCALES = (1.0, 10.0, 100.0)  # see SegmenterRunConfig and docs/ktc.md


@dataclass(frozen=True)
class SegmenterRunConfig:
    """Options of :func:`train_ktc_segmenter`.

    ``prior_scales``: the network's input channels are the ``linear`` reconstruction with the
    prior's standard deviation multiplied by each of these (1: the organisers' prior; larger:
    weaker regularisation, sharper and noisier images), so the network sees more of what the data
    resolve than one fixed regularisation keeps.
    """

    data_dir: str
    out: str
    level: int = 1
    grid: int = 48
    n_train: int = 12000
    n_val: int = 300
    epochs: int = 20
    width: int = 16
    prior_scales: tuple[float, ...] = DEFAULT_PRIOR_SCALES
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "prior_scales", check_prior_scales(self.prior_scales))
        check_level(self.level)
        check_int("--grid", self.grid, 4, MAX_GRID)
        check_int("--n-train", self.n_train, 1, 1_000_000)
        check_int("--n-val", self.n_val, 1, 100_000)
        self.train_config()  # --epochs, --width, --seed

    def train_config(self) -> TrainConfig:
        """The network's training settings."""
        return TrainConfig(epochs=self.epochs, width=self.width, seed=self.seed)


def _simulate(
    ctx: ReconstructionContext, cfg: SegmenterRunConfig, sim: SimulationConfig, path: Path
) -> dict[str, np.ndarray]:
    """The simulated data changes and classes: read from ``path`` when it was written with the same
    settings (the reconstructions are made from the changes afterwards, so any grid or prior scales
    reuse one simulation)."""
    # format 2: the file holds data changes (format 1, reconstructions, is simulated afresh)
    key = {"format": 2, "level": cfg.level, "n_train": cfg.n_train, "n_val": cfg.n_val, "seed": cfg.seed,
           "simulation": asdict(sim), "sigma0": ctx.sigma0}
    if path.is_file():
        stored = read_cache(path)
        if str(stored.get("key")) == repr(key):
            return stored

    train = simulate_pairs(ctx.calibration, ctx.reference, None, cfg.n_train,
                           np.random.default_rng([cfg.seed, 0]), sim, progress=cfg.progress)
    val = simulate_pairs(ctx.calibration, ctx.reference, None, cfg.n_val,
                         np.random.default_rng([cfg.seed, 1]), sim, truth_size=256, progress=cfg.progress)
    data = {"key": np.array(repr(key)), "train_changes": train["changes"], "train_labels": train["labels"],
            "val_changes": val["changes"], "val_labels": val["labels"], "val_truths": val["truths"],
            "val_noise": val["noise"]}
    save_npz_atomic(path, **data)
    return data


def read_cache(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a simulation cache; ``ValueError`` naming the file when it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = {k: f[k] for k in f.files}
    except Exception as exc:  # a truncated or foreign file: numpy raises assorted errors
        raise ValueError(f"simulation cache {path} is damaged ({' '.join(str(exc).split())}): remove it to "
                         "simulate again") from exc
    if "key" not in stored:
        raise ValueError(f"{path} is not a simulation cache of ktc-train (no 'key'): remove it or choose another --out")
    return stored


def _provenance(cfg: SegmenterRunConfig, ref_path: Path, sim: SimulationConfig) -> dict:
    """What identifies a ``ktc-train`` run (stored in its checkpoint): data, sizes, seeds, simulation."""
    from eit_manifold.manifold.checkpoint import file_sha256

    return {"format": 1, "reference_sha256": file_sha256(ref_path), "level": cfg.level, "grid": cfg.grid,
            "n_train": cfg.n_train, "n_val": cfg.n_val, "seed": cfg.seed, "prior_scales": list(cfg.prior_scales),
            "simulation": asdict(sim)}


def validation_scores(
    net: SegmenterNet, inputs: np.ndarray, truths: np.ndarray, linear: np.ndarray
) -> dict[str, np.ndarray]:
    """Challenge scores of the network (on ``inputs``) and of the ``linear`` + Otsu rule (on the
    ``linear`` images) on simulated pairs."""
    _, _, inside = truth_grid()
    labels, _ = predict(net, inputs, min_pixels=MIN_COMPONENT_PIXELS)  # as the ``learned`` method runs
    learned, baseline = [], []
    for image, truth, label in zip(linear, truths, labels, strict=True):
        s = class_scores(truth, label)
        learned.append(0.5 * (s[1] + s[2]))
        s = class_scores(truth, segment(resample(image), inside))
        baseline.append(0.5 * (s[1] + s[2]))
    return {"learned": np.array(learned), "linear": np.array(baseline)}


def train_ktc_segmenter(cfg: SegmenterRunConfig) -> dict:
    """Run the whole training (module docstring); returns the summary written to ``config.json``."""
    from eit_manifold.ktc.plots import plot_segmenter_validation
    from eit_manifold.seeding import seed_everything

    # every check before the calibration: data, output directory, a cache or checkpoint left there
    data_dir = check_input_dir(cfg.data_dir, "KTC data directory")
    ref_path = data_dir / "ref.mat"
    if not ref_path.is_file():
        raise FileNotFoundError(f"no ref.mat in {cfg.data_dir}")
    reference = read_ktc(ref_path, cfg.level)
    out = check_output_dir(cfg.out, "--out")
    sim = SimulationConfig()
    provenance = _provenance(cfg, ref_path, sim)
    train_cfg = cfg.train_config()
    if (out / SIMULATION_FILE).is_file():
        read_cache(out / SIMULATION_FILE)
    if (out / CHECKPOINT_FILE).is_file():
        check_checkpoint(out / CHECKPOINT_FILE, train_cfg, cfg.n_train, provenance)

    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    ctx = build_context(reference, cfg.grid)
    t_cal = time.perf_counter() - t0
    data = _simulate(ctx, cfg, sim, out / SIMULATION_FILE)
    for part in ("train", "val"):
        data[f"{part}_inputs"] = segmenter_inputs(ctx, data[f"{part}_changes"].T, cfg.prior_scales).astype(np.float32)
    data["val_linear"] = linear_images(ctx, data["val_changes"].T) / ctx.sigma0
    t_sim = time.perf_counter() - t0 - t_cal
    net, history = train_segmenter(data["train_inputs"], data["train_labels"], train_cfg,
                                   checkpoint=out / CHECKPOINT_FILE, progress=cfg.progress, provenance=provenance)
    t_train = time.perf_counter() - t0 - t_cal - t_sim
    scores = validation_scores(net, data["val_inputs"], data["val_truths"], data["val_linear"])
    meta = {
        "level": cfg.level, "grid": cfg.grid, "patterns": reference.patterns.tolist(),
        "measurements": reference.measurements.tolist(), "sigma0": ctx.sigma0,
        "prior_scales": list(cfg.prior_scales),
        "calibration_residual": ctx.calibration.residual, "simulation": asdict(sim), "training": asdict(train_cfg),
        "n_train": cfg.n_train, "n_val": cfg.n_val, "loss": history,
        "validation": {k: {"mean": float(v.mean()), "std": float(v.std())} for k, v in scores.items()},
        "seconds": {"calibration": round(t_cal, 1), "simulation": round(t_sim, 1), "training": round(t_train, 1)},
    }
    with staged_dir(out) as stage:  # the network and its figure appear together
        save_segmenter(net, stage, meta)
        plot_segmenter_validation(stage / "validation.png", net, data, scores, history)
    return read_json(out / "config.json")

