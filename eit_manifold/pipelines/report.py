"""The validation report: the paper's EIT experiment. Held-out phantoms of the paper's ``balls``
family (and out-of-family ones) simulated on the fine ``default`` mesh, reconstructed on the
``coarse`` mesh by every method, summarised as tables with every per-image value in the JSON.

Phantom ``i`` is the held-out balls image of index ``seed + i`` (never in a training set); the
noise of phantom ``i`` at level ``eta`` is drawn from ``default_rng([seed, i, round(eta * 1e6)])``.
Out-of-family phantoms (``n_out`` of each kind: held-out ``balls-signed`` images — one conductive
and one resistive disk —, an ellipse, three disks) use indices (seeds) ``seed + j``. Under
``mpirun`` the reconstructions are split across processes, each on ``COMM_SELF``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from mpi4py import MPI
from tqdm import tqdm

from eit_manifold.io import check_output_dir, staged_dir, write_bytes_atomic, write_json
from eit_manifold.operators.eit.parallel import spmd_map
from eit_manifold.pipelines.reconstruct import (
    MAX_ITERATIONS,
    MAX_STARTS,
    ReconstructConfig,
    make_problem,
    reconstruct_problem,
    reconstruction_operator,
)
from eit_manifold.pipelines.simulate import SimulateConfig, simulate_data, simulation_model
from eit_manifold.validation import InputError, check_float, check_int, check_seed, collective_check

# method label -> (reconstruct method, atlas)
DEFAULT_METHODS = {"atlas K=2": ("atlas", "balls"), "atlas K=1": ("atlas", "balls-k1"),
                   "atlas-mean K=2": ("atlas-mean", "balls"),
                   "gauss-newton": ("gauss-newton", "balls"), "tv": ("tv", "balls"),
                   "constant": ("constant", "balls")}
#: Methods ``--methods`` accepts beyond the defaults (not run unless asked: the posterior mean on the
#: K=1 atlas costs as much as the K=2 one, ~90 s of CPU per phantom).
OPTIONAL_METHODS = {"atlas-mean K=1": ("atlas-mean", "balls-k1")}
METRICS = ("relative_l2", "psnr", "ssim", "relative_data_misfit", "reconstruction_s", "reconstruction_cpu_s")
OUT_OF_FAMILY = ("balls-signed", "ellipse", "three-disks")


@dataclass
class ReportConfig:
    """Options of the ``report`` job."""

    n: int = 20
    noise: tuple[float, ...] = (0.001, 0.01)
    seed: int = 0
    out: str = "report"
    methods: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(DEFAULT_METHODS))
    out_of_family: tuple[str, ...] = OUT_OF_FAMILY
    n_out: int = 1  # phantoms of each out-of-family kind
    starts: int = 8
    iterations: int | None = None  # atlas descent steps (None: the reconstruct default)
    simulation_mesh: str = "default"
    reconstruction_mesh: str = "coarse"
    image_size: int = 64

    def __post_init__(self) -> None:
        check_int("--n", self.n, 1, 10_000)
        if not self.noise:
            raise InputError("--noise must list at least one noise level")
        self.noise = tuple(check_float("--noise", eta, 0.0, 10.0) for eta in self.noise)
        check_seed("--seed", self.seed)
        check_int("--starts", self.starts, 1, MAX_STARTS)
        if self.iterations is not None:
            check_int("--iterations", self.iterations, 0, MAX_ITERATIONS)
        check_int("--n-out", self.n_out, 0, 10_000)


def _cases(config: ReportConfig) -> list[dict]:
    cases = [{"family": "balls", "phantom": "balls", "index": config.seed + i} for i in range(config.n)]
    cases += [{"family": kind, "phantom": kind, "index": config.seed + j}
              for kind in config.out_of_family for j in range(config.n_out)]
    return [dict(c, noise=eta) for c in cases for eta in config.noise]


def simulate_phantom(sim_cfg: SimulateConfig, sim_model, phantom: str, index: int, noise: float, seed: int):
    """The data of one report case: phantom ``index`` of family ``phantom`` with relative ``noise``.

    The noise stream is ``[seed, index, noise * 1e6]``, so a case's data do not depend on which
    other cases (or methods) a run holds; benchmarks that study "the report's phantoms" call this.
    """
    cfg = replace(sim_cfg, phantom=phantom, seed=index, noise=noise)
    rng = np.random.default_rng([seed, index, round(noise * 1e6)])
    return simulate_data(cfg, sim_model, rng)


def run_report(config: ReportConfig, comm: MPI.Comm = MPI.COMM_WORLD) -> dict:
    """Simulate, reconstruct with every method, aggregate; rank 0 writes the report files (all
    together, when everything succeeded)."""
    with collective_check(comm):
        check_output_dir(config.out, "--out")
    sim_cfg = SimulateConfig(mesh=config.simulation_mesh, image_size=config.image_size)
    sim_model = simulation_model(sim_cfg, MPI.COMM_SELF)
    cases = _cases(config)

    def simulate_case(c: dict):
        return simulate_phantom(sim_cfg, sim_model, c["phantom"], c["index"], c["noise"], config.seed)

    # each process simulates its share of the phantoms (seeded per case), then all have them all
    datasets = spmd_map(simulate_case, cases, comm)
    operator = reconstruction_operator(datasets[0], (config.image_size,) * 2, config.reconstruction_mesh,
                                       comm=MPI.COMM_SELF)
    tasks = [(i, label) for i in range(len(cases)) for label in config.methods]
    progress = tqdm(total=len(tasks), desc="report", disable=comm.rank != 0)

    def run(task: tuple[int, str]) -> dict:
        i, label = task
        method, atlas = config.methods[label]
        rc = ReconstructConfig(data="<memory>", method=method, atlas=atlas, starts=config.starts,
                               iterations=config.iterations if method == "atlas" else None,
                               image_size=config.image_size, seed=config.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        result = reconstruct_problem(make_problem(datasets[i], operator), rc)
        progress.update(comm.size)
        return {"case": i, "method": label, **cases[i], "metrics": result["metrics"], "details": result["details"],
                "image": result["image"], "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}

    rows = spmd_map(run, tasks, comm)
    progress.close()
    summary = aggregate(rows, config)
    with staged_dir(config.out, comm) as stage:
        if comm.rank == 0:
            write_report(config, rows, summary, datasets, stage)
    return summary


def aggregate(rows: list[dict], config: ReportConfig) -> dict:
    """Mean and std of each metric per (family group, noise level, method)."""
    out: dict = {}
    for group, families in (("balls (held-out)", ("balls",)), *((f, (f,)) for f in config.out_of_family)):
        for eta in config.noise:
            for label in config.methods:
                sel = [r for r in rows if r["family"] in families and r["noise"] == eta and r["method"] == label]
                if not sel:
                    continue
                stats = {}
                for m in METRICS:
                    values = np.array([r["metrics"][m] for r in sel if m in r["metrics"]])
                    if values.size:
                        stats[m] = {"mean": float(values.mean()), "std": float(values.std()),
                                    "values": values.tolist()}
                out.setdefault(group, {}).setdefault(f"{eta:g}", {})[label] = stats
    return out


def markdown_table(summary: dict) -> str:
    """One table per phantom group: rows (noise, method), columns mean ± std of each metric."""
    lines = []
    names = {"relative_l2": "rel. L2 error", "psnr": "PSNR (dB)", "ssim": "SSIM",
             "relative_data_misfit": "rel. data misfit", "reconstruction_s": "time (s)",
             "reconstruction_cpu_s": "CPU (s)"}
    for group, by_noise in summary.items():
        lines += [f"### {group}", "", "| noise | method | " + " | ".join(names.values()) + " |",
                  "|---|---|" + "---:|" * len(names)]
        for eta, by_method in by_noise.items():
            for label, stats in by_method.items():
                cells = [f"{stats[m]['mean']:.3g} ± {stats[m]['std']:.2g}" if m in stats else "—" for m in names]
                lines.append(f"| {eta} | {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(config: ReportConfig, rows: list[dict], summary: dict, datasets: list,
                 out: str | Path | None = None) -> None:
    """results.json, results.md and a figure grid (truth and each method, first phantoms) in ``out``
    (default ``config.out``)."""
    out = Path(config.out if out is None else out)
    per_item = [{k: v for k, v in r.items() if k != "image"} for r in rows]
    write_json(out / "results.json", {"config": asdict(config), "summary": summary, "items": per_item})
    write_bytes_atomic(out / "results.md", (markdown_table(summary) + "\n").encode())
    from eit_manifold.plotting import reconstruction_grid

    cases = _cases(config)
    # a few held-out phantoms and every out-of-family one, at the last (highest) noise level
    eta = config.noise[-1]
    balls = [i for i, c in enumerate(cases) if c["family"] == "balls" and c["noise"] == eta][:4]
    others = [i for i, c in enumerate(cases) if c["family"] != "balls" and c["noise"] == eta]
    shown = balls + others
    columns = {"truth": np.stack([datasets[i].extras["conductivity_image"] for i in shown])}
    for label in config.methods:
        columns[label] = np.stack([next(r["image"] for r in rows if r["case"] == i and r["method"] == label)
                                   for i in shown])
    sim = SimulateConfig()
    reconstruction_grid({k: np.nan_to_num(v, nan=1.0) for k, v in columns.items()}, out / "reconstructions.png",
                        vmin=sim.sigma_min, vmax=sim.sigma_max)
