"""Reconstruct a conductivity from a measurement file: the ``reconstruct`` job.

Methods: ``atlas`` (Riemannian descent on a learned atlas, the product's method), and the
classic baselines on the same CEM solver, ``gauss-newton`` (iterated Tikhonov) and ``tv``.
The reconstruction mesh defaults to the ``coarse`` preset, which differs from the ``default``
preset that ``simulate`` uses, so synthetic data do not commit the inverse crime.

Objective of the atlas method: ``F(x) = 0.5 ||A(sigma(x)) - d||^2 / ||d||^2`` with
``sigma(x) = sigma_min + (sigma_max - sigma_min) clip(x, 0, 1)`` for atlas images ``x``.
Metrics compare conductivity images inside the tank (pixels whose centre lies in the disk):
relative L2 error, PSNR with data range ``sigma_max - sigma_min`` and SSIM (outside pixels set to
the true background in both images), and the relative data misfit ``||A(sigma) - d|| / ||d||``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

from eit_manifold.io import save_npy_atomic, write_json
from eit_manifold.metrics import psnr, relative_data_misfit, relative_l2, ssim
from eit_manifold.operators.eit import EITOperator, Tank
from eit_manifold.operators.eit.data_file import MeasurementData, read_measurements
from eit_manifold.operators.eit.mesh import tank_mesh
from eit_manifold.operators.eit.pixels import pixel_centres

METHODS = ("atlas", "gauss-newton", "tv")


@dataclass
class ReconstructConfig:
    """Options of the ``reconstruct`` job."""

    data: str
    out: str = "reconstruction"
    method: str = "atlas"
    atlas: str = "balls"
    starts: int = 8
    iterations: int | None = None  # None: 60 for the atlas descent, 10 Gauss-Newton steps for the baselines
    mesh: str | None = None
    mesh_size: float | None = None
    sigma_min: float = 0.2
    sigma_max: float = 1.8
    image_size: int = 64
    seed: int = 0
    plot: bool = True
    progress: bool = False
    warm_start: bool = True  # atlas: one more start per chart at its projection of a Gauss-Newton image

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.iterations is None:
            self.iterations = 60 if self.method == "atlas" else 10
        if self.starts < 1 or self.iterations < 0:
            raise ValueError(f"need starts >= 1 and iterations >= 0, got {self.starts}, {self.iterations}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")


@dataclass
class EITProblem:
    """Measured data and the operator that reconstructs them."""

    data: MeasurementData
    operator: EITOperator
    truth: np.ndarray | None  # conductivity image (H, W) with NaN outside, if the file has one
    inside: np.ndarray  # (H, W) pixels whose centre lies in the tank
    setup_s: float
    warnings: list[str] = field(default_factory=list)

    @property
    def measurements(self) -> torch.Tensor:
        return torch.from_numpy(self.data.measurements)

    def to_image(self, sigma: np.ndarray) -> np.ndarray:
        """Conductivity image with NaN outside the tank."""
        return np.where(self.inside, sigma, np.nan)


def reconstruction_operator(
    data: MeasurementData,
    image_shape: tuple[int, int],
    mesh: str | None = None,
    mesh_size: float | None = None,
    comm: MPI.Comm = MPI.COMM_WORLD,
) -> EITOperator:
    """The EIT operator of the file's tank and patterns on the reconstruction mesh (default: coarse)."""
    tank: Tank = data.tank()
    tm = tank_mesh(tank, "coarse" if mesh is None and mesh_size is None else mesh, mesh_size, comm)
    return EITOperator(tank, mesh=tm, image_shape=image_shape, injection=data.currents,
                       measurement=data.measurement_matrix, comm=comm)


def make_problem(data: MeasurementData, operator: EITOperator, setup_s: float = 0.0) -> EITProblem:
    """Pair measured data with an operator, checking that they fit, and find the truth if any."""
    P, M = operator.data_shape
    if data.measurements.shape != (P, M) or data.n_electrodes != operator.tank.n_electrodes:
        raise ValueError(
            f"the measurement file ({data.n_electrodes} electrodes, data {data.measurements.shape}) does not match "
            f"the operator ({operator.tank.n_electrodes} electrodes, data {(P, M)})"
        )
    if not (np.allclose(data.currents, operator.model.currents)
            and np.allclose(data.measurement_matrix, operator.model.measurement_matrix)):
        raise ValueError("the measurement file's current patterns or measurement matrix differ from the operator's")
    notes = []
    true_cells = data.extras.get("conductivity")
    if true_cells is not None and true_cells.shape == (operator.n_cells,):
        notes.append(
            f"the reconstruction mesh has as many cells ({operator.n_cells}) as the simulation mesh: probably the "
            "same mesh (inverse crime); use another --mesh or --mesh-size"
        )
        warnings.warn(notes[-1], stacklevel=2)
    image_shape = operator.image_shape
    xx, yy = pixel_centres(image_shape, operator.tank.radius)
    inside = xx**2 + yy**2 <= operator.tank.radius**2
    truth = data.extras.get("conductivity_image")
    if truth is not None and truth.shape != tuple(image_shape):
        truth = None  # a truth at another resolution cannot be compared pixel by pixel
    return EITProblem(data, operator, truth, inside, setup_s, notes)


