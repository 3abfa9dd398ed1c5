"""Gradient benchmark of the CEM solver (issue 3): forward, forward + VJP, Jacobian, vs pyEIT.

Setting: the default tank (radius 1, 16 electrodes of arc 0.2, z = 0.01), 16 adjacent patterns,
adjacent measurements, a smooth non-constant conductivity. Measured in one run:

1. On the ``default`` mesh preset: one forward solve (assembly + factorisation + 16-column solve),
   forward + vector-Jacobian product (the adjoint reuses the factorisation: 16 more
   back-substitutions and a per-cell contraction), and the full Jacobian (one adjoint solve per
   measurement row, 16, then a per-cell contraction over patterns).
2. The Jacobian against pyEIT's ``EITForward.compute_jac`` at equal node count. pyEIT inverts the
   dense stiffness matrix (O(n^3) time, O(n^2) memory) and loops over elements in Python, so it
   cannot run at the default mesh's ~30 000 nodes on this machine (a 30 000^2 dense inverse is
   7 GB); it is measured on meshes of ~2 500 and ~5 000 nodes against our Jacobian on meshes with
   the same node counts, and the ratio at the default size is extrapolated with the measured
   growth exponent of pyEIT's time (stated as an extrapolation in the output).
3. The objective J = 0.5 ||F(sigma) - d||^2 and its gradient through the torch operator
   (``EITOperator``, float64, a 64x64 conductivity image mapped to the cells) on a mesh of about
   19 000 triangles, for comparison with the authors' reference code (1.6 s and 5.4 s there).

Usage: ``python benchmarks/gradient.py [--repeats 5] [--json results/gradient.json]``
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from _common import median_time, pyeit_forward

from eit_manifold.operators.eit import CEMForwardModel, EITOperator, MeshOptions, Tank, tank_mesh
from eit_manifold.operators.eit.mesh import create_tank_mesh

MESH_19K = MeshOptions(mesh_size=0.03, refinement=10.0, grading_radius=6.0)


def smooth_sigma(centroids: np.ndarray) -> np.ndarray:
    return 1.0 + 0.4 * np.sin(2 * centroids[:, 0]) * np.cos(3 * centroids[:, 1])


def bench_default(repeats: int) -> dict:
    model = CEMForwardModel(tank_mesh(Tank(), "default"))
    sigma = smooth_sigma(model.centroids)
    g = np.random.default_rng(0).standard_normal(model.data_shape)
    forward = median_time(lambda: model.solve(sigma), repeats)
    with_vjp = median_time(lambda: model.vjp(model.solve(sigma), g), repeats)
    jacobian = median_time(lambda: model.jacobian(model.solve(sigma)), repeats)
    return {"cells": model.n_cells, "nodes": model.system.n_nodes, "forward_s": forward,
            "forward_vjp_s": with_vjp, "jacobian_s": jacobian, "vjp_over_forward": with_vjp / forward}


def matched_mesh(tank: Tank, target_nodes: int):
    """Our graded mesh with about ``target_nodes`` nodes (bisection on the element size)."""
    lo, hi = 0.005, 1.0
    for _ in range(25):
        h = math.sqrt(lo * hi)
        tm = create_tank_mesh(tank, MeshOptions(h, 10.0, 6.0))
        if abs(tm.n_nodes - target_nodes) < 0.05 * target_nodes:
            break
        lo, hi = (h, hi) if tm.n_nodes > target_nodes else (lo, h)
    return tm


def bench_jacobian_vs_pyeit(repeats: int, targets: tuple[int, ...] = (2500, 5000)) -> list[dict]:
    rows = []
    for target in targets:
        fwd, mesh = pyeit_forward(target)
        perm = np.ones(mesh.n_elems)
        t0 = time.perf_counter()
        fwd.compute_jac(perm)
        pyeit = time.perf_counter() - t0
        model = CEMForwardModel(matched_mesh(Tank(), int(mesh.n_nodes)))
        sigma = np.ones(model.n_cells)
        ours = median_time(lambda m=model, s=sigma: m.jacobian(m.solve(s)), repeats)
        rows.append({"pyeit_nodes": int(mesh.n_nodes), "pyeit_s": pyeit, "our_nodes": model.system.n_nodes,
                     "ours_s": ours, "ratio": pyeit / ours})
    return rows


def bench_objective(repeats: int) -> dict:
    op = EITOperator(Tank(), mesh=create_tank_mesh(Tank(), MESH_19K), image_shape=(64, 64))
    x = torch.full((1, 64, 64), 1.0, dtype=torch.float64)
    x[0, 20:30, 25:40] = 1.5
    d = op(x).detach() * 1.01

    def objective() -> float:
        with torch.no_grad():
            return float(0.5 * ((op(x) - d) ** 2).sum())

    def gradient() -> torch.Tensor:
        xr = x.clone().requires_grad_()
        loss = 0.5 * ((op(xr) - d) ** 2).sum()
        (g,) = torch.autograd.grad(loss, xr)
        return g

    return {"cells": op.n_cells, "nodes": op.tank_mesh.n_nodes, "objective_s": median_time(objective, repeats),
            "gradient_s": median_time(gradient, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description="CEM gradient benchmark against pyEIT")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ms = 1e3
    d = bench_default(args.repeats)
    print(f"default mesh ({d['cells']} cells, {d['nodes']} nodes), median of {args.repeats}:")
    print(f"  forward {d['forward_s'] * ms:.1f} ms | forward + VJP {d['forward_vjp_s'] * ms:.1f} ms "
          f"({d['vjp_over_forward']:.2f} x forward; target <= 1.3) | Jacobian {d['jacobian_s'] * ms:.1f} ms")
    rows = bench_jacobian_vs_pyeit(args.repeats)
    print("Jacobian vs pyEIT compute_jac at equal node count:")
    for r in rows:
        print(f"  pyEIT {r['pyeit_nodes']} nodes {r['pyeit_s'] * ms:.0f} ms | ours {r['our_nodes']} nodes "
              f"{r['ours_s'] * ms:.1f} ms | ratio {r['ratio']:.0f}x (target >= 50)")
    a, b = rows[0], rows[-1]
    exponent = math.log(b["pyeit_s"] / a["pyeit_s"]) / math.log(b["pyeit_nodes"] / a["pyeit_nodes"])
    pyeit_default = b["pyeit_s"] * (d["nodes"] / b["pyeit_nodes"]) ** exponent
    print(f"  extrapolated pyEIT at {d['nodes']} nodes (time ~ n^{exponent:.2f}): {pyeit_default:.0f} s, "
          f"ratio to our default-mesh Jacobian ~{pyeit_default / d['jacobian_s']:.0f}x (extrapolation)")
    o = bench_objective(args.repeats)
    print(f"~19k-triangle mesh ({o['cells']} cells), 16 patterns, 64x64 image through EITOperator: "
          f"objective {o['objective_s'] * ms:.1f} ms (target <= 30), gradient {o['gradient_s'] * ms:.1f} ms "
          f"(target <= 45); reference code: 1600 ms and 5400 ms")
    if args.json is not None:
        from eit_manifold.io import write_json

        write_json(args.json, {"default": d, "jacobian_vs_pyeit": rows, "pyeit_exponent": exponent,
                               "pyeit_default_extrapolated_s": pyeit_default, "objective_19k": o})


if __name__ == "__main__":
    main()
