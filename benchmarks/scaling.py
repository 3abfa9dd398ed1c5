"""Strong scaling of one forward solve (issue 20): 2-D and 3-D meshes, 1 and 2 processes, direct vs iterative.

For every mesh the driver writes a tagged ``.msh`` once, then runs
``mpirun -n N python benchmarks/scaling.py --child ...`` for each process count and solver. A
child loads the mesh (gmsh on rank 0, dolfinx distributes it), and times with barriers:

* **forward**: ``CEMForwardModel.solve`` for all 16 adjacent patterns (assembly, MUMPS Cholesky
  or GAMG set-up + 16 CG solves, combination of the unit-electrode solutions);
* **VJP**: the adjoint gradient of one random data cotangent, after the forward solve;

and reports the peak resident memory of each process (``ru_maxrss``; it includes loading the mesh,
which rank 0 reads whole). Conductivity: smooth random per-cell values in [0.5, 1.5].

Usage: ``python benchmarks/scaling.py [--dims 2,3] [--ranks 1,2] [--repeats 2] [--max-cells 2.5e6]
[--json results/scaling.json]``. ``--quick`` runs small meshes only (a smoke test).
The data of every run are compared with those of the first run on the same mesh (the direct
solver on the first process count, unless that one ran out of time: ``--timeout``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpi4py import MPI

# (name, dimension, MeshOptions arguments): 2-D tank of radius 1 (16 electrodes), 3-D tank of
# radius 1, depth 1, 16 electrodes of width 0.2 from z = 0.3 to 0.7 (extruded meshes).
MESHES = [
    ("2d-233k", 2, (0.02, 20.0, 10.0, 1)),
    ("2d-933k", 2, (0.02, 20.0, 10.0, 2)),
    ("3d-137k", 3, (0.1, 5.0, 3.0, 0)),
    ("3d-551k", 3, (0.07, 8.0, 4.0, 0)),
    ("3d-1.9M", 3, (0.05, 10.0, 6.0, 0)),
]
QUICK = [("2d-12k", 2, (0.05, 10.0, 6.0, 0)), ("3d-41k", 3, (0.2, 5.0, 3.0, 0))]


def _tank(dim: int):
    from eit_manifold.operators.eit import Tank
    from eit_manifold.operators.eit3d import CylinderTank

    return Tank() if dim == 2 else CylinderTank(Tank(), height=1.0, electrode_bottom=0.3, electrode_top=0.7)


def write_mesh(dim: int, options: tuple, path: Path) -> None:
    from eit_manifold.operators.eit import MeshOptions
    from eit_manifold.operators.eit.mesh import create_tank_mesh
    from eit_manifold.operators.eit3d import create_cylinder_mesh

    make = create_tank_mesh if dim == 2 else create_cylinder_mesh
    make(_tank(dim), MeshOptions(*options), comm=MPI.COMM_SELF, msh_file=path)


def child(args: argparse.Namespace) -> None:
    import numpy as np

    from eit_manifold.operators.eit import CEMForwardModel
    from eit_manifold.operators.eit.mesh import load_tank_mesh
    from eit_manifold.operators.eit3d import load_mesh_3d

    comm = MPI.COMM_WORLD
    tank = _tank(args.dim)
    mesh = (load_tank_mesh if args.dim == 2 else load_mesh_3d)(args.mesh, tank, comm)
    model = CEMForwardModel(mesh, solver=args.solver)
    c = model.centroids
    sigma = 1.0 + 0.5 * np.sin(3 * c[:, 0] + 1) * np.cos(2 * c[:, 1]) * (np.cos(2 * c[:, -1]) if args.dim == 3 else 1)
    g = np.random.default_rng(0).standard_normal(model.data_shape)
    fwd, vjp = [], []
    for _ in range(args.repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        res = model.solve(sigma)
        comm.Barrier()
        t1 = time.perf_counter()
        model.vjp(res, g)
        comm.Barrier()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        vjp.append(t2 - t1)
        data = res.measurements
        del res
    peak = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, root=0)  # GiB (kB on Linux)
    if comm.rank == 0:
        out = {"cells": model.n_cells, "nodes": model.system.n_nodes, "solver": model.solver,
               "auto": model.system.choose_solver("auto"),
               "forward_s": float(np.min(fwd)), "vjp_s": float(np.min(vjp)), "peak_gib": peak,
               "data": data.ravel().tolist()}
        Path(args.result).write_text(json.dumps(out))


def driver(args: argparse.Namespace) -> None:
    import numpy as np

    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"
    ranks = [int(r) for r in args.ranks.split(",")]
    dims = {int(d) for d in args.dims.split(",")}
    env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    rows = []
    meshes = [m for m in (QUICK if args.quick else MESHES) if m[1] in dims
              and (args.meshes is None or m[0] in args.meshes.split(","))]
    with tempfile.TemporaryDirectory() as tmp:
        for name, dim, options in meshes:
            path = (args.mesh_dir or Path(tmp)) / f"{name}.msh"
            if not path.is_file():
                t0 = time.perf_counter()
                path.parent.mkdir(parents=True, exist_ok=True)
                write_mesh(dim, options, path)
                print(f"{name}: meshed in {time.perf_counter() - t0:.0f} s", flush=True)
            if args.only_mesh:
                continue
            for n in ranks:
                for solver in args.solvers.split(","):
                    out = Path(tmp) / f"{name}-{n}-{solver}.json"
                    cmd = [mpirun, "-n", str(n), sys.executable, __file__, "--child", "--dim", str(dim),
                           "--mesh", str(path), "--solver", solver, "--repeats", str(args.repeats),
                           "--result", str(out)]
                    try:
                        subprocess.run(cmd, check=True, env=env, timeout=args.timeout)
                    except subprocess.TimeoutExpired:
                        print(f"  {n} proc {solver:9s}: over the {args.timeout:.0f} s limit", flush=True)
                        rows.append({"mesh": name, "dim": dim, "ranks": n, "solver": solver, "timeout": args.timeout})
                        continue
                    r = json.loads(out.read_text())
                    r.update(mesh=name, dim=dim, ranks=n)
                    first = [q["data"] for q in rows if q["mesh"] == name and "data" in q]
                    ref = np.asarray(first[0] if first else r["data"])
                    r["rel_diff"] = float(np.abs(np.asarray(r["data"]) - ref).max() / np.abs(ref).max())
                    rows.append(r)
                    print(f"  {n} proc {solver:9s}: forward {r['forward_s']:7.2f} s  vjp {r['vjp_s']:6.3f} s  "
                          f"peak {max(r['peak_gib']):.2f} GiB/proc  data vs 1-proc direct {r['rel_diff']:.1e}",
                          flush=True)
    if rows:
        print(table(rows, ranks))
    if args.json:
        from eit_manifold.io import write_json

        write_json(args.json, rows)


def table(rows: list[dict], ranks: list[int]) -> str:
    """Markdown table: per mesh and solver, forward times per process count, speed-up, VJP ratio, memory."""
    head = ["mesh", "cells", "solver"] + [f"forward, {n} proc" for n in ranks]
    head += [f"speed-up {ranks[-1]}/{ranks[0]}", "(fwd+VJP) / fwd, " + "/".join(map(str, ranks)) + " proc",
             f"peak GiB/proc ({ranks[-1]} proc)", "max data difference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(r["mesh"] for r in rows):
        by = {(r["solver"], r["ranks"]): r for r in rows if r["mesh"] == name}
        done = [r for r in by.values() if "forward_s" in r]
        if not done:
            continue
        some = done[0]
        for solver in ("direct", "iterative"):
            runs = [by.get((solver, n), {}) for n in ranks]
            if not any(runs):
                continue  # solver not run on this mesh (--solvers)
            best = [min((by[(s, n)]["forward_s"] for s in ("direct", "iterative") if "forward_s" in by.get((s, n), {})),
                        default=None) for n in ranks]
            mark = " (auto)" if solver == some["auto"] else ""
            cells = [f"{r['forward_s']:.2f} s" + (" *" if r["forward_s"] == b else "") if "forward_s" in r
                     else f"> {r.get('timeout', 0):.0f} s" for r, b in zip(runs, best, strict=True)]
            ok = all("forward_s" in r for r in runs)
            speedup = f"{runs[0]['forward_s'] / runs[-1]['forward_s']:.2f}x" if ok else "-"
            vjp = " / ".join(f"{1 + r['vjp_s'] / r['forward_s']:.2f}" if "forward_s" in r else "-" for r in runs)
            last = runs[-1]
            peak = ", ".join(f"{p:.2f}" for p in last["peak_gib"]) if "peak_gib" in last else "-"
            diff = max((r["rel_diff"] for r in runs if "rel_diff" in r), default=float("nan"))
            lines.append(f"| {name} | {some['cells']:,} | {solver}{mark} | " + " | ".join(cells)
                         + f" | {speedup} | {vjp} | {peak} | {diff:.0e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Strong scaling of the distributed forward solve, direct vs iterative")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--mesh", help=argparse.SUPPRESS)
    parser.add_argument("--solver", default="direct", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--dims", default="2,3", help="mesh dimensions to run")
    parser.add_argument("--ranks", default="1,2", help="process counts to compare")
    parser.add_argument("--repeats", type=int, default=2, help="timed solves per run (the fastest is kept)")
    parser.add_argument("--quick", action="store_true", help="small meshes only (smoke test)")
    parser.add_argument("--solvers", default="direct,iterative", help="solvers to run (comma-separated)")
    parser.add_argument("--meshes", default=None, help="comma-separated mesh names to run (default: all)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run (mesh loading included)")
    parser.add_argument("--mesh-dir", type=Path, default=None, help="keep the .msh files here and reuse them")
    parser.add_argument("--only-mesh", action="store_true", help="write the meshes (to --mesh-dir) and stop")
    parser.add_argument("--seed", type=int, default=0, help="unused (deterministic); accepted like every command")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    child(args) if args.child else driver(args)


if __name__ == "__main__":
    main()
