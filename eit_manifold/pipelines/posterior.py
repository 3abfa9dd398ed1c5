"""The ``posterior`` job: posterior sampling on a learned atlas for an EIT or a deblurring measurement.

Posterior ``p(x | d) ∝ exp(-||A(x) - d||^2 / 2 s^2) p_atlas(x)`` sampled by
:class:`~eit_manifold.optim.posterior.AtlasPosterior`.

* ``eit``: a measurement file of ``simulate`` (``--data``); ``A(x)`` is the CEM operator of
  ``sigma(x) = sigma_min + (sigma_max - sigma_min) clip(x, 0, 1)`` on the reconstruction mesh
  (default ``coarse``), ``s_pm = eta rms(d_p)`` with the file's relative noise level ``eta``
  (the Gauss-Newton baseline's noise model), or ``--noise-level``. Statistics are of the
  conductivity, NaN outside the tank. The chart's encoding of a 3-step Gauss-Newton image is one
  more candidate start (as ``reconstruct``'s warm start).
* ``blur``: a deblurring file (keys below) or ``--heldout I`` (the held-out bars image ``I``,
  blurred by the paper's kernel with noise ``--noise-level``, default 0.1, drawn from ``--seed``).

Deblurring file keys: ``data`` (H, W) blurred noisy image, ``noise_std`` (), ``kernel_size`` (),
``kernel_std`` (), ``background`` (), optionally ``truth`` (H, W).

Outputs in ``--out``: ``mean.npy``, ``std.npy``, ``q05.npy``, ``q95.npy``, ``chart_probabilities.npy``,
``samples.npz`` (thinned latents, charts and weights of all kept draws; images of
``save_samples`` draws resampled by weight), ``diagnostics.json`` and ``posterior.png``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from eit_manifold.io import check_output_dir, save_npy_atomic, save_npz_atomic, staged_dir, write_json
from eit_manifold.validation import (
    InputError,
    check_choice,
    check_int,
    check_positive,
    check_seed,
    check_sigma_range,
)

OPERATORS = ("eit", "blur")
INITS = ("descent", "smc")
BLUR_KEYS = ("data", "noise_std", "kernel_size", "kernel_std", "background")


@dataclass
class PosteriorConfig:
    """Options of the ``posterior`` job (see the module docstring)."""

    data: str | None = None
    out: str = "posterior"
    operator: str = "eit"
    atlas: str | None = None  # default: balls (eit), bars (blur)
    samples: int = 300  # post-burn-in draws per chain
    chains: int = 4
    burn_in: int = 250
    thin: int | None = None  # None: automatic
    noise_level: float | None = None
    heldout: int | None = None
    mesh: str | None = None
    mesh_size: float | None = None
    sigma_min: float = 0.2
    sigma_max: float = 1.8
    image_size: int = 64
    warm_start: bool = True
    descent_iter: int = 20
    starts: int = 8
    importance_samples: int = 256
    independence: int = 4
    local_steps: int = 0  # MALA steps per draw after burn-in
    init: str = "descent"  # descent: descent starts + MALA burn-in; smc: tempered SMC from the prior
    particles: int = 64  # SMC particles (init="smc")
    save_samples: int = 200
    seed: int = 0
    plot: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        check_choice("--operator", self.operator, OPERATORS)
        if self.atlas is None:
            self.atlas = "balls" if self.operator == "eit" else "bars"
        if self.operator == "eit" and (self.data is None or self.heldout is not None):
            raise InputError("the eit operator needs --data FILE.npz (and no --heldout)")
        if self.operator == "blur" and (self.data is None) == (self.heldout is None):
            raise InputError("the blur operator needs exactly one of --data FILE.npz and --heldout I")
        # draws per chain: the split R-hat and the ESS need a few per half chain
        self.samples = check_int("--samples", self.samples, 8)
        for name in ("chains", "save_samples", "importance_samples", "starts"):
            setattr(self, name, check_int(f"--{name.replace('_', '-')}", getattr(self, name), 1))
        self.burn_in = check_int("--burn-in", self.burn_in, 0)
        self.descent_iter = check_int("--descent-iter", self.descent_iter, 0)
        self.independence = check_int("--independence", self.independence, 0)
        self.local_steps = check_int("--local-steps", self.local_steps, 0)
        if self.local_steps == 0 and self.independence == 0:
            raise InputError("--local-steps 0 needs --independence >= 1 (the chains would never move); "
                             "MALA only: --independence 0 --local-steps 1")
        check_choice("--init", self.init, INITS)
        self.particles = check_int("--particles", self.particles, 8)
        if self.init == "smc" and self.local_steps:
            raise InputError(f"--init smc runs no MALA adaptation: --local-steps must be 0, got {self.local_steps}")
        if self.thin is not None:
            self.thin = check_int("--thin", self.thin, 1)
        if self.noise_level is not None:
            self.noise_level = check_positive("--noise-level", self.noise_level)
        if self.heldout is not None:
            self.heldout = check_int("--heldout", self.heldout, 0)
        self.sigma_min, self.sigma_max = check_sigma_range(self.sigma_min, self.sigma_max)
        check_seed("--seed", self.seed)


@dataclass
class PosteriorProblem:
    """What the sampler and the outputs need, for either operator."""

    atlas: object
    residual: object
    transform: object  # atlas image -> physical image (torch)
    truth: np.ndarray | None  # physical image, NaN outside the domain
    mask: np.ndarray  # (H, W) True inside the domain
    warm: torch.Tensor | None  # an atlas image: one more candidate start per chart
    extent: float  # images are drawn on [-extent, extent]^2
    unit: str
    info: dict


def read_blur_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read and check a deblurring file; a missing or bad key is a ``ValueError`` naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # zip / format errors
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    for key in BLUR_KEYS:
        if key not in arrays:
            raise ValueError(f"{path}: missing key {key!r} (a deblurring file needs {', '.join(BLUR_KEYS)})")
    data = arrays["data"]
    if data.ndim != 2 or not np.isfinite(data).all():
        raise ValueError(f"{path}: key 'data' must be a finite (H, W) image, got shape {data.shape}")
    for key in BLUR_KEYS[1:]:
        v = arrays[key]
        if v.shape != () or not np.isfinite(v) or (key != "background" and not v > 0):
            shown = v.item() if v.shape == () else f"an array of shape {v.shape}"
            raise ValueError(f"{path}: key {key!r} must be a{'' if key == 'background' else ' positive'} finite "
                             f"scalar, got {shown}")
    if "truth" in arrays and arrays["truth"].shape != data.shape:
        raise ValueError(f"{path}: key 'truth' has shape {arrays['truth'].shape}, data {data.shape}")
    return arrays


def write_blur_file(path: str | Path, truth: np.ndarray, noise_std: float, seed: int) -> None:
    """Blur ``truth`` (bars background) with the paper's kernel, add noise, write a deblurring file."""
    from eit_manifold.data.images import BAR_BACKGROUND
    from eit_manifold.operators.blur import GaussianBlur

    op = GaussianBlur.paper(truth.shape[0], background=BAR_BACKGROUND, noise_std=noise_std)
    y = op.measure(torch.as_tensor(truth, dtype=torch.float64)[None], torch.Generator().manual_seed(seed))[0]
    save_npz_atomic(path, data=y.numpy(), noise_std=np.float64(noise_std), kernel_size=np.int64(op.kernel_size),
                    kernel_std=np.float64(op.std), background=np.float64(op.background), truth=truth)


