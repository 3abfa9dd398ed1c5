"""Write the default tank meshes ``coarse.msh``, ``default.msh`` and ``fine.msh`` into this folder.

Each mesh is made with the named preset of :data:`eit_manifold.operators.eit.mesh.MESH_PRESETS`
for the default :class:`~eit_manifold.operators.eit.geometry.Tank` (radius 1, 16 electrodes of
arc 0.2, contact impedance 0.01). A file whose text form would exceed 10 MB is written in gmsh's
binary format. The script also prints node/cell counts and the relative error of the electrode
potentials (adjacent patterns, sigma = 1) against the semi-analytic disk solution.

Usage: ``python meshes/make_meshes.py [--only default]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import dolfinx_solver  # noqa: F401  (before dolfinx: sets up the bundled PETSc and MPI)
import numpy as np

from eit_manifold.operators.eit.analytic import homogeneous_disk_potentials
from eit_manifold.operators.eit.forward import CEMForwardModel
from eit_manifold.operators.eit.geometry import Tank
from eit_manifold.operators.eit.mesh import create_tank_mesh, preset_options, tank_mesh

HERE = Path(__file__).resolve().parent
BINARY = {"coarse": False, "default": False, "fine": True}  # fine is 11.3 MB even in binary: > 10 MB as text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BINARY), action="append", help="make only these presets")
    args = parser.parse_args()
    tank = Tank()
    for name in args.only or list(BINARY):
        path = HERE / f"{name}.msh"
        create_tank_mesh(tank, preset_options(name, tank.radius), msh_file=path, binary=BINARY[name])
        loaded = tank_mesh(tank, str(path))  # the file goes through the same tag checks
        model = CEMForwardModel(loaded, "adjacent", "adjacent")
        U = model.solve(np.ones(model.n_cells)).electrode_potentials
        ref = homogeneous_disk_potentials(tank, 1.0, model.currents)
        err = float(np.linalg.norm(U - ref) / np.linalg.norm(ref))
        size = path.stat().st_size / 1e6
        print(f"{name}: {loaded.n_nodes} nodes, {loaded.n_cells} cells, {size:.1f} MB, relative error {err:.2e}")


if __name__ == "__main__":
    main()
