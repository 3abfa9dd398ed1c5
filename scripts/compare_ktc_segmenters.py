"""Two KTC segmenter networks on the same simulated validation phantoms (never on data1-4).

Scores each network exactly as ``ktc-train``'s last stage does (``validate_levels`` then
``score_levels`` with the network's own presence rule) on the validation chunks of a ``ktc-train``
output directory, and prints per level the means and the paired difference with its standard
error. This is how the bundled network was chosen over its predecessor (its README).

    python scripts/compare_ktc_segmenters.py OUT/ --a bundled --b OUT/ --json cmp.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from eit_manifold.ktc.calibration_cache import cached_calibration
from eit_manifold.ktc.data import read_ktc
from eit_manifold.ktc.levels import restrict_level
from eit_manifold.ktc.methods import BUNDLED_SEGMENTER, build_context, sub_context
from eit_manifold.ktc.segmenter import load_segmenter
from eit_manifold.ktc.simulation import SimulationConfig
from eit_manifold.pipelines.ktc_segmenter import (
    LevelSource,
    SegmenterRunConfig,
    score_levels,
    simulate_chunks,
    validate_levels,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="ktc-train output directory (its sim/val_*.npz are used)")
    parser.add_argument("--data", type=Path, default=Path("datasets/ktc2023"), help="directory with ref.mat")
    parser.add_argument("--a", default="bundled")
    parser.add_argument("--b", required=True)
    parser.add_argument("--n-val", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cfg = SegmenterRunConfig(data_dir=str(args.data), out=str(args.run), n_val=args.n_val, seed=args.seed)
    reference = read_ktc(args.data / "ref.mat", 1)
    calibration, _ = cached_calibration(reference, args.data / "ref.mat")
    base = build_context(reference, cfg.grid, calibration)
    contexts = {v: sub_context(base, restrict_level(reference, v)) for v in cfg.levels}
    val = simulate_chunks(calibration, reference, "val", cfg.n_val, cfg.seed, SimulationConfig(), args.run / "sim",
                          False)
    scale = float(np.sqrt(np.mean(reference.data**2)))
    source = LevelSource(contexts, base, val["clean"], val["noise"], scale, cfg.prior_scales)
    scores = {}
    for name in (args.a, args.b):
        net, meta = load_segmenter(BUNDLED_SEGMENTER if name == "bundled" else name)
        with torch.no_grad():
            checked = validate_levels(net, source, val, cfg.seed, n_linear=1)
        score_levels(checked, val["truths"], meta["presence"], False)
        scores[name] = {v: checked[v]["learned"] for v in cfg.levels}
    rows = {}
    for v in cfg.levels:
        a, b = scores[args.a][v], scores[args.b][v]
        d = b - a
        rows[v] = {"a": float(a.mean()), "b": float(b.mean()), "difference": float(d.mean()),
                   "se": float(d.std(ddof=1) / np.sqrt(len(d))), "b_better": float((d > 0).mean())}
        print(f"level {v}: a {rows[v]['a']:.3f}  b {rows[v]['b']:.3f}  b - a {rows[v]['difference']:+.4f} "
              f"(s.e. {rows[v]['se']:.4f}, b higher on {100 * rows[v]['b_better']:.0f} %)")
    if args.json:
        args.json.write_text(json.dumps({"a": args.a, "b": args.b, "levels": rows}, indent=1))


if __name__ == "__main__":
    main()
