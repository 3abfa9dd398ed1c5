"""Export meshes and fields to XDMF (ParaView) with dolfinx; works the same under MPI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dolfinx
import dolfinx.io
import numpy as np

from eit_manifold.io import check_output_file, make_temp_dir, umask_mode
from eit_manifold.operators.eit.mesh import TankMesh


def export_xdmf(
    path: str | Path,
    tank_mesh: TankMesh,
    cell_fields: dict[str, np.ndarray] | None = None,
    node_fields: dict[str, np.ndarray] | None = None,
) -> None:
    """Write the mesh, its facet tags and fields to ``path`` (.xdmf + .h5), atomically.

    Parameters
    ----------
    path : path-like
        Output ``.xdmf`` file; the heavy data goes to the ``.h5`` file beside it.
    tank_mesh : TankMesh
        The mesh (serial: fields are indexed like :func:`~.cem.p1_discretisation`).
    cell_fields : dict, optional
        Per-cell values (DG0) in the canonical cell order (as everywhere in the public API),
        e.g. ``{"conductivity": sigma}``.
    node_fields : dict, optional
        Per-node values of this process's P1 dofs (owned and ghost), e.g. solution potentials.
    """
    path = Path(path)
    mesh = tank_mesh.mesh
    comm = mesh.comm
    # Write into a private folder with the final names (the .xdmf refers to the .h5 by name),
    # then move both files into place. The folder is made inside the destination directory so that
    # the move never crosses a filesystem (a $TMPDIR on a tmpfs, a container's mounted volume).
    if comm.rank == 0:
        check_output_file(path)
        check_output_file(path.with_suffix(".h5"))
        tmpdir = make_temp_dir(path.parent, path.stem)
    else:
        tmpdir = None
    tmpdir = Path(comm.bcast(str(tmpdir) if tmpdir else None, root=0))
    try:
        tmp = tmpdir / path.name
        with dolfinx.io.XDMFFile(comm, str(tmp), "w") as xdmf:
            xdmf.write_mesh(mesh)
            tdim = mesh.topology.dim
            mesh.topology.create_connectivity(tdim - 1, tdim)
            xdmf.write_meshtags(tank_mesh.facet_tags, mesh.geometry)
            original = np.asarray(mesh.topology.original_cell_index, dtype=np.int64)
            for name, values in (cell_fields or {}).items():
                f = dolfinx.fem.Function(dolfinx.fem.functionspace(mesh, ("DG", 0)), name=name)
                f.x.array[:] = np.asarray(values)[original[: f.x.array.size]]
                xdmf.write_function(f)
            for name, values in (node_fields or {}).items():
                f = dolfinx.fem.Function(dolfinx.fem.functionspace(mesh, ("Lagrange", 1)), name=name)
                f.x.array[: len(values)] = values
                xdmf.write_function(f)
        comm.barrier()
        if comm.rank == 0:
            mode = umask_mode()
            for f in tmpdir.iterdir():
                check_output_file(path.parent / f.name)
                os.chmod(f, mode)
                os.replace(f, path.parent / f.name)
    finally:
        comm.barrier()
        if comm.rank == 0:
            shutil.rmtree(tmpdir, ignore_errors=True)


def export_meshio(
    path: str | Path,
    coordinates: np.ndarray,
    cells: np.ndarray,
    cell_fields: dict[str, np.ndarray] | None = None,
    node_fields: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a serial mesh and fields with meshio (format from the suffix: .vtu, .vtk, .xdmf, .msh).

    One self-contained file that ParaView and meshio itself read back.
    """
    import meshio

    from eit_manifold.io import atomic_path

    mesh = meshio.Mesh(
        points=np.column_stack([coordinates, np.zeros(len(coordinates))]),
        cells=[("triangle", np.asarray(cells))],
        point_data=dict(node_fields or {}),
        cell_data={k: [np.asarray(v)] for k, v in (cell_fields or {}).items()},
    )
    path = Path(path)
    formats = {".vtu": "vtu", ".vtk": "vtk", ".xdmf": "xdmf", ".msh": "gmsh"}
    if path.suffix not in formats:
        raise ValueError(f"unsupported export format {path.suffix!r}: use one of {', '.join(formats)}")
    with atomic_path(path) as tmp:
        meshio.write(tmp, mesh, file_format=formats[path.suffix])
