"""Coverage of the 90 % intervals of the Gauss-Newton Laplace baseline on EIT measurement files.

    python benchmarks/posterior_eit_laplace.py FILE.npz [...] --out results/eit_laplace.json

Per file: the fraction of inside-tank pixels whose true conductivity lies in ``mean +- 1.645 sd``
of :func:`~eit_manifold.baselines.laplace.gauss_newton_laplace` (coarse reconstruction mesh),
its mean band width and the relative error of its mean; compare with ``diagnostics.json`` of
``eit-manifold posterior`` on the same file.
"""

from __future__ import annotations

import argparse

import numpy as np

from eit_manifold.baselines.laplace import gauss_newton_laplace
from eit_manifold.io import write_json
from eit_manifold.metrics import interval_coverage, relative_l2
from eit_manifold.pipelines.reconstruct import load_problem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = []
    for path in args.files:
        prob = load_problem(path, (64, 64))
        if prob.truth is None:
            raise SystemExit(f"{path}: no conductivity_image (truth) in the file")
        lap = gauss_newton_laplace(prob)
        inside = prob.inside
        rows.append({"file": path,
                     "coverage_90": interval_coverage(prob.truth[inside], lap["q05"][inside], lap["q95"][inside]),
                     "mean_band_width": float(np.mean((lap["q95"] - lap["q05"])[inside])),
                     "relative_l2_of_mean": float(relative_l2(lap["mean"][inside], prob.truth[inside])),
                     "weight": lap["details"]["weight"]})
        print(rows[-1])
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