def blur_problem(config: PosteriorConfig) -> PosteriorProblem:
    """The deblurring posterior of a file or a held-out bars image."""
    from eit_manifold.manifold import load_atlas
    from eit_manifold.operators.blur import GaussianBlur, SeparableBlur
    from eit_manifold.optim.posterior import gaussian_residual

    if config.data is not None:
        arrays = read_blur_file(config.data)
        noise = float(arrays["noise_std"]) if config.noise_level is None else config.noise_level
        y = arrays["data"]
        op = GaussianBlur(int(arrays["kernel_size"]), float(arrays["kernel_std"]), float(arrays["background"]))
        truth = arrays.get("truth")
        source = str(config.data)
    else:
        from eit_manifold.data.images import BAR_BACKGROUND, heldout_image

        truth, _ = heldout_image("bars", int(config.heldout), config.image_size)
        noise = 0.1 if config.noise_level is None else config.noise_level
        op = GaussianBlur.paper(config.image_size, background=BAR_BACKGROUND, noise_std=noise)
        y = op.measure(torch.as_tensor(truth, dtype=torch.float64)[None],
                       torch.Generator().manual_seed(config.seed))[0].numpy()
        source = f"held-out bars image {config.heldout}"
    atlas = load_atlas(config.atlas, y.shape)
    residual = gaussian_residual(SeparableBlur(op, y.shape), torch.as_tensor(y), noise)
    return PosteriorProblem(atlas, residual, None, truth, np.ones(y.shape, dtype=bool), None, 1.0, "image value",
                            {"operator": "blur", "source": source, "noise_std": noise,
                             "kernel_size": op.kernel_size, "kernel_std": op.std, "data": y})


