"""``reconstruct`` on a 3-D measurement file (written by ``simulate --dim 3``): Gauss-Newton or TV on voxels.

A file is 3-D when it carries the ``tank3d`` key (the cylinder's JSON description). The
reconstruction mesh is the ``coarse`` 3-D preset unless ``--mesh``/``--mesh-size`` say otherwise,
the unknowns a (D, H, W) voxel grid (:mod:`eit_manifold.baselines.eit3d`). Outputs:
``conductivity.npy`` (the voxel grid, NaN outside), ``conductivity.xdmf`` (per cell),
``metrics.json`` and ``reconstruction.png`` (section at mid-electrode height).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from mpi4py import MPI

from eit_manifold.baselines.eit3d import METHODS_3D, reconstruct_baseline_3d
from eit_manifold.io import save_npy_atomic, write_json
from eit_manifold.metrics import relative_data_misfit, relative_l2
from eit_manifold.operators.eit.data_file import read_measurements
from eit_manifold.operators.eit.forward import CEMForwardModel
from eit_manifold.operators.eit.mesh import tank_mesh
from eit_manifold.operators.eit3d.geometry import CylinderTank


def is_3d_file(path: str | Path) -> bool:
    """True when the measurement file describes a 3-D tank (key ``tank3d``)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return "tank3d" in f.files
    except Exception:  # noqa: BLE001  (unreadable files get their error from read_measurements)
        return False


def reconstruct_3d(config, comm: MPI.Comm = MPI.COMM_WORLD) -> dict:
    """Reconstruct a 3-D file with Gauss-Newton or TV on voxels; writes the outputs to ``config.out``."""
    from eit_manifold.pipelines.simulate import mid_depth_section

    if config.method not in METHODS_3D:
        raise ValueError(f"{config.data}: 3-D data (key 'tank3d') are reconstructed by --method "
                         f"{' or '.join(METHODS_3D)}, not {config.method!r}")
    data = read_measurements(config.data)
    try:
        tank = CylinderTank.from_dict(json.loads(str(data.extras["tank3d"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"measurement file {config.data}: key 'tank3d' is not a valid cylinder: {exc}") from exc
    tank = tank.with_impedance(data.contact_impedance)
    t0 = time.perf_counter()
    mesh = tank_mesh(tank, "coarse" if config.mesh is None and config.mesh_size is None else config.mesh,
                     config.mesh_size, comm)
    model = CEMForwardModel(mesh, data.currents, data.measurement_matrix)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    cells, voxels, details = reconstruct_baseline_3d(model, data.measurements, data.noise_level, config.method,
                                                     iterations=config.iterations, sigma_min=config.sigma_min,
                                                     sigma_max=config.sigma_max)
    elapsed = time.perf_counter() - t0
    predicted = model.measurements(cells)
    metrics = {"relative_data_misfit": float(relative_data_misfit(predicted, data.measurements)),
               "reconstruction_s": elapsed, "setup_s": setup}
    truth_image = data.extras.get("conductivity_image")
    if truth_image is not None and np.ndim(truth_image) == 2:
        # simulate --dim 3 extrudes its 2-D phantoms over the depth: the cross-section is the truth
        filled = np.where(np.isfinite(truth_image), truth_image, np.nanmedian(truth_image))
        truth_cells = model.pixel_map((1, *filled.shape)) @ filled.ravel()
        metrics["relative_l2"] = float(relative_l2(cells, truth_cells))
    section = mid_depth_section(model, cells)
    out = Path(config.out)
    from eit_manifold.operators.eit.export import export_xdmf

    export_xdmf(out / "conductivity.xdmf", mesh, {"conductivity": cells})
    if comm.rank == 0:
        save_npy_atomic(out / "conductivity.npy", voxels)
        write_json(out / "metrics.json", {"config": asdict(config), "metrics": metrics, "details": details,
                                          "mesh_cells": model.n_cells, "dim": 3})
        if config.plot:
            from eit_manifold.eit_plots import plot_reconstruction

            plot_reconstruction(out / "reconstruction.png", section, tank.radius, data.measurements, predicted,
                                truth_image, title=f"3-D {config.method}, section at mid-electrode height")
    return {"image": voxels, "cells": cells, "predicted": predicted, "metrics": metrics, "details": details}
