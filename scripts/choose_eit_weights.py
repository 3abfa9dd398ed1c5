"""Choose the EIT baselines' regularisation weights on validation phantoms (not the test ones).

Validation phantoms: held-out ``balls`` images of indices ``FIRST .. FIRST + n - 1`` (the report
uses ``seed .. seed + n - 1`` with ``seed = 0`` and ``n <= 20``; index 100-109 chose the atlas
epochs), simulated like the report's (``default`` mesh, reconstruction on ``coarse``), noise seeds
``[1, index, level]``. Prints the table for ``VALIDATED_WEIGHTS`` and writes the errors to JSON.

    python scripts/choose_eit_weights.py --n 4 --out weights.json [--methods tv --noise 0.01 --grid 10,100]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
from mpi4py import MPI

from eit_manifold.baselines.eit_absolute import BASELINES, choose_weight
from eit_manifold.io import write_json
from eit_manifold.pipelines.reconstruct import make_problem, reconstruction_operator
from eit_manifold.pipelines.simulate import SimulateConfig, simulate_data, simulation_model

FIRST = 200
GRID = np.logspace(1.5, 3.5, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--noise", default="0.001,0.01")
    parser.add_argument("--family", default="balls")
    parser.add_argument("--seed", type=int, default=1, help="noise seed")
    parser.add_argument("--methods", default=",".join(BASELINES))
    parser.add_argument("--grid", default=",".join(f"{w:g}" for w in GRID), help="candidate weights")
    parser.add_argument("--out", default="eit_weights.json")
    args = parser.parse_args()
    levels = [float(v) for v in args.noise.split(",")]
    grid = np.array([float(v) for v in args.grid.split(",")])
    sim = SimulateConfig(mesh="default", image_size=64)
    model = simulation_model(sim, MPI.COMM_SELF)
    table: dict = {}
    t0 = time.perf_counter()
    for eta in levels:
        data = [simulate_data(replace(sim, phantom=args.family, seed=FIRST + i, noise=eta), model,
                              np.random.default_rng([args.seed, FIRST + i, round(eta * 1e6)])) for i in range(args.n)]
        operator = reconstruction_operator(data[0], (64, 64), "coarse", comm=MPI.COMM_SELF)
        problems = [make_problem(d, operator) for d in data]
        for method in args.methods.split(","):
            weight, errors = choose_weight(problems, method, grid, progress=True)
            table.setdefault(method, {})[f"{eta:g}"] = {"weight": weight, "grid": grid.tolist(),
                                                        "mean_error": errors.mean(axis=0).tolist(),
                                                        "errors": errors.tolist()}
            print(f"{method} noise {eta:g}: weight {weight:g}; mean errors",
                  " ".join(f"{w:g}:{e:.4f}" for w, e in zip(grid, errors.mean(axis=0), strict=True)), flush=True)
    write_json(args.out, {"family": args.family, "first_index": FIRST, "n": args.n, "noise_seed": args.seed,
                          "seconds": time.perf_counter() - t0, "weights": table})
    print(json.dumps({m: {k: v["weight"] for k, v in t.items()} for m, t in table.items()}))


if __name__ == "__main__":
    main()
