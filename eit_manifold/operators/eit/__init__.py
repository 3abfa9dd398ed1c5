"""EIT with the complete electrode model: geometry, meshes, CEM solver and the torch operator."""

# The dolfinx wheel's PETSc/MPI libraries must be loaded before dolfinx or petsc4py: importing
# any module of this package runs this line first.
import dolfinx_solver  # noqa: F401

from eit_manifold.operators.eit.autograd import EITOperator, log_conductivity_to_conductivity
from eit_manifold.operators.eit.conductivity_map import conductivity_to_image, image_to_conductivity
from eit_manifold.operators.eit.forward import CEMForwardModel
from eit_manifold.operators.eit.geometry import Tank
from eit_manifold.operators.eit.mesh import MeshOptions, TankMesh, tank_mesh

__all__ = [
    "CEMForwardModel",
    "EITOperator",
    "MeshOptions",
    "Tank",
    "TankMesh",
    "conductivity_to_image",
    "image_to_conductivity",
    "log_conductivity_to_conductivity",
    "tank_mesh",
]
