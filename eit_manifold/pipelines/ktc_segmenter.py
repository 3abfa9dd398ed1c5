"""Training the ``learned`` KTC method: one network for all levels, trained on simulations only.

``train_ktc_segmenter`` calibrates on ``ref.mat`` (level 1, cached: :mod:`eit_manifold.ktc.calibration_cache`),
simulates training and validation phantoms once at level 1 with model error drawn around the
calibrated tank (:mod:`eit_manifold.ktc.simulation`, chunk files in ``OUT/sim``), and trains the
U-Net of :mod:`eit_manifold.ktc.segmenter` on inputs made per batch (:class:`LevelSource`): each
sample gets a level drawn uniformly from ``levels`` and fresh noise, its data are the level's subset
of the simulated change (:func:`eit_manifold.ktc.levels.level_rows`), the inputs the ``linear``
reconstructions of that subset at several prior strengths plus the map of removed electrodes
(:func:`eit_manifold.ktc.levels.removed_map`). The network is conditioned on the mask, not on a level
number, and records the kept sets it was trained for; any other kept set is refused at run time.

Then, on the validation phantoms at every level (fixed noise): the class-presence rule
(:func:`eit_manifold.ktc.segmenter.fit_presence_rule`) is fitted on the first half of the
phantoms and its error rate reported on the second half, and the challenge score is reported per
level against the ``linear`` + Otsu rule. Training resumes from ``OUT/checkpoint.pt``; a run with
more phantoms reuses the simulated chunks. Nothing here reads the targets' data files or truths.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from eit_manifold.io import check_output_dir, read_json, save_npz_atomic, staged_dir
from eit_manifold.ktc.calibration import Calibration
from eit_manifold.ktc.calibration_cache import cached_calibration
from eit_manifold.ktc.data import LEVELS, KTCMeasurement, check_level, read_ktc
from eit_manifold.ktc.levels import electrode_mask, level_rows, removed_map, restrict_level
from eit_manifold.ktc.methods import (
    BUNDLED_SEGMENTER,
    ReconstructionContext,
    build_context,
    check_prior_scales,
    resample,
    sub_context,
    truth_grid,
)
from eit_manifold.ktc.score import class_scores
from eit_manifold.ktc.segmentation import MIN_COMPONENT_PIXELS, segment
from eit_manifold.ktc.segmenter import (
    SegmenterTrainConfig,
    check_checkpoint,
    fit_presence_rule,
    predict,
    presence_errors,
    save_segmenter,
    train_segmenter,
)
from eit_manifold.ktc.simulation import SimulationConfig, simulate_pairs
from eit_manifold.pipelines.ktc import MAX_GRID
from eit_manifold.validation import check_input_dir, check_int

CHECKPOINT_FILE = "checkpoint.pt"
DEFAULT_PRIOR_SCALES = (1.0, 10.0, 100.0)  # see SegmenterRunConfig and docs/ktc.md
CHUNK = 250  # phantoms per simulation file: a run resumes (or grows) chunk by chunk


@dataclass(frozen=True)
class SegmenterRunConfig:
    """Options of :func:`train_ktc_segmenter`.

    ``prior_scales``: the network's image channels are the ``linear`` reconstruction with the
    prior's standard deviation multiplied by each of these (1: the organisers' prior; larger:
    weaker regularisation, sharper and noisier images); one more channel maps the removed
    electrodes. ``init``: a trained network (directory) to start from, ``"bundled"`` for the
    bundled one, or None (random initialisation).
    """

    data_dir: str
    out: str
    levels: tuple[int, ...] = tuple(LEVELS)
    grid: int = 48
    n_train: int = 10000
    n_val: int = 300
    epochs: int = 6
    width: int = 16
    lr: float = 1e-3
    prior_scales: tuple[float, ...] = DEFAULT_PRIOR_SCALES
    init: str | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "prior_scales", check_prior_scales(self.prior_scales))
        levels = tuple(sorted({check_level(v) for v in self.levels}))
        if not levels:
            raise ValueError("levels must name at least one level in 1..7")
        object.__setattr__(self, "levels", levels)
        check_int("--grid", self.grid, 4, MAX_GRID)
        check_int("--n-train", self.n_train, 1, 1_000_000)
        check_int("--n-val", self.n_val, 1, 100_000)
        self.train_config()  # --epochs, --width, --lr, --seed

    def train_config(self) -> SegmenterTrainConfig:
        """The network's training settings."""
        return SegmenterTrainConfig(epochs=self.epochs, width=self.width, seed=self.seed, lr=self.lr)


