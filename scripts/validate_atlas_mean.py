"""Posterior mean against the descent's end point, on phantoms no report uses.

For held-out balls phantoms 100.. (simulated on the ``default`` mesh, reconstructed on ``coarse``,
as in the report) runs ``reconstruct --method atlas`` (the default descent) and ``--method
atlas-mean`` (the posterior mean on the same atlas) and records both errors and times; phantoms
are split over the MPI processes. Writes the JSON at the end (every per-phantom value).

    mpirun -n 2 python scripts/validate_atlas_mean.py --first 100 --n 20 --noise 0.01 \\
        --out docs/figures/atlas_mean_validation.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from mpi4py import MPI

from eit_manifold.io import write_json
from eit_manifold.operators.eit.parallel import spmd_map
from eit_manifold.pipelines.reconstruct import ReconstructConfig, heldout_problems, reconstruct_problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--first", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--atlas", default="balls")
    parser.add_argument("--methods", default="atlas,atlas-mean")
    parser.add_argument("--out", default="docs/figures/atlas_mean_validation.json")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    methods = args.methods.split(",")

    def run(i: int) -> dict:
        (_, problem), = heldout_problems([i], noise=args.noise)
        row = {"index": i}
        for m in methods:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            res = reconstruct_problem(problem, ReconstructConfig(data="-", method=m, atlas=args.atlas))
            row[m] = {"relative_l2": res["metrics"]["relative_l2"], "wall_s": time.perf_counter() - t0,
                      "details": {k: v for k, v in res["details"].items()
                                  if k in ("chart", "chart_probabilities", "ess_min", "rhat_max", "iterations")}}
        print(i, {m: round(row[m]["relative_l2"], 4) for m in methods},
              {m: round(row[m]["wall_s"], 1) for m in methods}, flush=True)
        return row

    rows = spmd_map(run, list(range(args.first, args.first + args.n)), comm)
    if comm.rank == 0:
        summary = {m: {"mean": float(np.mean([r[m]["relative_l2"] for r in rows])),
                       "std": float(np.std([r[m]["relative_l2"] for r in rows])),
                       "wall_s": float(np.mean([r[m]["wall_s"] for r in rows]))} for m in methods}
        write_json(args.out, {"atlas": args.atlas, "noise": args.noise, "summary": summary, "rows": rows})
        print(summary)


if __name__ == "__main__":
    main()
