"""Forward-solve benchmark of the CEM solver against pyEIT (issue 2).

Setting: the default tank (radius 1, 16 electrodes of arc 0.2, contact impedance 0.01), all 16
adjacent current patterns, adjacent-difference measurements, a random per-cell conductivity in
[0.5, 1.5]. Two of our meshes are timed:

* ``default``: the ``default`` mesh preset (~58 000 cells, graded towards the electrode ends);
* ``20k``: ``MeshOptions(mesh_size=0.028, refinement=10, grading_radius=6)``, ~20 000 cells.

For each we report the median time of one full forward solve ``CEMForwardModel.solve`` (assembly
of K(sigma) + numeric MUMPS Cholesky factorisation + the 16 unit-electrode solves + combining them
into the patterns) and where the time goes: assembly ``system.petsc_matrix``, factorisation and
unit solves (``system.factorize`` minus assembly) and combining (the rest). The symbolic analysis
is done once per system (on K(1)) and timed separately: it is what a fresh factorisation costs
on top (``analysis_s``: the first factorisation of a new system minus a later one).

Peer: pyEIT's ``EITForward.solve_eit`` (point electrodes, one SuperLU ``spsolve`` per pattern)
on a pyEIT distmesh disk with about the same number of nodes, measured in the same run. The ratio
pyEIT / ours is the speed-up (target >= 10x at equal node count).

Assembly alternatives (issue 2 asks to measure and keep the faster): our precomputed per-cell
stiffness values scaled by sigma and inserted into a PETSc matrix with a fixed COO pattern,
``system.petsc_matrix(sigma)`` (the whole CEM matrix, as the solve uses it) against a DOLFINx
DG0-coefficient form ``s*inner(grad(u), grad(v))*dx`` compiled once, timed as setting the DG0
values plus ``dolfinx.fem.assemble_matrix`` (only the stiffness block; the CEM electrode blocks
would still have to be added).

Usage: ``python benchmarks/forward.py [--repeats 7] [--seed 0] [--json results/forward.json]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import dolfinx_solver  # noqa: F401  (before dolfinx: sets up the bundled PETSc and MPI)

# isort: split
import dolfinx
import numpy as np
import ufl
from _common import PYEIT_NODE_CONSTANT, median_time, pyeit_forward

from eit_manifold.operators.eit.forward import CEMForwardModel
from eit_manifold.operators.eit.geometry import Tank
from eit_manifold.operators.eit.mesh import MeshOptions, TankMesh, create_tank_mesh, tank_mesh

MESH_20K = MeshOptions(mesh_size=0.028, refinement=10.0, grading_radius=6.0)


def bench_ours(tm: TankMesh, rng: np.random.Generator, repeats: int) -> dict[str, Any]:
    """Time a full forward solve and its parts on one of our meshes."""
    model = CEMForwardModel(tm, "adjacent", "adjacent")
    sigma = rng.uniform(0.5, 1.5, model.n_cells)
    total = median_time(lambda: model.solve(sigma), repeats)
    assembly = median_time(lambda: model.system.petsc_matrix(sigma).destroy(), repeats)
    factorize = median_time(lambda: model.system.factorize(sigma), repeats)
    # a factorisation solves the unit-electrode problems; combining them is the remainder
    solve = max(total - factorize, 0.0)
    first = []
    for _ in range(repeats):
        fresh = CEMForwardModel(tm, "adjacent", "adjacent")
        t0 = time.perf_counter()
        fresh.system.factorize(sigma)
        first.append(time.perf_counter() - t0)
    return {
        "analysis_s": max(float(np.median(first)) - factorize, 0.0),
        "nodes": tm.n_nodes,
        "cells": tm.n_cells,
        "total_s": total,
        "assembly_s": assembly,
        "factorisation_s": max(factorize - assembly, 0.0),
        "solve_s": solve,
        "model": model,
        "sigma": sigma,
    }


def bench_pyeit(target_nodes: int, rng: np.random.Generator, repeats: int) -> dict[str, Any]:
    """Time pyEIT's ``solve_eit`` on a distmesh disk with about ``target_nodes`` nodes."""
    t0 = time.perf_counter()
    fwd, mesh = pyeit_forward(target_nodes)
    mesh_time = time.perf_counter() - t0
    h0 = float(np.sqrt(PYEIT_NODE_CONSTANT / target_nodes))
    perm = rng.uniform(0.5, 1.5, mesh.n_elems)
    total = median_time(lambda: fwd.solve_eit(perm), repeats)
    assembly = median_time(lambda: fwd.assemble_pde(perm), repeats)
    return {
        "h0": h0,
        "nodes": int(mesh.n_nodes),
        "cells": int(mesh.n_elems),
        "mesh_generation_s": mesh_time,
        "total_s": total,
        "assembly_s": assembly,
        "solves_s": max(total - assembly, 0.0),
    }


