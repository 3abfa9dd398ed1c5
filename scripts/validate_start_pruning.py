"""Validation of the multi-start pruning rule on phantoms no report or test uses.

Runs the default atlas reconstruction (``reconstruct``'s settings, ``coarse`` mesh as in the demo
and the report) *without* pruning on held-out balls phantoms 100.. (1 % noise), records every
start's objective after every iteration, and checks offline which pruning schedules would have
kept the eventual winner (then the pruned run ends at the same point, up to round-off) and how
many start-iterations they save. Writes ``docs/figures/start_pruning.json``.

    python scripts/validate_start_pruning.py --n 8 --atlas balls --out docs/figures/start_pruning.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from eit_manifold.baselines.eit_absolute import gauss_newton_warm_start
from eit_manifold.io import write_json
from eit_manifold.manifold import load_atlas
from eit_manifold.metrics import relative_l2
from eit_manifold.operators.eit.conductivity_map import image_to_conductivity
from eit_manifold.optim import multistart_descent
from eit_manifold.pipelines.reconstruct import heldout_problems, misfit_objective

SCHEDULES = {"halve@10,20": (10, 20), "halve@10,20,30": (10, 20, 30), "halve@5,10,20": (5, 10, 20),
             "halve@15,30": (15, 30), "halve@10": (10,)}


def pruned_survivors(objective: np.ndarray, at: tuple[int, ...]) -> tuple[set[int], int]:
    """Starts left after halving at iterations ``at`` (the better half by current objective, ties
    kept) and the start-iterations this costs on the recorded history ``(T + 1, B)``."""
    T, B = objective.shape[0] - 1, objective.shape[1]
    alive, cost, prev = set(range(B)), 0, 0
    for t in [a for a in at if a < T] + [T]:
        cost += (t - prev) * len(alive)
        if t < T:
            order = sorted(alive, key=lambda j: objective[t, j])
            alive = set(order[: max(1, (len(order) + 1) // 2)])
        prev = t
    return alive, cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--first", type=int, default=100)
    parser.add_argument("--atlas", default="balls")
    parser.add_argument("--out", default="docs/figures/start_pruning.json")
    args = parser.parse_args()
    atlas = load_atlas(args.atlas)
    rows = []
    for i, problem in heldout_problems(range(args.first, args.first + args.n)):
        t0 = time.perf_counter()
        warm = torch.as_tensor(gauss_newton_warm_start(problem, 0.2, 1.8))[None]
        found = multistart_descent(atlas, misfit_objective(problem, 0.2, 1.8), warm, prior_starts=8, seed=0,
                                   max_iter=60, ftol=1e-5)
        seconds = time.perf_counter() - t0
        res = found.result
        sigma = image_to_conductivity(res.x.detach().double(), 0.2, 1.8, clip=True).numpy()
        err = float(relative_l2(sigma[problem.inside], problem.truth[problem.inside]))
        obj = np.where(np.isfinite(res.history.objective), res.history.objective, np.inf)
        row = {"index": i, "error": err, "seconds": seconds, "iterations": res.n_iter,
               "winner": res.best_start, "objective": obj.tolist()}
        for name, at in SCHEDULES.items():
            alive, cost = pruned_survivors(obj, at)
            row[name] = {"winner_kept": res.best_start in alive, "cost": cost, "full_cost": obj.shape[1] * res.n_iter}
        rows.append(row)
        print(i, f"err {err:.4f} {seconds:.0f}s iter {res.n_iter} winner {res.best_start}",
              {k: row[k]["winner_kept"] for k in SCHEDULES}, flush=True)
        summary = {name: {"winner_kept": sum(r[name]["winner_kept"] for r in rows), "of": len(rows),
                          "cost_fraction": float(np.mean([r[name]["cost"] / r[name]["full_cost"] for r in rows]))}
                   for name in SCHEDULES}
        # written after every phantom: an interrupted run keeps what it measured
        write_json(args.out, {"atlas": args.atlas, "summary": summary, "rows": rows})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