def simulate_chunks(
    calibration: Calibration, reference: KTCMeasurement, part: str, n: int, seed: int, sim: SimulationConfig,
    directory: Path, progress: bool = True, only: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """``n`` simulated pairs of ``part`` ("train" or "val"), read from or written to ``directory``
    chunk by chunk (:data:`CHUNK` phantoms, random stream ``[seed, part, chunk]``): a chunk whose
    stored key differs (settings, calibration, kept set) is simulated afresh, so an interrupted run
    resumes and a larger ``n`` reuses what exists. ``only``: make (and return) just these chunks, in
    this order (e.g. a second worker filling chunks from the end)."""
    part_id = {"train": 0, "val": 1}[part]
    directory.mkdir(parents=True, exist_ok=True)
    chunks = []
    chunks_to_make = range(math.ceil(n / CHUNK)) if only is None else only
    for k in tqdm(chunks_to_make, desc=f"simulating {part} ({CHUNK} per chunk)", disable=not progress):
        size = min(CHUNK, n - k * CHUNK)
        key = repr({"format": 3, "part": part, "chunk": k, "size": size, "seed": seed, "simulation": asdict(sim),
                    "sigma0": calibration.sigma, "residual": calibration.residual,
                    "patterns": reference.patterns.tolist(), "measurements": reference.measurements.tolist()})
        path = directory / f"{part}_{k:04d}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as f:
                if str(f["key"]) == key:
                    chunks.append({name: f[name] for name in f.files if name != "key"})
                    continue
        data = simulate_pairs(calibration, reference, None, size, np.random.default_rng([seed, part_id, k]), sim,
                              truth_size=256 if part == "val" else None, progress=False)
        data.pop("changes")  # training draws its own noise; validation draws it once (validate_levels)
        save_npz_atomic(path, key=np.array(key), **data)
        chunks.append(data)
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def read_cache(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a simulation chunk; ``ValueError`` naming the file when it is damaged."""
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
    """What identifies a ``ktc-train`` run (stored in its checkpoint): data, sizes, seeds, simulation, start."""
    from eit_manifold.manifold.checkpoint import file_sha256

    return {"format": 2, "reference_sha256": file_sha256(ref_path), "levels": list(cfg.levels), "grid": cfg.grid,
            "n_train": cfg.n_train, "n_val": cfg.n_val, "seed": cfg.seed, "prior_scales": list(cfg.prior_scales),
            "simulation": asdict(sim), "init": cfg.init}


class LevelSource:
    """Training inputs made per batch: a random level and fresh noise for every sample (module docstring).

    Parameters
    ----------
    contexts : dict level -> ReconstructionContext
        Every level's context (subsets of ``base``'s data).
    base : ReconstructionContext
        The level-1 context the simulations were made on.
    clean : array (n, D)
        Simulated data changes without noise on ``base``'s kept set.
    noise : array (n,)
        Noise std of each sample relative to ``scale``.
    scale : float
        rms of the reference data.
    prior_scales : tuple of float
        Prior strengths of the image channels.
    """

    def __init__(self, contexts: dict[int, ReconstructionContext], base: ReconstructionContext, clean: np.ndarray,
                 noise: np.ndarray, scale: float, prior_scales: tuple[float, ...]):
        self.levels = sorted(contexts)
        self.clean, self.noise, self.scale = clean, noise, float(scale)
        self.sigma0 = base.sigma0
        self.shape = base.basis.shape
        self.active = base.basis.active
        self.rows = {v: level_rows(base.reference, contexts[v].reference) for v in self.levels}
        self.maps = {v: [contexts[v].linear_map(s).astype(np.float32).T for s in prior_scales] for v in self.levels}
        self.masks = {v: removed_map(electrode_mask(contexts[v].reference), self.shape[0]).astype(np.float32)
                      for v in self.levels}
        self.n_images = len(prior_scales)

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def channels(self) -> int:
        return self.n_images + 1

    def inputs(self, changes: np.ndarray, level: int) -> np.ndarray:
        """Inputs (k, C + 1, H, W) of level-1 data changes (k, D) at ``level``."""
        sub = np.ascontiguousarray(changes[:, self.rows[level]], dtype=np.float32)
        out = np.zeros((len(sub), self.channels, self.shape[0] * self.shape[1]), dtype=np.float32)
        for c, m in enumerate(self.maps[level]):
            out[:, c, self.active] = sub @ m / self.sigma0
        out = out.reshape(len(sub), self.channels, *self.shape)
        out[:, -1] = self.masks[level]
        return out

    def batch(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Inputs of samples ``idx``: each at a random level with fresh noise."""
        levels = rng.choice(self.levels, len(idx))
        y = self.clean[idx] + (self.noise[idx] * self.scale)[:, None] * rng.standard_normal(
            (len(idx), self.clean.shape[1])).astype(np.float32)
        out = np.empty((len(idx), self.channels, *self.shape), dtype=np.float32)
        for v in np.unique(levels):
            sel = levels == v
            out[sel] = self.inputs(y[sel], int(v))
        return out

    def rms(self) -> np.ndarray:
        """Per-channel rms of 512 batch draws (fixed stream)."""
        rng = np.random.default_rng(12345)
        x = self.batch(rng.choice(len(self), min(512, len(self)), replace=False), rng)
        return np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=(0, 2, 3)))


