"""Score the KTC methods on simulated KTC-like cases (validation data other than data1-4).

Calibrates on ``ref.mat`` (level 1) exactly as ``eit-manifold ktc`` does, simulates ``--n`` cases
with the phantoms and noise of :mod:`eit_manifold.ktc.simulation` on the finer simulation mesh
(random stream ``[seed, 2]``: neither the segmenter's training nor its validation phantoms), runs
each method on every case with the pipeline's own segmentation and scores it against the
phantom's 256 x 256 classes with the challenge's score, at every level of ``--levels`` (the
level's subset of the simulated data, as ``eit-manifold ktc --level`` uses). ``atlas:K`` runs the
atlas method with contrast ``kappa = ln K``; ``atlas-nolearned`` without the learned warm start.
Writes one JSON line per case, level and method to ``--out`` (appending, so several processes can
split the cases with ``--start``/``--stop``) and prints the mean table.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/ktc_synthetic_validation.py datasets/ktc2023 \\
        --n 12 --methods linear,tv,learned,atlas:10,atlas:100 --out results/ktc-synthetic.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    import dolfinx_solver  # noqa: F401  (before dolfinx)

    from eit_manifold.ktc.atlas_method import AtlasMethodConfig
    from eit_manifold.ktc.calibration_cache import cached_calibration
    from eit_manifold.ktc.data import read_ktc
    from eit_manifold.ktc.levels import level_rows, restrict_level
    from eit_manifold.ktc.methods import (
        KTC_METHODS,
        MethodOptions,
        Resources,
        build_context,
        image_and_segmentation,
        sub_context,
    )
    from eit_manifold.ktc.score import class_scores
    from eit_manifold.ktc.simulation import simulate_pairs
    from eit_manifold.pipelines.ktc import parse_levels

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int, default=None)
    parser.add_argument("--methods", default="linear,tv,learned,atlas:10")
    parser.add_argument("--levels", default="1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/ktc-synthetic.jsonl"))
    args = parser.parse_args()

    ref_path = args.data_dir / "ref.mat"
    reference = read_ktc(ref_path, 1)
    calibration, _ = cached_calibration(reference, ref_path)
    base = build_context(reference, 48, calibration)
    sim = simulate_pairs(calibration, reference, None, args.n, np.random.default_rng([args.seed, 2]), truth_size=256,
                         progress=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    resources = {}
    for level in parse_levels(args.levels):
        level_ctx = sub_context(base, restrict_level(reference, level))
        rows = level_rows(reference, level_ctx.reference)
        for i in range(args.start, args.stop if args.stop is not None else args.n):
            change = sim["changes"][i].astype(float)[rows]
            for spec in args.methods.split(","):
                name, _, factor = spec.partition(":")
                learned_start = name != "atlas-nolearned"
                name = "atlas" if name == "atlas-nolearned" else name
                options = MethodOptions(atlas=AtlasMethodConfig(contrast=math.log(float(factor or 10))),
                                        atlas_learned_start=learned_start)
                level_ctx.resources = resources.setdefault(options, Resources(options))
                t0 = time.perf_counter()
                result = KTC_METHODS[name](level_ctx, change)
                _, seg = image_and_segmentation(result)
                s = class_scores(sim["truths"][i], seg)
                row = {"case": i, "level": level, "method": spec, "score": 0.5 * (s[1] + s[2]),
                       "noise": float(sim["noise"][i]), "seconds": round(time.perf_counter() - t0, 1)}
                details = getattr(result, "details", None)
                if details:
                    row["best_warm"] = details.get("best_warm")
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(row, flush=True)
    summarise(args.out)


def summarise(path: Path) -> None:
    """Print the mean (and std) score per method over the cases in ``path``."""
    scores: dict[tuple, list[float]] = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        scores[(row.get("level", 1), row["method"])].append(row["score"])
    print("| level | method | cases | mean score | std |\n| --- | --- | --- | --- | --- |")
    for (level, method), values in sorted(scores.items()):
        print(f"| {level} | {method} | {len(values)} | {np.mean(values):.3f} | {np.std(values):.3f} |")


if __name__ == "__main__":
    main()
