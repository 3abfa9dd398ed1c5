"""The README's validation tables from one or more ``report`` runs (``results.json``).

Runs are merged per (method, family, index, noise): a later file replaces an earlier one's items
(rerunning some methods, e.g. after an atlas was retrained, keeps the other methods' items). Prints
the held-out table per noise level (mean ± std [min, max] of the rel. L2 error, PSNR, SSIM, on
how many phantoms ``--reference`` is lower, CPU seconds), the paired differences of the reference
against every other method (mean and standard error over the phantoms), and the out-of-family
errors; ``--out`` writes the merged items and their summary as one ``results.json``.

    python scripts/report_comparison.py docs/figures/report_summary.json NEW/results.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from eit_manifold.io import write_json
from eit_manifold.pipelines.report import ReportConfig, aggregate


def merge(paths: list[Path]) -> tuple[list[dict], dict]:
    """Items of all runs (later runs win per key) and the union of their method tables."""
    items: dict[tuple, dict] = {}
    methods: dict = {}
    for path in paths:
        run = json.loads(path.read_text())
        methods.update(run["config"]["methods"])
        for item in run["items"]:
            items[(item["method"], item["family"], item["index"], item["noise"])] = item
    return list(items.values()), methods


def _values(items: list[dict], method: str, family: str, noise: float, metric: str) -> dict[int, float]:
    return {r["index"]: r["metrics"][metric] for r in items
            if r["method"] == method and r["family"] == family and r["noise"] == noise}


def held_out_table(items: list[dict], methods: list[str], reference: str) -> str:
    lines = ["| noise | method | rel. L2 error | PSNR (dB) | SSIM | ref. lower on | CPU (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    paired = []
    for noise in sorted({r["noise"] for r in items}, reverse=True):
        ref = _values(items, reference, "balls", noise, "relative_l2")
        for m in methods:
            err = _values(items, m, "balls", noise, "relative_l2")
            if not err:
                continue
            e = np.array(list(err.values()))
            psnr = np.array(list(_values(items, m, "balls", noise, "psnr").values()))
            ssim = np.array(list(_values(items, m, "balls", noise, "ssim").values()))
            cpu = np.array(list(_values(items, m, "balls", noise, "reconstruction_cpu_s").values()))
            common = sorted(set(err) & set(ref))
            lower = "—" if m == reference else f"{sum(ref[i] < err[i] for i in common)} / {len(common)}"
            lines.append(f"| {noise:g} | {m} | {e.mean():.4f} ± {e.std():.3f} [{e.min():.3f}, {e.max():.3f}] | "
                         f"{psnr.mean():.1f} ± {psnr.std():.1f} | {ssim.mean():.3f} | {lower} | "
                         f"{cpu.mean():.1f} ± {cpu.std():.1f} |")
            if m != reference and common:
                d = np.array([ref[i] - err[i] for i in common])
                rel = d.mean() / np.mean([err[i] for i in common])
                paired.append(f"noise {noise:g}: {reference} - {m}: {d.mean():+.4f} (standard error "
                              f"{d.std(ddof=1) / np.sqrt(len(d)):.4f}, {rel:+.1%} of {m}'s mean), "
                              f"lower on {int((d < 0).sum())} / {len(d)}")
    return "\n".join(lines + [""] + paired)


def out_of_family_table(items: list[dict], methods: list[str]) -> str:
    families = sorted({r["family"] for r in items} - {"balls"})
    noises = sorted({r["noise"] for r in items}, reverse=True)
    lines = ["| method | " + " | ".join(families) + " |", "|---|" + "---:|" * len(families)]
    for m in methods:
        cells = []
        for f in families:
            v = [_values(items, m, f, eta, "relative_l2") for eta in noises]
            cells.append(" / ".join(f"{next(iter(x.values())):.3f}" if x else "—" for x in v))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="report results.json files, oldest first")
    ap.add_argument("--reference", default="atlas K=2")
    ap.add_argument("--out", type=Path, help="write the merged results.json here")
    args = ap.parse_args()
    items, methods = merge(args.runs)
    order = list(methods)
    print(held_out_table(items, order, args.reference))
    print()
    print(out_of_family_table(items, order))
    if args.out:
        base = json.loads(args.runs[0].read_text())["config"]
        known = {f.name for f in fields(ReportConfig)}  # a merged file's config also has merged_from
        config = ReportConfig(**{**{k: v for k, v in base.items() if k in known},
                                 "methods": {k: tuple(v) for k, v in methods.items()},
                                 "noise": tuple(base["noise"]), "out_of_family": tuple(base["out_of_family"])})
        write_json(args.out, {"config": {**base, "methods": methods, "merged_from": [str(p) for p in args.runs]},
                              "summary": aggregate(items, config), "items": items})


if __name__ == "__main__":
    main()