def validate_levels(net, source: LevelSource, val: dict, seed: int, n_linear: int = 100) -> dict:
    """Per level, on the validation phantoms with one fixed noise draw (stream ``[seed, 2]``): the
    network's classes (small-component rule), their class-presence features and the first 6
    inputs, and the challenge scores of ``linear`` + Otsu on the first ``n_linear`` phantoms
    (scoring is the slow part: 0.1-0.3 s per case)."""
    from eit_manifold.ktc.segmenter import presence_features

    _, _, inside = truth_grid()
    rng = np.random.default_rng([seed, 2])
    noisy = val["clean"] + (val["noise"] * source.scale)[:, None] * rng.standard_normal(val["clean"].shape)
    out = {}
    for level in tqdm(source.levels, desc="validating levels", disable=True):
        x = source.inputs(noisy.astype(np.float32), level)
        labels, prob = predict(net, x, min_pixels=MIN_COMPONENT_PIXELS)
        linear = []
        for truth, image in zip(val["truths"][:n_linear], x[:n_linear, 0], strict=True):
            s = class_scores(truth, segment(resample(image), inside))
            linear.append(0.5 * (s[1] + s[2]))
        out[level] = {"labels": labels, "features": presence_features(labels, prob), "linear": np.array(linear),
                      "inputs": x[:6]}
        del prob
    return out


def score_levels(checked: dict, truths: np.ndarray, presence: dict | None, progress: bool = True) -> None:
    """Add to every level of :func:`validate_levels`' output the classes after the presence rule
    (``final``) and the challenge scores with the rule (``learned``) and without it (``plain``;
    only the cases the rule changed are scored again)."""
    from eit_manifold.ktc.segmenter import drop_absent, kept_classes

    for entry in tqdm(checked.values(), desc="scoring levels", disable=not progress):
        final = drop_absent(entry["labels"], kept_classes(presence, entry["features"]))
        learned, plain = [], []
        for truth, before, after in zip(truths, entry["labels"], final, strict=True):
            s = class_scores(truth, after)
            learned.append(0.5 * (s[1] + s[2]))
            if np.array_equal(before, after):
                plain.append(learned[-1])
            else:
                s = class_scores(truth, before)
                plain.append(0.5 * (s[1] + s[2]))
        entry.update(final=final, learned=np.array(learned), plain=np.array(plain))


