"""Meshes of the tank: gmsh generation (graded towards the electrode ends) and ``.msh`` loading.

Tag convention (shared by generated and loaded meshes): the cells carry physical tag 1, the
boundary facets under electrode ``l`` (1-based) carry tag ``l``, the gaps carry ``GAP_TAG`` (1000).
The CEM solution has boundary layers of width about sigma*z at the electrode end points, so the
mesh is refined there (gmsh Distance + Threshold fields) and stays coarse elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import dolfinx
import dolfinx.io.gmsh as dolfinx_gmsh
import numpy as np
from mpi4py import MPI

from eit_manifold.operators.eit.geometry import Tank

DOMAIN_TAG = 1
GAP_TAG = 1000  # independent of L, so a mesh made for another electrode count is detected


@dataclass(frozen=True)
class MeshOptions:
    """How to mesh the tank.

    Parameters
    ----------
    mesh_size : float
        Target element size ``h`` away from the electrode ends (absolute length unit).
    refinement : float
        Ratio between ``h`` and the element size at the electrode end points.
    grading_radius : float
        Distance (in units of ``h``) over which the size grows from ``h / refinement`` to ``h``.
    uniform_refinements : int
        Split every triangle into four this many times after meshing (new boundary nodes lie on
        the circle): the way to halve ``h`` everywhere for convergence studies.
    """

    mesh_size: float = 0.05
    refinement: float = 20.0
    grading_radius: float = 3.0
    uniform_refinements: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mesh_size) and self.mesh_size > 0):
            raise ValueError(f"mesh_size must be a positive number, got {self.mesh_size!r}")
        if not (math.isfinite(self.refinement) and self.refinement >= 1):
            raise ValueError(f"refinement must be >= 1, got {self.refinement!r}")
        if not (math.isfinite(self.grading_radius) and self.grading_radius > 0):
            raise ValueError(f"grading_radius must be > 0, got {self.grading_radius!r}")


# Named meshes for a tank of radius 1 (sizes scale with the radius). Measured against the
# semi-analytic disk solution (16 electrodes of arc 0.2, z = 0.01, adjacent patterns):
# coarse 11 456 cells, 4.2e-3 relative error; default 58 334 cells, 7.8e-4; fine 233 336 cells.
MESH_PRESETS: dict[str, MeshOptions] = {
    "coarse": MeshOptions(mesh_size=0.05, refinement=10.0, grading_radius=6.0),
    "default": MeshOptions(mesh_size=0.02, refinement=20.0, grading_radius=10.0),
    "fine": MeshOptions(mesh_size=0.02, refinement=20.0, grading_radius=10.0, uniform_refinements=1),
}


def preset_options(name: str, radius: float = 1.0, presets: dict[str, MeshOptions] | None = None) -> MeshOptions:
    """The named mesh preset (``coarse``, ``default``, ``fine``) scaled to a tank of ``radius``.

    ``presets``: the table to look in (default: the 2-D :data:`MESH_PRESETS`).
    """
    presets = MESH_PRESETS if presets is None else presets
    if name not in presets:
        raise ValueError(f"unknown mesh preset {name!r}: choose one of {', '.join(presets)}")
    o = presets[name]
    return MeshOptions(o.mesh_size * radius, o.refinement, o.grading_radius, o.uniform_refinements)


@dataclass
class TankMesh:
    """A dolfinx mesh of the tank with its facet tags (electrode ``l`` tagged ``l``)."""

    mesh: dolfinx.mesh.Mesh
    facet_tags: dolfinx.mesh.MeshTags
    tank: Tank
    source: str

    @property
    def comm(self) -> MPI.Comm:
        """The communicator the mesh is distributed over."""
        return self.mesh.comm

    @property
    def n_cells(self) -> int:
        """Global number of cells."""
        return self.mesh.topology.index_map(self.mesh.topology.dim).size_global

    @property
    def n_nodes(self) -> int:
        """Global number of vertices."""
        return self.mesh.topology.index_map(0).size_global


def _boundary_breakpoints(tank: Tank) -> list[tuple[float, int]]:
    """Angles that split the circle, each with the tag of the arc that *starts* there."""
    pts: list[tuple[float, int]] = []
    for l, (a, b) in enumerate(tank.electrode_intervals):
        pts.append((a % (2 * math.pi), l + 1))
        pts.append((b % (2 * math.pi), GAP_TAG))
    pts.sort()
    return pts


def _build_gmsh_model(tank: Tank, options: MeshOptions, generate: bool = True) -> int:
    """Create the 2-D gmsh model of the tank in the current gmsh session; return the surface tag.

    With ``generate=False`` only the geometry, its physical groups and the size field are set up
    (the 3-D tank extrudes this cross-section).
    """
    import gmsh

    R = tank.radius
    h = options.mesh_size
    gmsh.model.add("tank")
    geo = gmsh.model.geo
    centre = geo.addPoint(0.0, 0.0, 0.0, h)
    breaks = _boundary_breakpoints(tank)
    # Subdivide long arcs: gmsh circle arcs must be shorter than pi.
    angles: list[float] = []
    tags: list[int] = []
    end_point_indices: list[int] = []
    for i, (theta, tag) in enumerate(breaks):
        nxt = breaks[(i + 1) % len(breaks)][0]
        span = (nxt - theta) % (2 * math.pi)
        pieces = max(1, math.ceil(span / (math.pi / 3)))
        end_point_indices.append(len(angles))
        for j in range(pieces):
            angles.append(theta + span * j / pieces)
            tags.append(tag)
    points = [geo.addPoint(R * math.cos(t), R * math.sin(t), 0.0, h) for t in angles]
    arcs = [geo.addCircleArc(points[i], centre, points[(i + 1) % len(points)]) for i in range(len(points))]
    loop = geo.addCurveLoop(arcs)
    surface = geo.addPlaneSurface([loop])
    geo.synchronize()
    gmsh.model.addPhysicalGroup(2, [surface], DOMAIN_TAG, name="domain")
    for tag in sorted(set(tags)):
        curves = [arc for arc, t in zip(arcs, tags, strict=True) if t == tag]
        name = "gaps" if tag == GAP_TAG else f"electrode_{tag}"
        gmsh.model.addPhysicalGroup(1, curves, tag, name=name)
    # Grade the mesh towards the electrode end points.
    grade_towards("PointsList", [points[i] for i in end_point_indices], options)
    if generate:
        gmsh.model.mesh.generate(2)
        for _ in range(options.uniform_refinements):
            gmsh.model.mesh.refine()
    return surface


def grade_towards(kind: str, tags: list[int], options: MeshOptions, sampling: int | None = None) -> None:
    """Background size field: ``h / refinement`` at the given entities (``PointsList`` or
    ``CurvesList``), growing linearly to ``h`` at ``grading_radius * h`` (gmsh Distance + Threshold)."""
    import gmsh

    h = options.mesh_size
    field = gmsh.model.mesh.field
    dist = field.add("Distance")
    field.setNumbers(dist, kind, tags)
    if sampling is not None:
        field.setNumber(dist, "Sampling", sampling)
    thr = field.add("Threshold")
    field.setNumber(thr, "InField", dist)
    field.setNumber(thr, "SizeMin", h / options.refinement)
    field.setNumber(thr, "SizeMax", h)
    field.setNumber(thr, "DistMin", 0.0)
    field.setNumber(thr, "DistMax", options.grading_radius * h)
    field.setAsBackgroundMesh(thr)
    gmsh.option.setNumber("Mesh.MeshSizeExtendFromBoundary", 0)
    gmsh.option.setNumber("Mesh.MeshSizeFromPoints", 0)
    gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
    gmsh.option.setNumber("Mesh.Algorithm", 6)  # Frontal-Delaunay: good quality with size fields


def _gmsh_session():
    import gmsh

    gmsh.initialize(interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.option.setNumber("General.Verbosity", 0)
    return gmsh


def _check_tags(facet_tags: dolfinx.mesh.MeshTags | None, tank: Tank, source: str, comm: MPI.Comm) -> None:
    """Every electrode must have tagged facets, else the mesh cannot carry the CEM."""
    if facet_tags is None:
        raise ValueError(f"mesh {source} has no facet tags: electrode l must be tagged l (1..{tank.n_electrodes})")
    local = np.zeros(tank.n_electrodes + 1, dtype=np.int64)
    vals = facet_tags.values
    ok = (vals >= 1) & (vals <= tank.n_electrodes)
    np.add.at(local, vals[ok], 1)
    counts = comm.allreduce(local, op=MPI.SUM)
    missing = [l for l in range(1, tank.n_electrodes + 1) if counts[l] == 0]
    if missing:
        raise ValueError(
            f"mesh {source} lacks facets tagged for electrodes {missing} "
            f"(expected tags 1..{tank.n_electrodes}; is the electrode count right?)"
        )
    extra = np.unique(comm.allreduce(vals[(vals > tank.n_electrodes) & (vals != GAP_TAG)].tolist(), op=MPI.SUM))
    if extra.size:
        raise ValueError(
            f"mesh {source} has electrode tags {extra.tolist()} beyond {tank.n_electrodes}: it was made for "
            f"more electrodes than the tank's {tank.n_electrodes}"
        )


def create_tank_mesh(
    tank: Tank,
    options: MeshOptions | None = None,
    comm: MPI.Comm = MPI.COMM_WORLD,
    msh_file: str | Path | None = None,
    binary: bool = False,
) -> TankMesh:
    """Mesh the tank with gmsh on rank 0 and distribute it over ``comm``.

    Parameters
    ----------
    tank : Tank
        Geometry.
    options : MeshOptions, optional
        Element size and grading; defaults to ``MeshOptions()``.
    comm : MPI.Comm
        Communicator to distribute the mesh over.
    msh_file : path, optional
        Also write the gmsh mesh to this ``.msh`` file (rank 0, atomically).
    binary : bool
        Write ``msh_file`` in gmsh's binary format (``Mesh.Binary``) rather than text.
    """
    options = options or MeshOptions()
    source = f"<generated h={options.mesh_size:g}, refinement={options.refinement:g}>"
    return generate_mesh(lambda: _build_gmsh_model(tank, options), tank, comm, 2, source, msh_file, binary)


def generate_mesh(build, tank, comm: MPI.Comm, gdim: int, source: str, msh_file: str | Path | None = None,
                  binary: bool = False) -> TankMesh:
    """Run ``build()`` (a gmsh model, meshed) on rank 0, write it to ``msh_file`` if given
    (atomically), distribute it over ``comm`` and check the electrode tags (2-D and 3-D)."""
    gmsh = _gmsh_session() if comm.rank == 0 else None
    try:
        if comm.rank == 0:
            build()
            if msh_file is not None:
                from eit_manifold.io import atomic_path

                gmsh.option.setNumber("Mesh.Binary", int(binary))
                with atomic_path(msh_file, suffix=".msh") as tmp:
                    gmsh.write(str(tmp))
        import gmsh as gmsh_module

        data = dolfinx_gmsh.model_to_mesh(gmsh_module.model, comm, 0, gdim=gdim)
    finally:
        if gmsh is not None:
            gmsh.finalize()
    _check_tags(data.facet_tags, tank, source, comm)
    return TankMesh(data.mesh, data.facet_tags, tank, source)


def read_msh(path: Path, comm: MPI.Comm, dim: int, kind: str):
    """Read a ``.msh`` file with dolfinx (rank 0 reads, all receive); one-line errors for a missing
    or unreadable file and for a mesh that is not ``dim``-dimensional (``kind`` names it)."""
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    try:
        data = dolfinx_gmsh.read_from_msh(path, comm, 0, gdim=dim)
    except Exception as exc:  # gmsh raises bare Exceptions for unreadable files
        import gmsh

        if gmsh.isInitialized():  # read_from_msh does not finalize when merge fails
            gmsh.finalize()
        raise ValueError(f"cannot read mesh file {path}: {exc}") from exc
    if data.mesh.topology.dim != dim:
        raise ValueError(f"mesh file {path} is not a {kind} mesh (dimension {data.mesh.topology.dim})")
    return data


def load_tank_mesh(path: str | Path, tank: Tank, comm: MPI.Comm = MPI.COMM_WORLD) -> TankMesh:
    """Load a gmsh ``.msh`` file that follows the tag convention of this module.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be read as a mesh, or lacks electrode tags for ``tank``.
    """
    path = Path(path)
    data = read_msh(path, comm, 2, "2-D triangle")
    radii = np.linalg.norm(data.mesh.geometry.x[:, :2], axis=1)
    r_max = comm.allreduce(float(radii.max()) if radii.size else 0.0, op=MPI.MAX)
    if not math.isclose(r_max, tank.radius, rel_tol=1e-3):
        raise ValueError(f"mesh file {path} has radius {r_max:g}, but the tank's radius is {tank.radius:g}")
    _check_tags(data.facet_tags, tank, str(path), comm)
    return TankMesh(data.mesh, data.facet_tags, tank, str(path))


def check_mesh_option(mesh: str | None, mesh_size: float | None, radius: float | None = None) -> None:
    """Check ``--mesh`` / ``--mesh-size`` before any meshing: a preset or an existing file, not both,
    and (given the tank's ``radius``) an element size in [R/500, R] (smaller would mean millions of
    cells)."""
    from eit_manifold.validation import InputError, check_float, check_input_file

    if mesh is not None and mesh_size is not None:
        raise InputError(f"give either --mesh ({mesh}) or --mesh-size ({mesh_size}), not both")
    if mesh is not None and mesh not in MESH_PRESETS:
        check_input_file(mesh, "mesh file")
    if mesh_size is not None:
        check_float("--mesh-size", mesh_size, 0.0, lo_open=True)
        if radius is not None:
            check_float("--mesh-size", mesh_size, radius / 500, radius)


def tank_mesh(
    tank: Tank,
    mesh: str | Path | MeshOptions | None = None,
    mesh_size: float | None = None,
    comm: MPI.Comm = MPI.COMM_WORLD,
) -> TankMesh:
    """Resolve the ways a user names a mesh into a :class:`TankMesh`.

    Parameters
    ----------
    tank : Tank
        Geometry.
    mesh : str, path, MeshOptions or None
        A preset name (``coarse``, ``default``, ``fine``), a ``.msh`` file, or explicit options.
        ``None`` means the ``default`` preset (or ``mesh_size`` when given).
    mesh_size : float, optional
        Element size away from the electrodes; overrides the preset's size (grading kept).
    comm : MPI.Comm
        Communicator to distribute the mesh over.

    A :class:`~eit_manifold.operators.eit3d.geometry.CylinderTank` gets the 3-D meshes
    (:func:`~eit_manifold.operators.eit3d.mesh.tank_mesh_3d`, the same arguments).
    """
    from eit_manifold.operators.eit3d.geometry import CylinderTank

    if isinstance(tank, CylinderTank):
        from eit_manifold.operators.eit3d.mesh import tank_mesh_3d

        return tank_mesh_3d(tank, mesh, mesh_size, comm)
    return resolve_mesh(tank, mesh, mesh_size, comm, MESH_PRESETS, create_tank_mesh, load_tank_mesh)


def resolve_mesh(tank, mesh, mesh_size, comm, presets: dict[str, MeshOptions], create, load) -> TankMesh:
    """Options, a preset name (``None``: ``default``, with ``mesh_size`` overriding its size) or a
    mesh file, made into a :class:`TankMesh` by ``create(tank, options, comm)`` or ``load(path, tank, comm)``."""
    if isinstance(mesh, MeshOptions):
        return create(tank, mesh, comm)
    if mesh is None or (isinstance(mesh, str) and mesh in presets):
        options = preset_options(mesh or "default", tank.radius, presets)
        if mesh_size is not None:
            options = MeshOptions(mesh_size, options.refinement, options.grading_radius)
        return create(tank, options, comm)
    if mesh_size is not None:
        raise ValueError(f"give either a mesh file ({mesh}) or a mesh size ({mesh_size}), not both")
    return load(mesh, tank, comm)