def load_problem(
    data: MeasurementData | str | Path,
    image_shape: tuple[int, int],
    mesh: str | None = None,
    mesh_size: float | None = None,
    comm: MPI.Comm = MPI.COMM_WORLD,
) -> EITProblem:
    """Read a measurement file and build its operator on the reconstruction mesh.

    Raises
    ------
    ValueError
        When the file's tank and patterns do not fit (electrode count of a mesh file, shapes).
    """
    t0 = time.perf_counter()
    if not isinstance(data, MeasurementData):
        data = read_measurements(data)
    operator = reconstruction_operator(data, image_shape, mesh, mesh_size, comm)
    return make_problem(data, operator, time.perf_counter() - t0)


def conductivity_from_image(x: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """sigma = sigma_min + (sigma_max - sigma_min) clip(x, 0, 1), in float64 (atlas images may overshoot)."""
    return sigma_min + (sigma_max - sigma_min) * x.to(torch.float64).clamp(0.0, 1.0)


def misfit_objective(problem: EITProblem, sigma_min: float, sigma_max: float):
    """The atlas objective F(x) = 0.5 ||A(sigma(x)) - d||^2 / ||d||^2 for a batch of images (B,)."""
    d = problem.measurements
    scale = float((d**2).sum())

    def objective(x: torch.Tensor) -> torch.Tensor:
        y = problem.operator(conductivity_from_image(x, sigma_min, sigma_max))
        return 0.5 * ((y - d) ** 2).sum(dim=(1, 2)) / scale

    return objective


def reconstruct_atlas(problem: EITProblem, config: ReconstructConfig) -> tuple[np.ndarray, dict]:
    """Riemannian descent on the atlas; returns the conductivity image and method details."""
    from eit_manifold.manifold import load_atlas
    from eit_manifold.optim import multistart_descent

    atlas = load_atlas(config.atlas)
    if atlas.image_shape is None or tuple(atlas.image_shape) != tuple(problem.operator.image_shape):
        raise ValueError(
            f"atlas {config.atlas!r} makes images of shape {atlas.image_shape}, the reconstruction uses "
            f"{problem.operator.image_shape}: pass --image-size {atlas.image_shape and atlas.image_shape[0]}"
        )
    warm = None
    if config.warm_start:
        # Prior samples of a weak atlas can all be far from the data; the projection of a classic
        # reconstruction onto the atlas is a start that already explains most of the data.
        from eit_manifold.baselines.eit_absolute import reconstruct_baseline

        sigma_gn, _ = reconstruct_baseline(problem, "gauss-newton", config.sigma_min, config.sigma_max, 3)
        warm = torch.as_tensor((sigma_gn - config.sigma_min) / (config.sigma_max - config.sigma_min))[None]
    found = multistart_descent(atlas, misfit_objective(problem, config.sigma_min, config.sigma_max), warm,
                               prior_starts=config.starts, seed=config.seed, max_iter=config.iterations, ftol=1e-5,
                               progress=config.progress)
    result = found.result
    x = result.x.detach().to(torch.float64)
    sigma = conductivity_from_image(x, config.sigma_min, config.sigma_max).numpy()
    history = result.history.objective
    details = {
        "atlas": str(config.atlas),
        "charts": atlas.n_charts,
        "latent_dim": atlas.latent_dim,
        "chart": result.chart,
        "iterations": result.n_iter,
        "objective_start": float(np.nanmin(history[0])),
        "objective_final": result.objective,
        "objective_per_start": result.objective_all.tolist(),
        "warm_start": config.warm_start,
        "best_start_is_warm": found.best_is_warm,
    }
    return sigma, details


def _baseline(problem: EITProblem, config: ReconstructConfig) -> tuple[np.ndarray, dict]:
    from eit_manifold.baselines.eit_absolute import reconstruct_baseline

    return reconstruct_baseline(problem, config.method, config.sigma_min, config.sigma_max, config.iterations)


def compute_metrics(problem: EITProblem, sigma_image: np.ndarray, predicted: np.ndarray, sigma_min: float,
                    sigma_max: float) -> dict:
    """Image metrics against the truth (when known) and the relative data misfit."""
    metrics = {"relative_data_misfit": float(relative_data_misfit(predicted, problem.data.measurements))}
    if problem.truth is not None:
        inside = problem.inside
        truth = problem.truth
        background = float(np.nanmedian(truth))
        a = np.where(inside, sigma_image, background)
        b = np.where(inside, truth, background)
        metrics.update(
            relative_l2=float(relative_l2(sigma_image[inside], truth[inside])),
            psnr=float(psnr(a, b, data_range=sigma_max - sigma_min)),
            ssim=float(ssim(a, b, data_range=sigma_max - sigma_min)),
        )
    return metrics


def reconstruct_problem(problem: EITProblem, config: ReconstructConfig) -> dict:
    """Run one method on a loaded problem; returns image, predicted data, metrics (no files)."""
    t0 = time.perf_counter()
    method = reconstruct_atlas if config.method == "atlas" else _baseline
    sigma, details = method(problem, config)
    elapsed = time.perf_counter() - t0
    sigma = np.asarray(sigma, dtype=float).reshape(problem.operator.image_shape)
    predicted = problem.operator(torch.from_numpy(sigma)[None])[0].numpy()
    metrics = compute_metrics(problem, sigma, predicted, config.sigma_min, config.sigma_max)
    metrics.update(reconstruction_s=elapsed, setup_s=problem.setup_s)
    return {"image": problem.to_image(sigma), "cells": problem.operator.model.pixel_map(sigma.shape) @ sigma.ravel(),
            "predicted": predicted, "metrics": metrics, "details": details}


def write_outputs(out: Path, problem: EITProblem, result: dict, config: ReconstructConfig) -> None:
    """conductivity.npy, conductivity.xdmf, metrics.json and reconstruction.png in ``out``.

    Collective over the operator's communicator (the XDMF export); rank 0 of it writes the rest.
    """
    from eit_manifold.operators.eit.export import export_xdmf

    export_xdmf(out / "conductivity.xdmf", problem.operator.tank_mesh, {"conductivity": result["cells"]})
    if problem.operator.tank_mesh.comm.rank != 0:
        return
    save_npy_atomic(out / "conductivity.npy", result["image"])
    summary = {"config": asdict(config), "metrics": result["metrics"], "details": result["details"],
               "warnings": problem.warnings, "mesh_cells": problem.operator.n_cells}
    write_json(out / "metrics.json", summary)
    if config.plot:
        from eit_manifold.eit_plots import plot_reconstruction

        plot_reconstruction(out / "reconstruction.png", result["image"], problem.data.radius,
                            problem.data.measurements, result["predicted"], problem.truth,
                            title=f"{config.method} reconstruction")


def reconstruct(config: ReconstructConfig, comm: MPI.Comm = MPI.COMM_WORLD) -> dict:
    """The ``reconstruct`` job on one file, the mesh distributed over ``comm`` (SPMD: the torch
    parts run identically on every process); writes conductivity.npy/.xdmf, PNG and metrics.json."""
    torch.manual_seed(config.seed)
    problem = load_problem(config.data, (config.image_size, config.image_size), config.mesh, config.mesh_size, comm)
    result = reconstruct_problem(problem, config)
    write_outputs(Path(config.out), problem, result, config)
    return result


def reconstruct_batch(files: list[str], config: ReconstructConfig, comm: MPI.Comm = MPI.COMM_WORLD) -> list[dict]:
    """Reconstruct many files, split across the processes of ``comm`` (each on ``COMM_SELF``).

    File ``a/b/name.npz`` goes to ``OUT/name/``; each process writes the outputs of its own
    files (distinct directories, atomic writes). Returns every file's metrics on every process.
    """
    from eit_manifold.operators.eit.parallel import spmd_map

    stems = [Path(f).stem for f in files]
    if len(set(stems)) != len(stems):
        raise ValueError(f"batch files must have distinct names (outputs go to OUT/<name>/), got {files}")

    def run(path: str) -> dict:
        cfg = replace(config, data=path, out=str(Path(config.out) / Path(path).stem))
        torch.manual_seed(cfg.seed)
        problem = load_problem(path, (cfg.image_size, cfg.image_size), cfg.mesh, cfg.mesh_size, MPI.COMM_SELF)
        result = reconstruct_problem(problem, cfg)
        write_outputs(Path(cfg.out), problem, result, cfg)
        return {"data": path, "out": cfg.out, "metrics": result["metrics"]}

    return spmd_map(run, files, comm)