def eit_problem(config: PosteriorConfig, comm) -> PosteriorProblem:
    """The EIT posterior of a measurement file on the reconstruction mesh (on ``comm``)."""
    from eit_manifold.manifold import load_atlas
    from eit_manifold.pipelines.reconstruct import load_problem

    shape = (config.image_size, config.image_size)
    atlas = load_atlas(config.atlas, shape)  # before the mesh and the factorisation are built
    problem = load_problem(config.data, shape, config.mesh, config.mesh_size, comm)
    return eit_posterior_problem(problem, atlas, config.sigma_min, config.sigma_max, config.noise_level,
                                 config.warm_start, str(config.data))


def eit_posterior_problem(problem, atlas, sigma_min: float, sigma_max: float, noise_level: float | None = None,
                          warm_start: bool = True, source: str = "") -> PosteriorProblem:
    """The posterior of an :class:`~eit_manifold.pipelines.reconstruct.EITProblem` on ``atlas``.

    Parameters
    ----------
    problem : EITProblem
        Data and operator (from a file, or simulated in memory as the calibration study does).
    atlas : Atlas
        The prior; images map to conductivities in ``[sigma_min, sigma_max]`` (clipped).
    noise_level : float, optional
        The relative noise level of the likelihood; default: the data's.
    warm_start : bool
        Add the projected Gauss-Newton image as one more candidate start per chart.
    source : str
        Where the data came from (recorded in the diagnostics).
    """
    from eit_manifold.operators.eit.conductivity_map import image_to_conductivity
    from eit_manifold.pipelines.reconstruct import whitened_residual

    eta = problem.data.noise_level if noise_level is None else noise_level
    lo, hi = sigma_min, sigma_max
    residual = whitened_residual(problem, lo, hi, eta)
    if residual is None:
        raise ValueError(f"{source}: noise_level is {eta}; pass --noise-level (the posterior needs a noise model)")
    warm = None
    if warm_start:
        from eit_manifold.baselines.eit_absolute import gauss_newton_warm_start

        warm = torch.as_tensor(gauss_newton_warm_start(problem, lo, hi), dtype=torch.float32)
    return PosteriorProblem(atlas, residual,
                            lambda x: image_to_conductivity(x, lo, hi, clip=True), problem.truth, problem.inside, warm,
                            float(problem.data.radius), "conductivity",
                            {"operator": "eit", "source": source, "noise_level": eta,
                             "mesh_cells": problem.operator.n_cells, "eit_problem": problem})


