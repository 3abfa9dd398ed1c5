"""Reconstruct a conductivity from a measurement file: the ``reconstruct`` job.

Methods: ``atlas`` (Riemannian descent on a learned atlas, the product's method), ``atlas-mean``
(the posterior mean on the same atlas, sampled by :class:`~eit_manifold.optim.posterior.AtlasPosterior`:
the estimate of least expected squared error under the atlas prior and the file's noise model), the
classic baselines on the same CEM solver, ``gauss-newton`` (iterated Tikhonov) and ``tv``, and
``constant``, the trivial estimate every method must beat: the best homogeneous conductivity
(least-squares fit of one conductivity to the data).
The reconstruction mesh defaults to the ``coarse`` preset, which differs from the ``default``
preset that ``simulate`` uses, so synthetic data do not commit the inverse crime.

Objective of the atlas method: ``F(x) = 0.5 ||A(sigma(x)) - d||^2 / ||d||^2`` with
``sigma(x) = sigma_min + (sigma_max - sigma_min) clip(x, 0, 1)`` for atlas images ``x``.
Metrics compare conductivity images inside the tank (pixels whose centre lies in the disk):
relative L2 error, PSNR with data range ``sigma_max - sigma_min`` and SSIM (outside pixels set to
the true background in both images), and the relative data misfit ``||A(sigma) - d|| / ||d||``.

The atlas descent runs 8 prior starts plus the Gauss-Newton warm start on every chart as one
batch, stops by the window rule and halves the surviving starts after iterations
:data:`PRUNE_AT` (successive halving: about half the start-iterations of running every start to
the end; the schedule was checked on validation phantoms 100.., ``scripts/validate_start_pruning.py``,
docs/riemannian.md). Of the starts' end points the one of highest posterior density wins
(``--select posterior``, :func:`~eit_manifold.optim.multistart.posterior_score`: the whitened
misfit under the file's noise level minus the atlas' latent log-prior), not merely the lowest
misfit: at 1 % noise several end points fit the data to the noise level, and the prior prefers
the likelier image (chosen on validation phantoms 100-119, docs/riemannian.md). A file without a
noise level falls back to the lowest misfit (``--select objective``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

from eit_manifold.io import check_output_dir, save_npy_atomic, staged_dir, write_json
from eit_manifold.metrics import psnr, relative_data_misfit, relative_l2, ssim
from eit_manifold.operators.eit import EITOperator, Tank, image_to_conductivity
from eit_manifold.operators.eit.data_file import MeasurementData, read_measurements
from eit_manifold.operators.eit.mesh import check_mesh_option, tank_mesh
from eit_manifold.operators.eit.pixels import pixel_centres
from eit_manifold.operators.noise import RelativeNoise
from eit_manifold.validation import (
    InputError,
    check_choice,
    check_contact_impedance,
    check_int,
    check_seed,
    check_sigma_range,
    collective_check,
)

RECONSTRUCT_METHODS = ("atlas", "atlas-mean", "gauss-newton", "tv", "constant")
#: Methods that search a learned atlas (they need ``--atlas`` and its image size).
ATLAS_METHODS = ("atlas", "atlas-mean")
#: Sampler settings of ``atlas-mean`` (chains per chart, burn-in, draws per chain): a mean needs far
#: fewer effective draws than the quantiles of the ``posterior`` job (fixed, then checked once on validation
#: phantoms 100-119, docs/riemannian.md).
MEAN_CHAINS, MEAN_BURN_IN, MEAN_DRAWS = 4, 100, 100
#: How the atlas descent picks among its starts' end points (``--select``).
SELECTIONS = ("posterior", "objective")
MAX_STARTS = 1000
MAX_ITERATIONS = 100_000
MAX_IMAGE_SIZE = 512
#: Iterations after which the atlas descent halves its surviving starts (``--no-prune``: off).
PRUNE_AT = (10, 20)


@dataclass
class ReconstructConfig:
    """Options of the ``reconstruct`` job."""

    data: str
    out: str = "reconstruction"
    method: str = "atlas"
    atlas: str = "balls"
    starts: int = 8
    iterations: int | None = None  # None: 60 for the atlas descent (atlas-mean: 20 per start), 10 GN steps
    mesh: str | None = None
    mesh_size: float | None = None
    sigma_min: float = 0.2
    sigma_max: float = 1.8
    image_size: int = 64
    seed: int = 0
    plot: bool = True
    progress: bool = False
    warm_start: bool = True  # atlas: one more start per chart at its projection of a Gauss-Newton image
    prune: bool = True  # atlas: halve the surviving starts after iterations PRUNE_AT
    select: str = "posterior"  # atlas: end point of highest posterior density, or of lowest objective

    def __post_init__(self) -> None:
        """Check every option (cheap; the files are read by :func:`check_inputs`)."""
        check_choice("--method", self.method, RECONSTRUCT_METHODS)
        check_choice("--select", self.select, SELECTIONS)
        if self.iterations is None:
            self.iterations = {"atlas": 60, "atlas-mean": 20}.get(self.method, 10)
        check_int("--starts", self.starts, 1, MAX_STARTS)
        check_int("--iterations", self.iterations, 0, MAX_ITERATIONS)
        check_sigma_range(self.sigma_min, self.sigma_max)
        check_int("--image-size", self.image_size, 8, MAX_IMAGE_SIZE)
        check_seed("--seed", self.seed)
        check_mesh_option(self.mesh, self.mesh_size)


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


def heldout_problems(indices, phantom: str = "balls", noise: float = 0.01, image_size: int = 64):
    """Validation problems on held-out phantoms, one process each (for the validation scripts).

    Phantom ``i`` of ``phantom`` simulated on the ``default`` mesh with relative noise ``noise``
    (noise stream ``[0, i, 10_000]``), paired with its ``coarse`` reconstruction operator, as in
    the demo and the report. Yields ``(i, EITProblem)``.
    """
    from eit_manifold.pipelines.simulate import SimulateConfig, simulate_data, simulation_model

    sim = SimulateConfig(mesh="default")
    model = simulation_model(sim, MPI.COMM_SELF)
    for i in indices:
        data = simulate_data(replace(sim, phantom=phantom, seed=int(i), noise=noise), model,
                             np.random.default_rng([0, int(i), 10_000]))
        operator = reconstruction_operator(data, (image_size, image_size), "coarse", comm=MPI.COMM_SELF)
        yield int(i), make_problem(data, operator)


def conductivity_forward(problem: EITProblem, sigma_min: float, sigma_max: float):
    """``x -> A(sigma(x))`` for a batch of atlas images, ``sigma`` the clipped image->conductivity map."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return problem.operator(image_to_conductivity(x, sigma_min, sigma_max, clip=True))

    return forward


