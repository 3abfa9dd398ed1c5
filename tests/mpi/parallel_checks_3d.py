"""Run under ``mpirun -n N`` (or serially) by tests/test_mpi3d.py; rank 0 writes the results (.npz).

3-D tank, mesh distributed: forward data and VJPs with the direct and the iterative solver, and
a voxel-grid operator. The same script with 1 and 2 processes must give the same numbers.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from mpi4py import MPI

from eit_manifold.io import save_npz_atomic
from eit_manifold.operators.eit import CEMForwardModel, EITOperator, MeshOptions, Tank
from eit_manifold.operators.eit3d import CylinderTank, create_cylinder_mesh


def main(out: str) -> None:
    comm = MPI.COMM_WORLD
    tank = CylinderTank(Tank(n_electrodes=8, electrode_width=0.3), height=1.0, water_level=0.8,
                        electrode_bottom=0.2, electrode_top=0.5)
    mesh = create_cylinder_mesh(tank, MeshOptions(0.2, 5.0, 3.0), comm=comm)
    results: dict[str, np.ndarray] = {}
    for solver in ("direct", "iterative"):
        model = CEMForwardModel(mesh, "adjacent", "adjacent", solver=solver)
        op = EITOperator.from_model(model, image_shape=(3, 5, 5))
        c = torch.from_numpy(model.centroids)
        sigma = (1 + 0.5 * torch.sin(3 * c[:, 0]) * torch.cos(2 * c[:, 1]) + 0.4 * (c[:, 2] > 0.4))[None]
        sigma.requires_grad_()
        y = op(sigma)
        g = torch.from_numpy(np.random.default_rng(0).standard_normal(y.shape))
        (grad,) = torch.autograd.grad((y * g).sum(), sigma)
        vox = torch.full((1, 3, 5, 5), 1.0, dtype=torch.float64)
        vox[0, 1, 1:3, 2:4] = 2.0
        vox.requires_grad_()
        yv = op(vox)
        (gv,) = torch.autograd.grad((yv * g).sum(), vox)
        results.update({f"{solver}_y": y.detach().numpy(), f"{solver}_grad": grad.numpy(),
                        f"{solver}_vox_y": yv.detach().numpy(), f"{solver}_vox_grad": gv.numpy()})
    if comm.rank == 0:
        save_npz_atomic(out, size=comm.size, **results)


if __name__ == "__main__":
    main(sys.argv[1])