def train_ktc_segmenter(cfg: SegmenterRunConfig) -> dict:
    """Run the whole training (module docstring); returns the summary written to ``config.json``."""
    import torch

    from eit_manifold.ktc.plots import plot_segmenter_validation
    from eit_manifold.ktc.segmenter import load_segmenter
    from eit_manifold.seeding import seed_everything

    # every check before the calibration: data, output directory, a cache or checkpoint left there
    data_dir = check_input_dir(cfg.data_dir, "KTC data directory")
    ref_path = data_dir / "ref.mat"
    if not ref_path.is_file():
        raise FileNotFoundError(f"no ref.mat in {cfg.data_dir}")
    reference = read_ktc(ref_path, 1)
    out = check_output_dir(cfg.out, "--out")
    sim = SimulationConfig()
    provenance = _provenance(cfg, ref_path, sim)
    train_cfg = cfg.train_config()
    for chunk in sorted((out / "sim").glob("*.npz")) if (out / "sim").is_dir() else []:
        read_cache(chunk)
    if (out / CHECKPOINT_FILE).is_file():
        check_checkpoint(out / CHECKPOINT_FILE, train_cfg, cfg.n_train, provenance)
    init = None
    if cfg.init is not None:
        init_net, _ = load_segmenter(BUNDLED_SEGMENTER if cfg.init == "bundled" else cfg.init)
        init = init_net.state_dict()

    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    calibration, _ = cached_calibration(reference, ref_path)
    base = build_context(reference, cfg.grid, calibration)
    contexts = {v: sub_context(base, restrict_level(reference, v)) for v in cfg.levels}
    t_cal = time.perf_counter() - t0
    train = simulate_chunks(calibration, reference, "train", cfg.n_train, cfg.seed, sim, out / "sim", cfg.progress)
    val = simulate_chunks(calibration, reference, "val", cfg.n_val, cfg.seed, sim, out / "sim", cfg.progress)
    scale = float(np.sqrt(np.mean(reference.data**2)))
    source = LevelSource(contexts, base, train["clean"], train["noise"], scale, cfg.prior_scales)
    t_sim = time.perf_counter() - t0 - t_cal
    net, history = train_segmenter(source, train["labels"], train_cfg, checkpoint=out / CHECKPOINT_FILE,
                                   progress=cfg.progress, init=init, provenance=provenance)
    t_train = time.perf_counter() - t0 - t_cal - t_sim
    with torch.no_grad():
        checked = validate_levels(net, source, val, cfg.seed)
    half = cfg.n_val // 2
    fit_on = {k: np.concatenate([checked[v]["features"][k][:half] for v in cfg.levels])
              for k in checked[cfg.levels[0]]["features"]}
    held = {k: np.concatenate([checked[v]["features"][k][half:] for v in cfg.levels]) for k in fit_on}
    presence = fit_presence_rule(fit_on, np.concatenate([val["truths"][:half]] * len(cfg.levels)))
    held_truths = np.concatenate([val["truths"][half:]] * len(cfg.levels))
    presence["heldout"] = {"n": int(len(held_truths)), "errors": presence_errors(presence, held, held_truths),
                           "errors_before": presence_errors(None, held, held_truths)}
    score_levels(checked, val["truths"], presence, cfg.progress)
    validation = {str(v): {"learned": {"mean": float(checked[v]["learned"].mean()),
                                       "std": float(checked[v]["learned"].std()),
                                       "mean_without_presence_rule": float(checked[v]["plain"].mean()),
                                       "heldout_mean": float(checked[v]["learned"][half:].mean()),
                                       "heldout_mean_without_presence_rule": float(checked[v]["plain"][half:].mean())},
                           "linear": {"mean": float(checked[v]["linear"].mean()),
                                      "std": float(checked[v]["linear"].std()), "n": int(len(checked[v]["linear"]))}}
                  for v in cfg.levels}
    meta = {
        "levels": list(cfg.levels), "grid": cfg.grid, "sigma0": calibration.sigma,
        "kept_sets": [{"level": v, "patterns": contexts[v].reference.patterns.tolist(),
                       "measurements": contexts[v].reference.measurements.tolist()} for v in cfg.levels],
        "prior_scales": list(cfg.prior_scales), "mask_channel": True, "presence": presence,
        "calibration_residual": calibration.residual, "simulation": asdict(sim), "training": asdict(train_cfg),
        "init": cfg.init, "n_train": cfg.n_train, "n_val": cfg.n_val, "loss": history, "validation": validation,
        "seconds": {"calibration_and_linearisation": round(t_cal, 1), "simulation": round(t_sim, 1),
                    "training": round(t_train, 1)},
    }
    with staged_dir(out) as stage:  # the network and its figure appear together
        save_segmenter(net, stage, meta)
        plot_segmenter_validation(stage / "validation.png", checked, val["truths"], history)
    return read_json(out / "config.json")