def misfit_objective(problem: EITProblem, sigma_min: float, sigma_max: float):
    """The atlas objective F(x) = 0.5 ||A(sigma(x)) - d||^2 / ||d||^2 for a batch of images (B,)."""
    d = problem.measurements
    scale = float((d**2).sum())
    forward = conductivity_forward(problem, sigma_min, sigma_max)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((forward(x) - d) ** 2).sum(dim=(1, 2)) / scale

    return objective


def whitened_residual(problem: EITProblem, sigma_min: float, sigma_max: float, noise_level: float | None = None):
    """``r(x) = (A(sigma(x)) - d) / s`` per image ``(B, m)``, ``s`` relative noise of ``noise_level``.

    ``noise_level`` defaults to the file's; ``s`` is
    :class:`~eit_manifold.operators.noise.RelativeNoise` of it (shared by ``reconstruct`` and the
    posterior job). Returns ``None`` when it gives no positive standard deviation (a level of 0 or
    NaN, "unknown"): the likelihood is then unknown.
    """
    from eit_manifold.optim.posterior import gaussian_residual

    eta = float(problem.data.noise_level if noise_level is None else noise_level)
    if not eta > 0:  # 0 or NaN ("unknown")
        return None
    std = torch.as_tensor(np.array(RelativeNoise(eta).std(problem.data.measurements)), dtype=torch.float64)
    if not bool((std > 0).all()):
        return None
    return gaussian_residual(conductivity_forward(problem, sigma_min, sigma_max), problem.measurements, std)


