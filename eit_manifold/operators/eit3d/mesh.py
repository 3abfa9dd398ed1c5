"""Tetrahedral meshes of the cylindrical tank (gmsh, OpenCASCADE kernel) and tagged ``.msh`` loading.

The tag convention is the 2-D one (:mod:`eit_manifold.operators.eit.mesh`): cells 1, the wall
facets under electrode ``l`` tag ``l``, the rest of the boundary (gaps, bottom, water surface)
``GAP_TAG`` = 1000. The electrodes are cut out of the wall by fragmenting the cylinder with
cylindrical patches; the mesh is graded towards the electrode edges (the boundary layers of the
CEM are along the edges in 3-D), with the same :class:`MeshOptions` as in 2-D.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from mpi4py import MPI

from eit_manifold.operators.eit.mesh import (
    DOMAIN_TAG,
    GAP_TAG,
    MeshOptions,
    TankMesh,
    _check_tags,
    generate_mesh,
    grade_towards,
    preset_options,
    read_msh,
    resolve_mesh,
)
from eit_manifold.operators.eit3d.geometry import CylinderTank

# Presets for a tank of radius 1 (sizes scale with the radius), for the extruded meshes: the
# cross-section is meshed like the 2-D presets and the layers are graded alike. Measured on 16
# full-height electrodes of width 0.2, z = 0.01, water depth 0.1, against the 2-D semi-analytic
# disk (docs/eit3d.md): coarse 2.2e-2 (6k cells per 0.1 of depth), default 1.7e-3 (233k).
MESH_PRESETS_3D: dict[str, MeshOptions] = {
    "coarse": MeshOptions(mesh_size=0.1, refinement=5.0, grading_radius=3.0),
    "default": MeshOptions(mesh_size=0.035, refinement=15.0, grading_radius=8.0),
    "fine": MeshOptions(mesh_size=0.035, refinement=15.0, grading_radius=8.0, uniform_refinements=1),
}


def preset_options_3d(name: str, radius: float = 1.0) -> MeshOptions:
    """The named 3-D preset (``coarse``, ``default``, ``fine``) scaled to a tank of ``radius``."""
    return preset_options(name, radius, MESH_PRESETS_3D)


def _angle_in(theta: float, interval: np.ndarray) -> bool:
    a, b = interval
    return (theta - a) % (2 * math.pi) <= (b - a) + 1e-9


def graded_layers(
    length: float, h: float, h_min: float, dist_max: float, grade_start: bool, grade_end: bool
) -> np.ndarray:
    """Layer boundaries in [0, 1] of an interval of ``length``, graded like the 2-D size field.

    The layer size at distance d from a graded end is ``h_min + (h - h_min) min(d / dist_max, 1)``
    (gmsh's Threshold field), so the vertical grading towards the electrode top and bottom edges
    matches the horizontal one towards their side edges.
    """

    def size(x: float) -> float:
        d = min(x if grade_start else np.inf, length - x if grade_end else np.inf)
        return h if not np.isfinite(d) else h_min + (h - h_min) * min(d / dist_max, 1.0)

    pts = [0.0]
    while pts[-1] < length:
        pts.append(pts[-1] + size(pts[-1] + 0.5 * size(pts[-1])))
    n = max(1, len(pts) - 1 if pts[-1] - length < 0.5 * (pts[-1] - pts[-2]) else len(pts) - 2)
    # march again with n layers and rescale: smooth sizes that end exactly at the interval's end
    x = np.array(pts[: n + 1])
    x = x / x[-1] if x[-1] > 0 else np.linspace(0, 1, n + 1)
    x[-1] = 1.0
    return x


def _classify_wall(tank: CylinderTank, faces: list[tuple[int, int]], centre) -> tuple[dict[int, list[int]], list[int]]:
    """Split boundary faces into electrode faces (by the position of their centre) and the rest."""
    import gmsh

    electrode_faces: dict[int, list[int]] = {l: [] for l in range(tank.n_electrodes)}
    other: list[int] = []
    areas = tank.electrode_areas
    R = tank.radius
    for d, t in faces:
        x, y, z, area = centre(d, t)
        theta = math.atan2(y, x)
        owner = None
        if abs(math.hypot(x, y) - R) < 0.2 * R and gmsh.model.getType(d, t) != "Plane":
            for l, ((zl, zh), iv) in enumerate(zip(tank.electrode_heights, tank.electrode_intervals, strict=True)):
                # the remaining wall (with holes) has its centre of mass near the axis and a larger area
                if _angle_in(theta, iv) and zl - 1e-9 <= z <= zh + 1e-9 and area <= areas[l] * (1 + 1e-6):
                    owner = l
                    break
        (electrode_faces[owner] if owner is not None else other).append(t)
    return electrode_faces, other


def _extruded_model(tank: CylinderTank, options: MeshOptions) -> None:
    """The 2-D graded cross-section extruded in layers graded towards the electrodes' top and bottom.

    Prisms split into tetrahedra: near an electrode edge the cells are small across the edge and
    as long as the layers allow along it, the anisotropy the edge singularity wants. The side
    edges are resolved by the 2-D grading, the top and bottom edges by the layers.
    """
    import gmsh

    from eit_manifold.operators.eit.mesh import _build_gmsh_model as build_section

    h = options.mesh_size
    surface = build_section(tank.section, options, generate=False)
    gmsh.model.removePhysicalGroups()
    H = tank.water_level
    breaks = np.unique(np.concatenate([[0.0, H], tank.electrode_heights.ravel()]))
    geo = gmsh.model.geo
    bottom, volumes, lateral = surface, [], []
    for a, b in zip(breaks[:-1], breaks[1:], strict=True):
        x = graded_layers(b - a, h, h / options.refinement, options.grading_radius * h,
                          grade_start=0 < a < H, grade_end=0 < b < H)
        out = geo.extrude([(2, bottom)], 0, 0, b - a, numElements=[1] * (len(x) - 1), heights=x[1:].tolist())
        bottom = out[0][1]
        volumes.append(out[1][1])
        lateral += [(2, t) for d, t in out[2:] if d == 2]
    geo.synchronize()
    top = bottom

    def centre(d, t):
        # the parametric centre of a ruled lateral face (one arc times one stage): its mid angle
        # and mid height; each face lies within one electrode or one gap (0 area: no area test)
        lo, hi = gmsh.model.getParametrizationBounds(d, t)
        x, y, z = gmsh.model.getValue(d, t, list(0.5 * (np.asarray(lo) + np.asarray(hi))))
        return x, y, z, 0.0

    electrode_faces, other = _classify_wall(tank, lateral, centre)
    gmsh.model.addPhysicalGroup(3, volumes, DOMAIN_TAG, name="domain")
    for l, tags in electrode_faces.items():
        gmsh.model.addPhysicalGroup(2, tags, l + 1, name=f"electrode_{l + 1}")
    gmsh.model.addPhysicalGroup(2, [surface, top, *other], GAP_TAG, name="insulated")
    gmsh.model.mesh.generate(3)
    for _ in range(options.uniform_refinements):
        gmsh.model.mesh.refine()


def _unstructured_model(tank: CylinderTank, options: MeshOptions) -> None:
    """Electrodes cut out of an OpenCASCADE cylinder, tetrahedra graded isotropically towards their edges.

    Works for any electrode layout; isotropic grading along a line costs many more cells than the
    extruded mesh for the same accuracy (docs/eit3d.md).
    """
    import gmsh

    occ = gmsh.model.occ
    R, H, h = tank.radius, tank.water_level, options.mesh_size
    gmsh.model.add("tank3d")
    volume = occ.addCylinder(0, 0, 0, 0, 0, H, R)
    # OCC's cylinder has a seam at angle 0; turn it into the middle of the gap after electrode 1
    # so that no electrode is split (a split would add a refined fake edge).
    intervals = tank.electrode_intervals
    seam = 0.5 * (intervals[0, 1] + intervals[1 % tank.n_electrodes, 0])
    if tank.section.orientation == -1:
        seam = 0.5 * (intervals[0, 0] + intervals[1 % tank.n_electrodes, 1])
    occ.rotate([(3, volume)], 0, 0, 0, 0, 0, 1, seam)
    patches = []
    for (a, b), (z0, z1) in zip(intervals, tank.electrode_heights, strict=True):
        c = occ.addCylinder(0, 0, z0, 0, 0, z1 - z0, R, angle=b - a)
        occ.rotate([(3, c)], 0, 0, 0, 0, 0, 1, a)
        patches.append(c)
    occ.synchronize()
    faces = [(d, t) for c in patches for d, t in gmsh.model.getBoundary([(3, c)], oriented=False)
             if gmsh.model.getType(d, t) == "Cylinder"]
    occ.remove([(3, c) for c in patches])
    occ.fragment([(3, volume)], faces)
    occ.synchronize()
    volumes = gmsh.model.getEntities(3)
    if len(volumes) != 1:
        raise RuntimeError(f"gmsh produced {len(volumes)} volumes for the tank (expected 1)")
    boundary = gmsh.model.getBoundary(volumes, oriented=False)

    def centre(d, t):
        return (*occ.getCenterOfMass(d, t), occ.getMass(d, t))

    electrode_faces, other = _classify_wall(tank, boundary, centre)
    areas = tank.electrode_areas
    for l, tags in electrode_faces.items():
        got = sum(occ.getMass(2, t) for t in tags)
        if not math.isclose(got, areas[l], rel_tol=1e-6):
            raise RuntimeError(f"electrode {l + 1}: gmsh faces of area {got:g}, expected {areas[l]:g}")
    gmsh.model.addPhysicalGroup(3, [volumes[0][1]], DOMAIN_TAG, name="domain")
    for l, tags in electrode_faces.items():
        gmsh.model.addPhysicalGroup(2, tags, l + 1, name=f"electrode_{l + 1}")
    gmsh.model.addPhysicalGroup(2, other, GAP_TAG, name="insulated")
    edges = sorted({abs(t) for f in electrode_faces.values() for _, t in
                    gmsh.model.getBoundary([(2, t) for t in f], oriented=False, combined=False)})
    grade_towards("CurvesList", edges, options, sampling=max(20, int(4 * max(R, H) / (h / options.refinement))))
    gmsh.option.setNumber("Mesh.Algorithm3D", 10)  # HXT: parallel-capable and fast Delaunay
    gmsh.option.setNumber("General.NumThreads", 1)
    gmsh.model.mesh.generate(3)
    for _ in range(options.uniform_refinements):
        gmsh.model.mesh.refine()


MESH_KINDS = ("extruded", "unstructured")


def create_cylinder_mesh(
    tank: CylinderTank,
    options: MeshOptions | None = None,
    comm: MPI.Comm = MPI.COMM_WORLD,
    msh_file: str | Path | None = None,
    kind: str = "extruded",
) -> TankMesh:
    """Mesh the water of the cylindrical tank with gmsh on rank 0 and distribute it over ``comm``.

    Parameters
    ----------
    tank : CylinderTank
        Geometry.
    options : MeshOptions, optional
        Element size and edge grading; default: the ``default`` 3-D preset.
    comm : MPI.Comm
        Communicator to distribute the mesh over.
    msh_file : path, optional
        Also write the gmsh mesh to this ``.msh`` file (rank 0, atomically).
    kind : {"extruded", "unstructured"}
        ``extruded``: the graded 2-D cross-section extruded in graded layers (anisotropic
        refinement along the electrode edges; the default, far fewer cells for the same error);
        ``unstructured``: OpenCASCADE geometry and isotropically graded Delaunay tetrahedra.
    """
    if kind not in MESH_KINDS:
        raise ValueError(f"unknown 3-D mesh kind {kind!r}: choose one of {', '.join(MESH_KINDS)}")
    options = options or preset_options_3d("default", tank.radius)
    build = _extruded_model if kind == "extruded" else _unstructured_model
    source = f"<generated 3-D {kind} h={options.mesh_size:g}, refinement={options.refinement:g}>"
    return generate_mesh(lambda: build(tank, options), tank, comm, 3, source, msh_file)


def load_mesh_3d(path: str | Path, tank, comm: MPI.Comm = MPI.COMM_WORLD) -> TankMesh:
    """Load a tagged tetrahedral gmsh ``.msh`` of any shape (the CEM needs only the tags).

    Parameters
    ----------
    path : path
        gmsh file: volume cells physical tag 1, electrode ``l`` surface tag ``l``, others 1000.
    tank : CylinderTank or Tank-like
        Provides ``n_electrodes`` and the contact impedances (``impedances``); for a shape
        other than a cylinder, any object with these attributes (e.g. a 2-D ``Tank`` with the
        electrode count and impedances).

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file; an unreadable one, a non-3-D mesh, or missing electrode tags.
    """
    path = Path(path)
    data = read_msh(path, comm, 3, "3-D tetrahedral")
    _check_tags(data.facet_tags, tank, str(path), comm)
    return TankMesh(data.mesh, data.facet_tags, tank, str(path))


def tank_mesh_3d(
    tank: CylinderTank,
    mesh: str | Path | MeshOptions | None = None,
    mesh_size: float | None = None,
    comm: MPI.Comm = MPI.COMM_WORLD,
) -> TankMesh:
    """Resolve a preset name, ``.msh`` file or options into a 3-D :class:`TankMesh` (as ``tank_mesh``)."""
    return resolve_mesh(tank, mesh, mesh_size, comm, MESH_PRESETS_3D, create_cylinder_mesh, load_mesh_3d)
