"""MPI benchmark (issue 7): speed-up of the two parallel modes on 1 and 2 processes, in one run.

(a) **Distributed mesh**: one forward solve (assembly + parallel MUMPS Cholesky + 16 patterns) on
    the ``fine`` mesh preset (233 336 cells), the mesh partitioned over the processes.
(b) **Batch split**: 8 independent reconstructions of held-out balls phantoms (simulated on the
    ``default`` mesh, reconstructed on ``coarse``), split across the processes, each on
    ``COMM_SELF`` with its own copy of the mesh.

The driver runs ``mpirun -n N python benchmarks/mpi.py --child MODE`` for N = 1, 2 and prints the
medians and the speed-ups. Usage: ``python benchmarks/mpi.py [--method atlas|gauss-newton]
[--repeats 3] [--ranks 1,2] [--json results/mpi.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpi4py import MPI


def child_forward(repeats: int) -> dict:
    import numpy as np

    from eit_manifold.operators.eit import CEMForwardModel, Tank, tank_mesh

    comm = MPI.COMM_WORLD
    model = CEMForwardModel(tank_mesh(Tank(), "fine", comm=comm))
    sigma = 1.0 + 0.3 * np.sin(3 * model.centroids[:, 0])
    model.solve(sigma)  # warm-up
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        model.solve(sigma)
        comm.Barrier()
        times.append(time.perf_counter() - t0)
    return {"cells": model.n_cells, "seconds": float(np.median(times))}


def child_batch(method: str, n: int = 8) -> dict:
    import numpy as np

    from eit_manifold.operators.eit.parallel import spmd_map
    from eit_manifold.pipelines.reconstruct import (
        ReconstructConfig,
        make_problem,
        reconstruct_problem,
        reconstruction_operator,
    )
    from eit_manifold.pipelines.simulate import SimulateConfig, simulate_data, simulation_model

    comm = MPI.COMM_WORLD
    sim = SimulateConfig(phantom="balls", noise=0.01)
    model = simulation_model(sim, MPI.COMM_SELF)
    data = [simulate_data(SimulateConfig(phantom="balls", seed=i, noise=0.01), model, np.random.default_rng(i))
            for i in range(n)]
    operator = reconstruction_operator(data[0], (64, 64), comm=MPI.COMM_SELF)
    config = ReconstructConfig(data="<memory>", method=method)
    comm.Barrier()
    t0 = time.perf_counter()
    errors = spmd_map(lambda d: reconstruct_problem(make_problem(d, operator), config)["metrics"]["relative_l2"],
                      data, comm)
    comm.Barrier()
    return {"items": n, "seconds": time.perf_counter() - t0, "mean_relative_l2": float(np.mean(errors))}


def run_child(args: argparse.Namespace) -> None:
    result = child_forward(args.repeats) if args.child == "forward" else child_batch(args.method)
    if MPI.COMM_WORLD.rank == 0:
        Path(args.result).write_text(json.dumps(result))


def driver(args: argparse.Namespace) -> None:
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"
    ranks = [int(r) for r in args.ranks.split(",")]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("forward", "batch"):
            for n in ranks:
                out = Path(tmp) / f"{mode}-{n}.json"
                cmd = [mpirun, "-n", str(n), sys.executable, __file__, "--child", mode, "--result", str(out),
                       "--repeats", str(args.repeats), "--method", args.method]
                # one BLAS/OpenMP thread per process for every N: N processes on N cores, no oversubscription
                env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
                results.setdefault(mode, {})[n] = json.loads(out.read_text())
    base = ranks[0]
    print(f"(a) forward solve, fine mesh ({results['forward'][base]['cells']} cells), mesh distributed:")
    for n in ranks:
        r = results["forward"][n]
        speedup = results["forward"][base]["seconds"] / r["seconds"]
        print(f"    {n} process(es): {r['seconds'] * 1e3:8.1f} ms  speed-up {speedup:.2f}x")
    print(f"(b) batch of {results['batch'][base]['items']} {args.method} reconstructions split across processes:")
    for n in ranks:
        r = results["batch"][n]
        speedup = results["batch"][base]["seconds"] / r["seconds"]
        print(f"    {n} process(es): {r['seconds']:8.1f} s   speed-up {speedup:.2f}x"
              f"  (mean rel. L2 {r['mean_relative_l2']:.3f})")
    if args.json:
        from eit_manifold.io import write_json

        write_json(args.json, results)


def main() -> None:
    parser = argparse.ArgumentParser(description="MPI speed-ups of the distributed mesh and of batch splitting")
    parser.add_argument("--child", choices=["forward", "batch"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="forward solves timed (median)")
    parser.add_argument("--method", default="atlas", help="reconstruction method of the batch")
    parser.add_argument("--ranks", default="1,2", help="process counts to compare")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    run_child(args) if args.child else driver(args)


if __name__ == "__main__":
    main()