def neg_log_likelihood(problem: EITProblem, sigma_min: float, sigma_max: float):
    """``0.5 ||(A(sigma(x)) - d) / s||^2`` per image ``(B,)`` (:func:`whitened_residual`), or ``None``."""
    residual = whitened_residual(problem, sigma_min, sigma_max)
    if residual is None:
        return None

    def nll(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (residual(x) ** 2).sum(dim=1)

    return nll


# how a user fixes an atlas of another image size (load_atlas fills in the atlas' side)
_IMAGE_SIZE_HINT = ": pass --image-size {size}"


def _problem_atlas(problem: EITProblem, config: ReconstructConfig):
    """The atlas of ``config``, checked against the reconstruction's image shape."""
    from eit_manifold.manifold import load_atlas

    return load_atlas(config.atlas, problem.operator.image_shape, _IMAGE_SIZE_HINT)


def _warm_start(problem: EITProblem, config: ReconstructConfig) -> torch.Tensor | None:
    """The Gauss-Newton warm start ``(1, H, W)`` as an atlas image, or ``None`` (``--no-warm-start``)."""
    if not config.warm_start:
        return None
    from eit_manifold.baselines.eit_absolute import gauss_newton_warm_start

    return torch.as_tensor(gauss_newton_warm_start(problem, config.sigma_min, config.sigma_max))[None]


def reconstruct_atlas(problem: EITProblem, config: ReconstructConfig) -> tuple[np.ndarray, dict]:
    """Riemannian descent on the atlas; returns the conductivity image and method details."""
    from eit_manifold.optim import multistart_descent, posterior_score

    atlas = _problem_atlas(problem, config)
    warm = _warm_start(problem, config)
    nll = neg_log_likelihood(problem, config.sigma_min, config.sigma_max) if config.select == "posterior" else None
    selection = "objective" if nll is None else "posterior"
    found = multistart_descent(atlas, misfit_objective(problem, config.sigma_min, config.sigma_max), warm,
                               prior_starts=config.starts, seed=config.seed, max_iter=config.iterations, ftol=1e-5,
                               prune_at=PRUNE_AT if config.prune else (), progress=config.progress,
                               select=None if nll is None else posterior_score(atlas, nll))
    result, descent = found.result, found.descent
    x = result.x.detach().to(torch.float64)
    sigma = image_to_conductivity(x, config.sigma_min, config.sigma_max, clip=True).numpy()
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
        "selection": selection,
        "best_start": result.best_start,
        "stopping": {"reason": result.stop_reason, "window": descent.stop_window, "rtol": descent.stop_rtol,
                     "max_iter": descent.max_iter, "best_objective": result.best_objective.tolist()},
        "pruning": {"prune_at": list(descent.prune_at), "pruned_after": result.pruned.tolist()},
    }
    return sigma, details


