"""KTC2023 pipeline: calibrate on ``ref.mat`` once, reconstruct every ``dataK.mat`` at every asked
level with every asked method, segment, score, and write the tables and figures.

Orchestration only: the methods live in :mod:`eit_manifold.ktc.methods` (typed per-level
:class:`~eit_manifold.ktc.methods.ReconstructionContext`, registry :data:`~eit_manifold.ktc.methods.KTC_METHODS`).
The calibration is computed on the level-1 reference (all electrodes; cached,
:mod:`eit_manifold.ktc.calibration_cache`) and linearised once; a level's context takes the rows
of its kept data (:func:`~eit_manifold.ktc.methods.sub_context`), so ``--level all`` calibrates
and linearises once for all seven levels.

Outputs: with one level and one method ``OUT/dataK.npy`` / ``OUT/dataK.png``; otherwise
``OUT/levelN/METHOD/dataK.npy`` / ``.png`` and one figure per level ``OUT/levelN.png`` (cases by
methods). Always ``OUT/summary.json`` and, with truths, ``OUT/scores.md`` / ``OUT/scores.json``
(rows: case and level, columns: methods).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from eit_manifold.io import check_output_dir, save_npy_atomic, staged_dir, write_bytes_atomic, write_json
from eit_manifold.ktc.atlas_method import AtlasMethodConfig
from eit_manifold.ktc.calibration_cache import cached_calibration
from eit_manifold.ktc.data import LEVELS, KTCMeasurement, check_level, read_ktc, read_truth, restrict_like
from eit_manifold.ktc.methods import (
    BUNDLED_SEGMENTER,
    KTC_METHODS,
    SEGMENTER_HINT,
    MethodOptions,
    ReconstructionContext,
    Resources,
    as_result,
    build_context,
    image_and_segmentation,
    sub_context,
)
from eit_manifold.ktc.score import class_scores
from eit_manifold.validation import check_input_dir, check_int, check_seed

DEFAULT_METHOD = "learned"


@dataclass
class KTCConfig:
    """Options of :func:`run_ktc`.

    ``methods`` and ``levels`` are the columns and the level blocks of the score table; ``cache_dir``
    None means the default calibration cache (:func:`~eit_manifold.ktc.calibration_cache.default_cache_dir`).
    """

    data_dir: str
    out: str
    methods: tuple[str, ...] = (DEFAULT_METHOD,)
    truth_dir: str | None = None
    levels: tuple[int, ...] = (1,)
    seed: int = 0
    grid: int = 48
    per_electrode: bool = True
    segmenter: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    atlas: AtlasMethodConfig = field(default_factory=AtlasMethodConfig)

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        self.levels = tuple(check_level(v) for v in self.levels)
        if not self.methods or not self.levels:
            raise ValueError("need at least one method and one level")
        unknown = [m for m in self.methods if m not in KTC_METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}: choose one of {', '.join(sorted(KTC_METHODS))}")


def parse_levels(text: str) -> tuple[int, ...]:
    """``"all"`` -> 1..7, ``"3"`` -> (3,), ``"1,4,7"`` -> (1, 4, 7); ``ValueError`` naming the value otherwise."""
    if text.strip().lower() == "all":
        return tuple(LEVELS)
    try:
        return tuple(check_level(int(v)) for v in text.split(","))
    except ValueError:
        raise ValueError(f"level must be an integer in 1..7, a comma-separated list of them or 'all', got {text!r}") \
            from None


def parse_methods(text: str) -> tuple[str, ...]:
    """Comma-separated method names, checked against the registry."""
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [m for m in names if m not in KTC_METHODS]
    if unknown or not names:
        raise ValueError(f"--method: unknown method {(unknown or [text])[0]!r}; choose one of "
                         f"{', '.join(sorted(KTC_METHODS))}")
    return names


def _data_files(data_dir: Path) -> list[Path]:
    data_dir = check_input_dir(data_dir, "KTC data directory")
    files = sorted(data_dir.glob("data*.mat"), key=lambda p: (len(p.stem), p.stem))
    if not files:
        raise FileNotFoundError(f"no data*.mat files in {data_dir}")
    if not (data_dir / "ref.mat").is_file():
        raise FileNotFoundError(f"{data_dir} has data files but no ref.mat beside them")
    return files


MAX_GRID = 256


def check_ktc(config: KTCConfig) -> tuple[KTCMeasurement, dict[int, list[tuple[Path, KTCMeasurement]]],
                                           dict[Path, np.ndarray]]:
    """Every check of :func:`run_ktc` before the calibration: options, every data file at every level,
    the reference, every truth (``--truth``: a directory with ``trueK.mat`` for every ``dataK.mat``),
    the segmenter, the atlas and the output directory. Returns the reference, per level the (file,
    data) of every case, and the truths by file."""
    levels = tuple(check_level(v) for v in config.levels)
    check_int("--grid", config.grid, 4, MAX_GRID)
    check_seed("--seed", config.seed)
    data_dir = check_input_dir(config.data_dir, "KTC data directory")
    files = _data_files(data_dir)
    ref_full = read_ktc(data_dir / "ref.mat", 1)
    truth_dir = check_input_dir(config.truth_dir, "--truth directory") if config.truth_dir else None
    inputs: dict[int, list[tuple[Path, KTCMeasurement]]] = {}
    for level in levels:
        inputs[level] = []
        for path in files:
            data = read_ktc(path, level)
            restrict_like(ref_full, data)
            inputs[level].append((path, data))
    truths: dict[Path, np.ndarray] = {}
    if truth_dir is not None:
        for path in files:
            truth_path = truth_dir / f"true{path.stem.removeprefix('data')}.mat"
            if not truth_path.is_file():
                raise FileNotFoundError(f"--truth directory {truth_dir} has no {truth_path.name} for {path.name}")
            truths[path] = read_truth(truth_path)
    if "learned" in config.methods or config.segmenter:
        from eit_manifold.ktc.segmenter import load_segmenter

        path = config.segmenter or BUNDLED_SEGMENTER
        _, meta = load_segmenter(path)
        if "learned" in config.methods:
            if meta.get("grid") != config.grid:
                raise ValueError(f"segmenter {path} was trained on a {meta.get('grid')}-pixel grid, not --grid "
                                 f"{config.grid}; pass --grid {meta.get('grid')}")
            trained = [t.get("level") for t in meta.get("kept_sets") or [{"level": meta.get("level")}]]
            missing = [v for v in levels if v not in trained]
            if missing:
                raise ValueError(f"segmenter {path} was trained for level(s) {trained}, not --level "
                                 f"{','.join(map(str, missing))}; {SEGMENTER_HINT}")
    if "atlas" in config.methods:
        Resources(MethodOptions(atlas=config.atlas)).atlas()
    check_output_dir(config.out, "--out")
    return ref_full, inputs, truths


def run_ktc(config: KTCConfig) -> dict:
    """Reconstruct every ``data*.mat`` of ``config.data_dir`` at every level with every method.

    Every input is checked first (:func:`check_ktc`); the outputs appear in ``config.out`` together
    when every case is done (a failed run writes nothing).

    Returns
    -------
    dict
        ``cases`` (one entry per case, level and method: score when a truth is given, class scores,
        timings, method details), the calibration and its time, ``mean_scores`` per method and level.
    """
    from eit_manifold.ktc.plots import plot_case, plot_level
    from eit_manifold.seeding import seed_everything

    ref_full, inputs, truths = check_ktc(config)
    seed_everything(config.seed)
    ref_path = Path(config.data_dir) / "ref.mat"
    t0 = time.perf_counter()
    calibration, cached = cached_calibration(ref_full, ref_path, config.per_electrode, config.cache_dir,
                                             config.use_cache)
    resources = Resources(MethodOptions(atlas=config.atlas, segmenter=config.segmenter))
    base = build_context(ref_full, config.grid, calibration, resources)
    setup = {"calibration_cached": cached, "calibration_and_linearisation_seconds": round(time.perf_counter() - t0, 2)}
    single = len(config.levels) == 1 and len(config.methods) == 1
    contexts: dict[tuple, ReconstructionContext] = {}
    with staged_dir(config.out) as out:
        cases = []
        for level in config.levels:
            shown: dict[str, dict[str, np.ndarray]] = {}
            for path, data in inputs[level]:
                ref = restrict_like(ref_full, data)
                key = (tuple(data.patterns), tuple(data.measurements))
                if key not in contexts:
                    contexts[key] = sub_context(base, ref)
                ctx = contexts[key]
                change = (data.data - ref.data).ravel()
                for method in config.methods:
                    t1 = time.perf_counter()
                    result = as_result(KTC_METHODS[method](ctx, change))
                    image, seg = image_and_segmentation(result)
                    where = out if single else out / f"level{level}" / method
                    save_npy_atomic(where / f"{path.stem}.npy", seg)
                    case = {"case": path.stem, "level": level, "method": method, "patterns": int(data.shape[0]),
                            "measurements": int(data.shape[1]), "seconds": round(time.perf_counter() - t1, 2)}
                    if result.details is not None:
                        case["details"] = result.details
                    truth = truths.get(path)
                    if truth is not None:
                        scores = class_scores(truth, seg)
                        case.update(score=0.5 * (scores[1] + scores[2]), score_resistive=scores[1],
                                    score_conductive=scores[2])
                    plot_case(where / f"{path.stem}.png", image, seg, truth,
                              title=f"{path.stem} ({method}, level {level})")
                    shown.setdefault(path.stem, {})[method] = seg
                    cases.append(case)
            if not single:
                plot_level(out / f"level{level}.png", shown, {p.stem: t for p, t in truths.items()}, f"level {level}")
        summary = {"config": asdict(config), "setup": setup, "cases": cases, "calibration": calibration.to_dict()}
        means = mean_scores(cases)
        if means:
            summary["mean_scores"] = means
            write_json(out / "scores.json", {"methods": list(config.methods), "levels": list(config.levels),
                                             "cases": cases, "mean_scores": means})
            write_bytes_atomic(out / "scores.md", markdown_table(cases, config.methods, config.levels).encode())
        write_json(out / "summary.json", summary)
    return summary


def mean_scores(cases: list[dict]) -> dict:
    """``{method: {level: mean score}}`` over the scored cases (keys as strings, for JSON)."""
    out: dict[str, dict[str, float]] = {}
    for c in cases:
        if "score" in c:
            out.setdefault(c["method"], {}).setdefault(str(c["level"]), []).append(c["score"])
    return {m: {v: float(np.mean(s)) for v, s in per.items()} for m, per in out.items()}


def markdown_table(cases: list[dict], methods: Sequence[str], levels: Sequence[int]) -> str:
    """Score table in markdown: one row per case and level (then each level's mean), one column per
    method (class scores resistive / conductive in parentheses)."""
    by = {(c["case"], c["level"], c["method"]): c for c in cases if "score" in c}
    names = list(dict.fromkeys(c["case"] for c in cases))
    lines = ["| case | level | " + " | ".join(methods) + " |",
             "| --- | --- | " + " | ".join("---" for _ in methods) + " |"]
    for level in levels:
        rows = [n for n in names if any((n, level, m) in by for m in methods)]
        for n in rows:
            cells = []
            for m in methods:
                c = by.get((n, level, m))
                cells.append(f"{c['score']:.3f} ({c['score_resistive']:.2f} / {c['score_conductive']:.2f})"
                             if c else "")
            lines.append(f"| {n} | {level} | " + " | ".join(cells) + " |")
        if rows:
            means = []
            for m in methods:
                s = [by[(n, level, m)]["score"] for n in rows if (n, level, m) in by]
                means.append(f"**{np.mean(s):.3f}**" if s else "")
            lines.append(f"| mean | {level} | " + " | ".join(means) + " |")
    if len(levels) > 1:
        totals = []
        for m in methods:
            s = [c["score"] for k, c in by.items() if k[2] == m]
            totals.append(f"**{np.mean(s):.3f}**" if s else "")
        lines.append("| mean | all | " + " | ".join(totals) + " |")
    return "\n".join(lines) + "\n"
