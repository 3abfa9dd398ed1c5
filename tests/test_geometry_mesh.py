"""Tank validation, mesh generation and loading, tag convention, export."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eit_manifold.operators.eit.cem import p1_discretisation
from eit_manifold.operators.eit.geometry import Tank
from eit_manifold.operators.eit.mesh import MeshOptions, create_tank_mesh, load_tank_mesh, tank_mesh


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_electrodes": 1}, "n_electrodes"),
        ({"electrode_width": 0.0}, "electrode_width"),
        ({"electrode_width": -0.1}, "electrode_width"),
        ({"contact_impedance": 0.0}, "contact_impedance"),
        ({"contact_impedance": [0.01] * 15}, "length 16"),
        ({"electrode_width": 0.5}, "overlap"),
        ({"radius": -1.0}, "radius"),
        ({"radius": float("nan")}, "radius"),
        ({"orientation": 0}, "orientation"),
    ],
)
def test_invalid_tank_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Tank(**kwargs)


def test_electrode_angles_and_round_trip():
    tank = Tank(n_electrodes=8, first_angle=0.3, orientation=-1, contact_impedance=[0.01 * (i + 1) for i in range(8)])
    assert np.allclose(np.diff(tank.electrode_angles), -2 * np.pi / 8)
    assert Tank.from_dict(tank.to_dict()).to_dict() == tank.to_dict()


def test_generated_mesh_tags_electrodes_and_lengths(tiny_mesh):
    tank = tiny_mesh.tank
    disc = p1_discretisation(tiny_mesh)
    for l, edges in enumerate(disc.electrode_edges):
        mid = disc.coordinates[edges].mean(axis=1)
        # every edge tagged l lies on the circle within electrode l's angular interval
        ang = np.angle(np.exp(1j * (np.arctan2(mid[:, 1], mid[:, 0]) - tank.electrode_angles[l])))
        assert np.all(np.abs(ang) <= tank.widths[l] / 2 / tank.radius + 1e-12)
        length = np.linalg.norm(disc.coordinates[edges[:, 0]] - disc.coordinates[edges[:, 1]], axis=1).sum()
        assert length == pytest.approx(tank.widths[l], rel=1e-3)
    assert disc.areas.sum() == pytest.approx(math.pi, rel=2e-3)


def test_mesh_is_graded_towards_electrode_ends():
    tank = Tank()
    m = create_tank_mesh(tank, MeshOptions(0.1, 10.0, 3.0))
    disc = p1_discretisation(m)
    ends = tank.electrode_intervals.ravel()
    end_pts = np.column_stack([np.cos(ends), np.sin(ends)])
    d = np.min(np.linalg.norm(disc.centroids[:, None] - end_pts[None], axis=2), axis=1)
    h = np.sqrt(2 * disc.areas)
    assert h[d < 0.02].mean() < 0.3 * h[d > 0.5].mean()


def test_msh_round_trip_and_bad_files(tmp_path):
    tank = Tank(n_electrodes=8)
    path = tmp_path / "tank.msh"
    generated = create_tank_mesh(tank, MeshOptions(0.2, 5.0, 3.0), msh_file=path)
    loaded = load_tank_mesh(path, tank)
    assert loaded.n_cells == generated.n_cells
    with pytest.raises(FileNotFoundError, match="missing.msh"):
        tank_mesh(tank, tmp_path / "missing.msh")
    corrupt = tmp_path / "corrupt.msh"
    corrupt.write_text("$MeshFormat\nthis is not a mesh\n")
    with pytest.raises(ValueError, match="corrupt.msh"):
        load_tank_mesh(corrupt, tank)
    with pytest.raises(ValueError, match=r"electrodes \[9, 10"):
        load_tank_mesh(path, Tank(n_electrodes=10, electrode_width=0.1))
    with pytest.raises(ValueError, match="tags"):
        load_tank_mesh(path, Tank(n_electrodes=4))


def test_mesh_without_electrode_tags_is_rejected(tmp_path):
    import gmsh

    gmsh.initialize()
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.model.add("plain")
    s = gmsh.model.occ.addDisk(0, 0, 0, 1, 1)
    gmsh.model.occ.synchronize()
    gmsh.model.addPhysicalGroup(2, [s], 1)
    gmsh.option.setNumber("Mesh.MeshSizeMax", 0.3)
    gmsh.model.mesh.generate(2)
    path = tmp_path / "plain.msh"
    gmsh.write(str(path))
    gmsh.finalize()
    with pytest.raises(ValueError, match="electrode"):
        load_tank_mesh(path, Tank())


def test_export_meshio_and_xdmf(tmp_path, tiny_mesh):
    import meshio

    from eit_manifold.operators.eit.export import export_meshio, export_xdmf

    disc = p1_discretisation(tiny_mesh)
    sigma = np.linspace(1, 2, disc.n_cells)
    export_meshio(tmp_path / "m.vtu", disc.coordinates, disc.cells, {"sigma": sigma}, {"x": disc.coordinates[:, 0]})
    back = meshio.read(tmp_path / "m.vtu")
    assert np.allclose(back.cell_data["sigma"][0], sigma)
    export_xdmf(tmp_path / "m.xdmf", tiny_mesh, {"conductivity": sigma})
    text = (tmp_path / "m.xdmf").read_text()
    assert "conductivity" in text and (tmp_path / "m.h5").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5", "m.vtu", "m.xdmf"]  # no temporaries left