def reconstruct_atlas_mean(problem: EITProblem, config: ReconstructConfig, chain_comm: MPI.Comm | None = None
                           ) -> tuple[np.ndarray, dict]:
    """Posterior mean of the conductivity on the atlas; returns the image and method details.

    ``E[sigma(x) | d]`` under ``p(x | d) ∝ exp(-||(A(sigma(x)) - d) / s||^2 / 2) p_atlas(x)`` (``s`` from
    the file's noise level), estimated by :class:`~eit_manifold.optim.posterior.AtlasPosterior` with
    :data:`MEAN_CHAINS` chains per chart, :data:`MEAN_BURN_IN` burn-in steps and :data:`MEAN_DRAWS`
    draws per chain, started from ``config.starts`` prior samples and the Gauss-Newton warm start
    moved by ``config.iterations`` descent steps. Why a mean: at 1 % noise many images of the atlas
    fit the data to the noise level, and the descent returns one of them; the mean over them is the
    estimate of least expected squared error under the model (the L2 error the report scores).

    ``chain_comm``: spread the chains over its processes, each holding the whole ``problem`` (on
    ``COMM_SELF``); chain ``i`` runs on rank ``i % size`` with its own generator, so the result is
    the serial one, in about ``1/size`` of its time.
    """
    from eit_manifold.optim.posterior import AtlasPosterior, weighted_summary

    atlas = _problem_atlas(problem, config)
    residual = whitened_residual(problem, config.sigma_min, config.sigma_max)
    if residual is None:
        raise ValueError(f"noise level {problem.data.noise_level!r}: atlas-mean needs a positive noise level")
    warm = _warm_start(problem, config)
    sampler = AtlasPosterior(atlas, residual, chains=MEAN_CHAINS, burn_in=MEAN_BURN_IN, draws=MEAN_DRAWS,
                             starts=config.starts, descent_iter=config.iterations)
    result = sampler.run(seed=config.seed, warm=None if warm is None else warm[0].float(), comm=chain_comm)
    lo, hi = config.sigma_min, config.sigma_max
    images, _charts, weights = result.decode(atlas, lambda x: image_to_conductivity(x, lo, hi, clip=True))
    stats = weighted_summary(images, weights)
    diag = result.diagnostics()
    details = {
        "atlas": str(config.atlas),
        "charts": atlas.n_charts,
        "latent_dim": atlas.latent_dim,
        "chart_probabilities": diag["chart_probabilities"],
        "sampler": {"chains": MEAN_CHAINS, "burn_in": MEAN_BURN_IN, "draws": MEAN_DRAWS,
                    "starts": config.starts, "descent_iter": config.iterations},
        "processes": 1 if chain_comm is None else chain_comm.size,
        "ess_min": [c["ess_min"] for c in diag["charts"]],
        "rhat_max": [c["rhat_max"] for c in diag["charts"]],
        "posterior_std_mean": float(np.mean(stats["std"])),
        "warnings": diag["warnings"],
    }
    return stats["mean"], details


def _baseline(problem: EITProblem, config: ReconstructConfig) -> tuple[np.ndarray, dict]:
    from eit_manifold.baselines.eit_absolute import homogeneous_fit, reconstruct_baseline

    if config.method == "constant":
        sigma0 = homogeneous_fit(problem.operator.model, problem.data.measurements)
        return np.full(problem.operator.image_shape, sigma0), {"sigma0": sigma0}

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


def reconstruct_problem(problem: EITProblem, config: ReconstructConfig, chain_comm: MPI.Comm | None = None) -> dict:
    """Run one method on a loaded problem; returns image, predicted data, metrics (no files).

    ``chain_comm``: processes that share the chains of ``atlas-mean`` (see
    :func:`reconstruct_atlas_mean`); the other methods ignore it.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    if config.method == "atlas-mean":
        sigma, details = reconstruct_atlas_mean(problem, config, chain_comm)
    else:
        sigma, details = {"atlas": reconstruct_atlas}.get(config.method, _baseline)(problem, config)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    sigma = np.asarray(sigma, dtype=float).reshape(problem.operator.image_shape)
    predicted = problem.operator(torch.from_numpy(sigma)[None])[0].numpy()
    metrics = compute_metrics(problem, sigma, predicted, config.sigma_min, config.sigma_max)
    # CPU time next to wall time: on a shared machine the wall time also measures the other jobs
    metrics.update(reconstruction_s=elapsed, reconstruction_cpu_s=cpu, setup_s=problem.setup_s)
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


def check_inputs(files: list[str], config: ReconstructConfig, batch: bool = False) -> list[MeasurementData]:
    """Every check of a ``reconstruct`` run before any work: each measurement file (all of them, for a
    batch), its contact impedances against ``--sigma-min``, the mesh size against its radius, the
    atlas and its image size, the output directory. Returns the files' data."""
    if not files:
        raise InputError("no --data file given")
    stems = [Path(f).stem for f in files]
    if len(set(stems)) != len(stems):
        raise InputError(f"batch files must have distinct names (outputs go to OUT/<name>/), got {files}")
    datas = []
    for f in files:
        data = read_measurements(f)
        data.tank()  # equally spaced electrodes (the only kind the mesh generator makes)
        check_contact_impedance(data.contact_impedance, data.electrode_width, config.sigma_min,
                                f"measurement file {f}: key 'contact_impedance'")
        check_mesh_option(config.mesh, config.mesh_size, data.radius)
        datas.append(data)
    if config.method == "atlas-mean":
        for f, data in zip(files, datas, strict=True):
            if not float(data.noise_level) > 0:
                raise InputError(f"measurement file {f}: key 'noise_level' is {data.noise_level!r}; "
                                 "--method atlas-mean needs the noise level (the likelihood of the posterior)")
    if config.method in ATLAS_METHODS:
        from eit_manifold.manifold import load_atlas

        try:
            load_atlas(config.atlas, (config.image_size, config.image_size), _IMAGE_SIZE_HINT)
        except ValueError as err:
            raise InputError(str(err)) from None
    out = check_output_dir(config.out, "--out")
    if batch:
        for stem in stems:
            check_output_dir(out / stem, "batch output directory")
    return datas