def systematic_resample(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices drawn by systematic resampling of normalised ``weights``."""
    cdf = np.cumsum(weights / weights.sum())
    u = (rng.random() + np.arange(n)) / n
    return np.minimum(np.searchsorted(cdf, u), len(weights) - 1)


def run_posterior(config: PosteriorConfig, comm=None) -> dict:
    """Run the ``posterior`` job and write its outputs (rank 0 writes); returns the diagnostics.

    Under MPI with more than one process, every process holds its own copy of the operator (EIT:
    the mesh on ``COMM_SELF``) and runs the chains ``i`` with ``i % size == rank``.
    """
    from mpi4py import MPI

    from eit_manifold.optim.posterior import AtlasPosterior, weighted_summary
    from eit_manifold.seeding import seed_everything

    comm = MPI.COMM_WORLD if comm is None else comm
    parallel = comm.size > 1
    check_output_dir(config.out, "--out")  # before any work: --out must be a directory or missing
    seed_everything(config.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    prob = (eit_problem(config, MPI.COMM_SELF if parallel else comm) if config.operator == "eit"
            else blur_problem(config))
    setup_s = time.perf_counter() - t0
    sampler = AtlasPosterior(prob.atlas, prob.residual, chains=config.chains, draws=config.samples,
                             burn_in=config.burn_in, thin=config.thin or "auto", descent_iter=config.descent_iter,
                             starts=config.starts,
                             importance_samples=config.importance_samples, independence=config.independence,
                             local_steps=config.local_steps, init=config.init, particles=config.particles)
    bar = None
    if config.progress and comm.rank == 0:
        from tqdm.auto import tqdm

        steps = (0 if config.init == "smc" else config.burn_in) + config.samples
        bar = tqdm(total=prob.atlas.n_charts * steps, desc="posterior", leave=False)

    last_ess: dict[str, str] = {}

    def progress(done: int, total: int, label: str, info: dict) -> None:
        if bar is not None:
            bar.n = done
            if "ess" in info:
                last_ess[label] = f"{info['ess']:.0f}"
            bar.set_postfix({"chart": label, "ess": last_ess.get(label, "-")}, refresh=False)
            bar.refresh()

    result = sampler.run(seed=config.seed, warm=prob.warm, comm=comm if parallel else None, progress=progress)
    if bar is not None:
        bar.close()
    images, charts, weights = result.decode(prob.atlas, prob.transform)
    stats = weighted_summary(images, weights)
    nan_out = {k: np.where(prob.mask, v, np.nan) for k, v in stats.items()}
    diag = result.diagnostics()
    cpu = comm.allgather(time.process_time() - c0) if parallel else [time.process_time() - c0]
    diag.update(config=asdict(config), setup_s=setup_s, processes=comm.size, cpu_seconds_per_process=cpu,
                wall_seconds=time.perf_counter() - t0,
                problem={k: v for k, v in prob.info.items() if k not in ("data", "eit_problem")})
    if prob.truth is not None:
        from eit_manifold.metrics import interval_coverage, relative_l2

        inside = prob.mask & np.isfinite(prob.truth)
        diag["truth"] = {
            "coverage_90": interval_coverage(prob.truth[inside], nan_out["q05"][inside], nan_out["q95"][inside]),
            "relative_l2_of_mean": float(relative_l2(nan_out["mean"][inside], prob.truth[inside])),
        }
    if comm.rank == 0:
        # All files are published together when every one is written (nothing partial on failure).
        with staged_dir(config.out) as out:
            _write_outputs(out, config, prob, result, nan_out, diag, weights, images, charts)
    return diag


def _write_outputs(out: Path, config: PosteriorConfig, prob: PosteriorProblem, result, nan_out: dict,
                   diag: dict, weights: np.ndarray, images: np.ndarray, charts: np.ndarray) -> None:
    """Write the ``posterior`` outputs into the (staging) directory ``out``."""
    for name, arr in nan_out.items():
        save_npy_atomic(out / f"{name}.npy", arr)
    save_npy_atomic(out / "chart_probabilities.npy", result.probabilities)
    w_all, k_all, wt_all = result.kept_draws()
    pick = systematic_resample(weights, min(config.save_samples, len(weights)),
                               np.random.default_rng(config.seed))
    save_npz_atomic(out / "samples.npz", latents=w_all, charts=k_all, weights=wt_all,
                    images=np.where(prob.mask, images[pick], np.nan).astype(np.float32),
                    image_charts=charts[pick])
    write_json(out / "diagnostics.json", diag)
    if config.plot:
        from eit_manifold.plotting import plot_posterior

        plot_posterior(out / "posterior.png", nan_out, np.where(prob.mask, images[pick[:4]], np.nan),
                       prob.truth, prob.extent, prob.unit,
                       title=f"{config.operator} posterior on atlas {config.atlas}: chart probabilities "
                             + ", ".join(f"{p:.2f}" for p in result.probabilities))
