"""Simulate EIT data for a phantom: the ``simulate`` job.

The phantom is evaluated on a (default: the ``default`` preset) mesh, the CEM is solved for all
current patterns, noise is added per pattern relative to its RMS value, and a measurement file
(see :mod:`eit_manifold.operators.eit.data_file`) is written atomically, with an optional PNG.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from mpi4py import MPI

from eit_manifold.operators.eit.data_file import MeasurementData, write_measurements
from eit_manifold.operators.eit.forward import CEMForwardModel
from eit_manifold.operators.eit.geometry import Tank
from eit_manifold.operators.eit.mesh import tank_mesh
from eit_manifold.operators.eit.phantoms import (
    default_disks,
    image_to_conductivity,
    inclusion_conductivity,
    random_inclusions,
)
from eit_manifold.operators.eit.pixels import pixel_centres
from eit_manifold.operators.noise import RelativeNoise
from eit_manifold.seeding import seed_everything

PHANTOMS = ("homogeneous", "disks", "image", "balls", "disk", "three-disks", "ellipse")
# Resolution at which image-family phantoms are rendered onto the simulation mesh (finer than the
# images the atlas reconstructs, so the simulation does not share their pixelation).
RENDER_SIZE = 256


@dataclass
class SimulateConfig:
    """Options of the ``simulate`` job (the CLI flags, one to one)."""

    electrodes: int = 16
    radius: float = 1.0
    electrode_width: float = 0.2
    contact_impedance: float = 0.01
    injection: str = "adjacent"
    measurement: str = "adjacent"
    mesh: str | None = None
    mesh_size: float | None = None
    phantom: str = "disks"
    sigma_background: float = 1.0
    phantom_image: str | None = None
    sigma_min: float = 0.2
    sigma_max: float = 1.8
    noise: float = 0.01
    seed: int = 0
    image_size: int = 64
    out: str = "simulated.npz"
    plot: str | None = None

    def __post_init__(self) -> None:
        for name in ("sigma_background", "sigma_min", "sigma_max"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive conductivity, got {value!r}")
        if not (np.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a non-negative relative level, got {self.noise!r}")

    def tank(self) -> Tank:
        return Tank(
            radius=self.radius,
            n_electrodes=self.electrodes,
            electrode_width=self.electrode_width,
            contact_impedance=self.contact_impedance,
        )


def _load_image(path: str | None) -> np.ndarray:
    if path is None:
        raise ValueError("--phantom image needs --phantom-image FILE.npy")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"phantom image not found: {p}")
    try:
        image = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"cannot read phantom image {p}: {exc}") from exc
    if image.ndim != 2:
        raise ValueError(f"phantom image {p} must be a 2-D array (H, W), got shape {image.shape}")
    return image.astype(float)


def phantom_conductivity(
    config: SimulateConfig, model: CEMForwardModel
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-cell conductivity, conductivity image (NaN outside the tank) and a JSON description."""
    R = config.radius
    if config.phantom == "homogeneous":
        inclusions = []
    elif config.phantom == "disks":
        inclusions = default_disks(R, config.sigma_background)
    elif config.phantom in ("disk", "three-disks", "ellipse"):
        lo, hi = (config.sigma_min + (config.sigma_max - config.sigma_min) * v for v in (0.1, 0.9))
        inclusions = random_inclusions(config.phantom, np.random.default_rng(config.seed), R, lo, hi)
    elif config.phantom == "balls":
        from eit_manifold.data.images import BALL_BACKGROUND, heldout_image, render

        fine, params = heldout_image("balls", config.seed, size=RENDER_SIZE)
        sigma = model.pixel_map(fine.shape) @ image_to_conductivity(fine, config.sigma_min, config.sigma_max).ravel()
        x = render("balls", params, config.image_size)
        sigma_img = image_to_conductivity(x, config.sigma_min, config.sigma_max)
        xx, yy = pixel_centres(x.shape, R)
        img = np.where(xx**2 + yy**2 <= R**2, sigma_img, np.nan)
        desc = {"kind": "balls", "heldout_index": config.seed, "background": BALL_BACKGROUND,
                "centres": np.asarray(params["centres"]).tolist(), "radii": np.asarray(params["radii"]).tolist(),
                "sigma_min": config.sigma_min, "sigma_max": config.sigma_max, "image": x.tolist()}
        return sigma, img, desc
    elif config.phantom == "image":
        x = _load_image(config.phantom_image)
        sigma_img = image_to_conductivity(x, config.sigma_min, config.sigma_max)
        sigma = model.pixel_map(x.shape) @ sigma_img.ravel()
        xx, yy = pixel_centres(x.shape, R)
        img = np.where(xx**2 + yy**2 <= R**2, sigma_img, np.nan)
        desc = {"kind": "image", "file": str(config.phantom_image), "sigma_min": config.sigma_min,
                "sigma_max": config.sigma_max}
        return sigma, img, desc
    else:
        raise ValueError(f"unknown phantom {config.phantom!r}: choose one of {', '.join(PHANTOMS)}")
    sigma = inclusion_conductivity(model.centroids, config.sigma_background, inclusions)
    n = config.image_size
    xx, yy = pixel_centres((n, n), R)
    pts = np.column_stack([xx.ravel(), yy.ravel()])
    img = inclusion_conductivity(pts, config.sigma_background, inclusions).reshape(n, n)
    img[xx**2 + yy**2 > R**2] = np.nan
    desc = {"kind": config.phantom, "background": config.sigma_background, "seed": config.seed,
            "inclusions": [inc.to_dict() for inc in inclusions]}
    return sigma, img, desc