def reconstruct(config: ReconstructConfig, comm: MPI.Comm = MPI.COMM_WORLD, record: ReconstructConfig | None = None
                ) -> dict:
    """The ``reconstruct`` job on one file, the mesh distributed over ``comm`` (SPMD: the torch
    parts run identically on every process); writes conductivity.npy/.xdmf, PNG and metrics.json
    into ``config.out``, all together at the end (nothing when it fails). Every input is checked
    first (:func:`check_inputs`). ``record``: the config written to metrics.json (default ``config``).

    A 3-D file (``simulate --dim 3``) goes to :func:`~eit_manifold.pipelines.reconstruct3d.reconstruct_3d`.

    ``atlas-mean`` on 2 to :data:`MEAN_CHAINS` processes is the exception to the distributed mesh:
    every process holds the whole (2-D, coarse) mesh and runs its share of the chains, because
    the sampler's thousands of small solves gain nothing from a mesh split in two (measured: a
    1 % phantom took 6.0 min on 2 processes with the mesh distributed, against 1.8 min serial)
    and split perfectly over chains. The result is the serial one; rank 0 writes it.
    """
    from eit_manifold.pipelines.reconstruct3d import is_3d_file, reconstruct_3d

    if is_3d_file(config.data):
        return reconstruct_3d(config, comm)
    with collective_check(comm):
        (data,) = check_inputs([config.data], config)
    torch.manual_seed(config.seed)
    spread = config.method == "atlas-mean" and 1 < comm.size <= MEAN_CHAINS
    problem = load_problem(data, (config.image_size, config.image_size), config.mesh, config.mesh_size,
                           MPI.COMM_SELF if spread else comm)
    result = reconstruct_problem(problem, config, chain_comm=comm if spread else None)
    with staged_dir(config.out, comm) as stage:
        if not spread or comm.rank == 0:  # with the chains spread every process holds the same result
            write_outputs(stage, problem, result, record or config)
    return result


def reconstruct_batch(files: list[str], config: ReconstructConfig, comm: MPI.Comm = MPI.COMM_WORLD) -> list[dict]:
    """Reconstruct many files, split across the processes of ``comm`` (each on ``COMM_SELF``).

    File ``a/b/name.npz`` goes to ``OUT/name/``; every file is checked before any is reconstructed,
    each process writes the outputs of its own files into one staged directory that is published
    when all files succeeded (a failed batch leaves nothing). Returns every file's metrics on every
    process.
    """
    from eit_manifold.operators.eit.parallel import spmd_map

    with collective_check(comm):
        datas = dict(zip(files, check_inputs(files, config, batch=True), strict=True))

    with staged_dir(config.out, comm) as stage:
        def run(path: str) -> dict:
            cfg = replace(config, data=path, out=str(Path(config.out) / Path(path).stem))
            torch.manual_seed(cfg.seed)
            problem = load_problem(datas[path], (cfg.image_size, cfg.image_size), cfg.mesh, cfg.mesh_size,
                                   MPI.COMM_SELF)
            result = reconstruct_problem(problem, cfg)
            write_outputs(stage / Path(path).stem, problem, result, cfg)
            return {"data": path, "out": cfg.out, "metrics": result["metrics"]}

        return spmd_map(run, files, comm)
