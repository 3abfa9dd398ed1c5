"""Run under ``mpirun -n N`` (or serially) by tests/test_mpi.py; rank 0 writes the results (.npz).

The same script run with 1 and 2 processes must give the same numbers.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from mpi4py import MPI

from eit_manifold.io import save_npz_atomic
from eit_manifold.operators.eit import EITOperator, MeshOptions, Tank
from eit_manifold.operators.eit.parallel import RemoteError, share, spmd_map


def main(out: str) -> None:
    comm = MPI.COMM_WORLD
    tank = Tank()
    options = MeshOptions(0.1, 10.0, 3.0)
    results: dict[str, np.ndarray] = {}

    # (a) the mesh distributed over all processes
    op = EITOperator(tank, mesh=options, image_shape=(16, 16), comm=comm)
    c = torch.from_numpy(op.model.centroids)
    sigma = (1 + 0.5 * torch.sin(3 * c[:, 0]) * torch.cos(2 * c[:, 1]))[None].requires_grad_()
    y = op(sigma)
    g = torch.from_numpy(np.random.default_rng(0).standard_normal(y.shape))
    (grad,) = torch.autograd.grad((y * g).sum(), sigma)
    img = torch.full((1, 16, 16), 1.2, dtype=torch.float64)
    img[0, 4:8, 5:9] = 2.0
    results.update(dist_y=y.detach().numpy(), dist_grad=grad.numpy(), dist_img_y=op(img).numpy())
    # Many factorisations on a distributed mesh (a descent makes hundreds): each must free what it
    # holds. MPICH has 2048 communicator context ids and MUMPS duplicates 13 per factorisation, so
    # a factor left to petsc4py's deferred garbage collection fails here before the 160th solve
    # (170 solves take about a second on an idle machine).
    small = EITOperator(tank, mesh=MeshOptions(0.3, 10.0, 3.0), image_shape=(8, 8), comm=comm)
    ones = np.ones(small.model.n_cells)
    for _ in range(170):
        many = small.model.measurements(ones)
    results.update(many_solves=many)

    # (b) a batch split across processes, each with the whole mesh on COMM_SELF
    batch_op = EITOperator(tank, mesh=options, image_shape=(16, 16), comm=MPI.COMM_SELF, batch_comm=comm)
    batch = (1 + torch.rand(5, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    batch.requires_grad_()
    yb = batch_op(batch)
    (gb,) = torch.autograd.grad(yb.pow(2).sum(), batch)
    results.update(batch_y=yb.detach().numpy(), batch_grad=gb.numpy())
    owners = spmd_map(lambda i: (i, comm.rank), list(range(11)), comm)
    shares = comm.allgather(list(share(11, comm)))
    results["batch_items"] = np.array([i for s in shares for i in s])
    results["owners"] = np.array(owners)

    # (c) a short reconstruction, SPMD on the distributed mesh
    from eit_manifold.operators.eit.data_file import MeasurementData
    from eit_manifold.pipelines.reconstruct import ReconstructConfig, make_problem, reconstruct_problem

    truth = torch.full((1, 16, 16), 1.0, dtype=torch.float64)
    truth[0, 3:7, 8:12] = 1.6
    clean = op(truth)[0].numpy()
    data = MeasurementData(
        currents=op.model.currents, electrode_potentials=np.zeros_like(op.model.currents), measurements=clean,
        measurement_matrix=op.model.measurement_matrix, electrode_angles=tank.electrode_angles,
        electrode_width=tank.widths.copy(), contact_impedance=tank.impedances.copy(), radius=1.0, noise_level=0.001,
    )
    rec = reconstruct_problem(make_problem(data, op), ReconstructConfig(data="-", method="gauss-newton", iterations=2,
                                                                         image_size=16))
    results["recon_image"] = np.nan_to_num(rec["image"])

    # an error on one process reaches every process
    def fail_on_item_3(i: int) -> int:
        if i == 3:
            raise ValueError("item 3 is bad")
        return i

    def bug_on_item_3(i: int) -> int:
        if i == 3:
            raise RuntimeError("item 3 hit a bug")
        return i

    for key, fn in (("errors", fail_on_item_3), ("bug_errors", bug_on_item_3)):
        try:
            spmd_map(fn, list(range(6)), comm)
            raised = "nothing"
        except RemoteError as exc:
            raised = f"RemoteError: {exc}"
        except (ValueError, RuntimeError) as exc:
            raised = f"{type(exc).__name__}: {exc}" + (" (collective)" if getattr(exc, "collective", False) else "")
        results[key] = np.array(comm.gather(raised, root=0) if comm.size > 1 else [raised], dtype=object).astype(str)
    if comm.rank == 0:
        save_npz_atomic(out, size=comm.size, **results)


if __name__ == "__main__":
    main(sys.argv[1])