def simulation_model(config: SimulateConfig, comm: MPI.Comm = MPI.COMM_WORLD) -> CEMForwardModel:
    """The forward model ``simulate`` uses for ``config`` (tank, mesh, patterns)."""
    mesh = tank_mesh(config.tank(), config.mesh, config.mesh_size, comm)
    return CEMForwardModel(mesh, config.injection, config.measurement)


def simulate_data(config: SimulateConfig, model: CEMForwardModel, rng: np.random.Generator) -> MeasurementData:
    """Simulate the phantom of ``config`` with ``model`` and add noise drawn from ``rng`` (no files)."""
    tank = model.tank
    sigma, image, desc = phantom_conductivity(config, model)
    result = model.solve(sigma)
    clean = result.measurements
    return MeasurementData(
        currents=model.currents,
        electrode_potentials=result.electrode_potentials,
        measurements=RelativeNoise(config.noise).sample(clean, rng),
        measurement_matrix=model.measurement_matrix,
        electrode_angles=tank.electrode_angles,
        electrode_width=tank.widths.copy(),
        contact_impedance=tank.impedances.copy(),
        radius=tank.radius,
        noise_level=config.noise,
        extras={
            "measurements_clean": clean,
            "conductivity": sigma,
            "conductivity_image": image,
            "phantom": np.array(json.dumps(desc)),
            "config": np.array(json.dumps(asdict(config))),
        },
    )


def simulate(config: SimulateConfig, comm: MPI.Comm = MPI.COMM_WORLD) -> dict:
    """Run the simulation and write the measurement file; return a summary dict."""
    rng = seed_everything(config.seed)
    model = simulation_model(config, comm)
    data = simulate_data(config, model, rng)
    vertices = model.cell_vertices() if config.plot else None  # collective: every process takes part
    if comm.rank == 0:
        write_measurements(config.out, data)
        if config.plot:
            from eit_manifold.eit_plots import plot_simulation

            plot_simulation(config.plot, vertices, data.extras["conductivity"], data.measurements,
                            data.extras["measurements_clean"], model.tank.electrode_angles, model.tank.radius)
    return {
        "out": config.out,
        "n_cells": model.tank_mesh.n_cells,
        "n_nodes": model.tank_mesh.n_nodes,
        "patterns": int(model.currents.shape[0]),
        "measurements_per_pattern": int(model.measurement_matrix.shape[0]),
        "noise": config.noise,
    }