def bench_assembly(tm: TankMesh, model: CEMForwardModel, sigma: np.ndarray, repeats: int) -> dict[str, Any]:
    """Precomputed COO ``system.petsc_matrix`` vs a DOLFINx DG0-coefficient form."""
    V = dolfinx.fem.functionspace(tm.mesh, ("Lagrange", 1))
    Q = dolfinx.fem.functionspace(tm.mesh, ("DG", 0))
    s = dolfinx.fem.Function(Q)
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    form = dolfinx.fem.form(s * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx)  # compiled once
    dg0_dofs = np.asarray(Q.dofmap.list)[:, 0]
    local_sigma = model.system.local_cells(sigma)  # canonical (gmsh) order -> dolfinx's local cell order

    def dolfinx_assemble() -> dolfinx.la.MatrixCSR:
        s.x.array[dg0_dofs] = local_sigma
        return dolfinx.fem.assemble_matrix(form)

    # Check both give the same stiffness block: K(2 sigma) - K(sigma) = A(sigma) on the node block.
    n = model.system.n_nodes
    ours_block = (model.system.matrix(2 * sigma) - model.system.matrix(sigma))[:n, :n]
    assembled = dolfinx_assemble()  # keep it alive: to_scipy() shares its memory
    theirs = assembled.to_scipy().copy()
    del assembled
    diff = float(abs(ours_block - theirs).max() / abs(theirs).max())

    A = dolfinx.fem.create_matrix(form)

    def dolfinx_assemble_into() -> None:
        s.x.array[dg0_dofs] = local_sigma
        A.data[:] = 0.0
        dolfinx.fem.assemble_matrix(A, form)

    ours = median_time(lambda: model.system.petsc_matrix(sigma).destroy(), repeats)
    fresh = median_time(dolfinx_assemble, repeats)
    into = median_time(dolfinx_assemble_into, repeats)
    return {
        "cells": tm.n_cells,
        "ours_coo_s": ours,
        "dolfinx_form_s": fresh,
        "dolfinx_form_preallocated_s": into,
        "ratio_dolfinx_over_ours": fresh / ours,
        "ratio_preallocated_over_ours": into / ours,
        "max_relative_difference": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="CEM forward-solve benchmark against pyEIT")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (median)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random conductivities")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    tank = Tank()
    meshes = {"default": tank_mesh(tank, "default"), "20k": create_tank_mesh(tank, MESH_20K)}

    rows: dict[str, dict[str, Any]] = {}
    assembly: dict[str, dict[str, Any]] = {}
    for name, tm in meshes.items():
        ours = bench_ours(tm, rng, args.repeats)
        peer = bench_pyeit(ours["nodes"], rng, args.repeats)
        assembly[name] = bench_assembly(tm, ours.pop("model"), ours.pop("sigma"), args.repeats)
        rows[name] = {"ours": ours, "pyeit": peer, "speedup_pyeit_over_ours": peer["total_s"] / ours["total_s"]}

    ms = 1e3
    print(f"Forward solve, 16 electrodes, 16 adjacent patterns, median of {args.repeats} (ms)")
    print(f"{'mesh':8} {'nodes':>7} {'cells':>7} {'ours':>8} {'asm':>7} {'fact+L':>7} {'comb.':>7} {'analysis':>8} | "
          f"{'pyEIT nodes':>11} {'cells':>7} {'pyEIT':>8} {'asm':>7} | {'pyEIT/ours':>10}")
    for name, r in rows.items():
        o, p = r["ours"], r["pyeit"]
        print(f"{name:8} {o['nodes']:7d} {o['cells']:7d} {o['total_s'] * ms:8.1f} {o['assembly_s'] * ms:7.1f} "
              f"{o['factorisation_s'] * ms:7.1f} {o['solve_s'] * ms:7.1f} {o['analysis_s'] * ms:8.1f} | "
              f"{p['nodes']:11d} {p['cells']:7d} "
              f"{p['total_s'] * ms:8.1f} {p['assembly_s'] * ms:7.1f} | {r['speedup_pyeit_over_ours']:9.1f}x")
    print("\nAssembly of the sigma-dependent matrix (ms)")
    print(f"{'mesh':8} {'ours COO':>8} {'dolfinx form':>13} {'ratio':>6} {'preallocated':>13} {'ratio':>6} "
          f"{'max rel diff':>12}")
    for name, a in assembly.items():
        print(f"{name:8} {a['ours_coo_s'] * ms:8.2f} {a['dolfinx_form_s'] * ms:13.2f} "
              f"{a['ratio_dolfinx_over_ours']:6.1f} {a['dolfinx_form_preallocated_s'] * ms:13.2f} "
              f"{a['ratio_preallocated_over_ours']:6.1f} {a['max_relative_difference']:12.1e}")
    if args.json is not None:
        from eit_manifold.io import write_json

        write_json(args.json, {"repeats": args.repeats, "seed": args.seed, "forward": rows, "assembly": assembly})


if __name__ == "__main__":
    main()
