"""EIT in 3-D: cylindrical tanks with rectangular electrodes, tetrahedral meshes, voxel grids.

The complete electrode model itself is dimension-independent and lives in
:mod:`eit_manifold.operators.eit.cem` (P1 on triangles or tetrahedra); ``CEMForwardModel`` and
``EITOperator`` take a 3-D :class:`~eit_manifold.operators.eit.mesh.TankMesh` unchanged.
"""

from eit_manifold.operators.eit3d.geometry import CylinderTank
from eit_manifold.operators.eit3d.mesh import (
    MESH_PRESETS_3D,
    create_cylinder_mesh,
    load_mesh_3d,
    preset_options_3d,
    tank_mesh_3d,
)

__all__ = ["MESH_PRESETS_3D", "CylinderTank", "create_cylinder_mesh", "load_mesh_3d", "preset_options_3d",
           "tank_mesh_3d"]
