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

from eit_manifold.data.images import BALL_FAMILIES, ball_background, heldout_image, render
from eit_manifold.io import check_output_file, staged_files
from eit_manifold.operators.eit.conductivity_map import image_to_conductivity
from eit_manifold.operators.eit.data_file import MAX_ELECTRODES, MeasurementData, write_measurements
from eit_manifold.operators.eit.forward import CEMForwardModel
from eit_manifold.operators.eit.geometry import Tank
from eit_manifold.operators.eit.mesh import check_mesh_option, tank_mesh
from eit_manifold.operators.eit.patterns import INJECTIONS, MEASUREMENTS, injection_patterns
from eit_manifold.operators.eit.phantoms import (
    default_disks,
    inclusion_conductivity,
    random_inclusions,
)
from eit_manifold.operators.eit.pixels import pixel_centres
from eit_manifold.operators.eit3d.geometry import CylinderTank
from eit_manifold.operators.noise import RelativeNoise
from eit_manifold.seeding import seed_everything
from eit_manifold.validation import (
    InputError,
    check_choice,
    check_contact_impedance,
    check_float,
    check_int,
    check_positive,
    check_seed,
    check_sigma_range,
    collective_check,
    numeric_array,
)

PHANTOMS = ("homogeneous", "disks", "image", "conductivity", "balls", "balls-signed", "balls-mixed", "disk",
            "three-disks", "ellipse")
MAX_IMAGE_SIDE = 2048
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
    # 3-D tank (dim = 3): a cylinder of water, electrodes electrode_bottom..electrode_top high
    dim: int = 2
    height: float = 1.0
    water_level: float | None = None
    electrode_bottom: float = 0.0
    electrode_top: float | None = None
    solver: str = "auto"
    xdmf: str | None = None

    def __post_init__(self) -> None:
        """Check every option (cheap; files are read by :func:`check_simulate`)."""
        check_int("--electrodes", self.electrodes, 2, MAX_ELECTRODES)
        check_positive("--radius", self.radius)
        check_positive("--electrode-width", self.electrode_width)
        check_choice("--injection", self.injection, INJECTIONS)
        check_choice("--measurement", self.measurement, MEASUREMENTS)
        check_choice("--phantom", self.phantom, PHANTOMS)
        check_positive("--sigma-background", self.sigma_background)
        check_sigma_range(self.sigma_min, self.sigma_max)
        check_float("--noise", self.noise, 0.0, 10.0)
        check_seed("--seed", self.seed)
        check_int("image_size", self.image_size, 8, MAX_IMAGE_SIDE)
        check_mesh_option(self.mesh, self.mesh_size, self.radius)
        # the lowest conductivity the phantom can have decides what z double precision resolves
        check_contact_impedance(self.contact_impedance, self.electrode_width,
                                min(self.sigma_background, self.sigma_min))
        check_int("--dim", self.dim, 2, 3)
        check_choice("--solver", self.solver, ("auto", "direct", "iterative"))
        if self.dim == 2 and (self.water_level is not None or self.electrode_top is not None
                              or self.electrode_bottom != 0.0):
            raise InputError("--water-level, --electrode-bottom and --electrode-top describe a 3-D tank: add --dim 3")
        if self.dim == 3:
            check_positive("--height", self.height)
        self.tank()  # electrode count, widths and overlaps (and the cylinder's heights)
        injection_patterns(self.injection, self.electrodes)  # e.g. opposite needs an even count
        if self.phantom in ("image", "conductivity") and self.phantom_image is None:
            raise InputError(f"--phantom {self.phantom} needs --phantom-image FILE.npy")

    def tank(self) -> Tank | CylinderTank:
        """The 2-D tank, or for ``dim = 3`` the cylinder with this cross-section."""
        section = Tank(
            radius=self.radius,
            n_electrodes=self.electrodes,
            electrode_width=self.electrode_width,
            contact_impedance=self.contact_impedance,
        )
        if self.dim == 2:
            return section
        return CylinderTank(section, self.height, self.water_level, self.electrode_bottom, self.electrode_top)


def load_phantom_image(path: str | Path, kind: str = "image", radius: float = 1.0) -> np.ndarray:
    """Read and check a phantom image: ``image`` values in [0, 1], or a ``conductivity`` in S/m.

    A ``conductivity`` image is what ``reconstruct`` writes (``conductivity.npy``): positive inside
    the tank, NaN outside (pixels whose centre lies outside the disk of ``radius``); the NaN
    pixels take the value of the nearest inside pixel (the mesh cells at the boundary overlap them).

    Raises
    ------
    ValueError
        Naming the file and what is wrong: not a real 2-D array, non-finite values inside the tank,
        values out of range.
    """
    from eit_manifold.io import load_npy

    what = "phantom image" if kind == "image" else "conductivity image"
    raw = load_npy(path, what)
    image = numeric_array(raw, f"{what} {path}", ndim=2, finite=False)
    h, w = image.shape
    if not (2 <= h <= MAX_IMAGE_SIDE and 2 <= w <= MAX_IMAGE_SIDE):
        raise InputError(f"{what} {path} must be between 2 x 2 and {MAX_IMAGE_SIDE} x {MAX_IMAGE_SIDE}, got {h} x {w}")
    if np.any(np.isinf(image)):
        raise InputError(f"{what} {path} contains infinite values")
    xx, yy = pixel_centres(image.shape, radius)
    inside = xx**2 + yy**2 <= radius**2
    nan = np.isnan(image)
    if kind == "image":
        if nan.any():
            raise InputError(f"{what} {path} contains NaN values; an image in [0, 1] must be finite (a conductivity "
                             "in S/m with NaN outside the tank, as reconstruct writes, is read with --phantom "
                             "conductivity)")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0 or hi > 1:
            raise InputError(f"{what} {path} must hold values in [0, 1] (mapped to --sigma-min..--sigma-max), got "
                             f"[{lo:g}, {hi:g}]; a conductivity in S/m is read with --phantom conductivity")
        return image
    if np.any(nan & inside):
        raise InputError(f"{what} {path} has NaN at {int(np.sum(nan & inside))} pixel(s) inside the tank (only pixels "
                         "outside the tank may be NaN)")
    values = image[~nan]
    if values.size == 0 or values.min() <= 0:
        raise InputError(f"{what} {path} must hold positive conductivities (S/m), got minimum "
                         f"{values.min() if values.size else float('nan'):g}")
    if nan.any():
        from scipy.ndimage import distance_transform_edt

        idx = distance_transform_edt(nan, return_distances=False, return_indices=True)
        image = image[tuple(idx)]
    return image


def phantom_conductivity(
    config: SimulateConfig, model: CEMForwardModel
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-cell conductivity, conductivity image (NaN outside the tank) and a JSON description.

    In a 3-D tank the 2-D phantoms are extruded over the water depth (columns); the image is
    their cross-section.
    """
    R = config.radius
    # image phantoms on a 3-D mesh: one voxel layer over the whole depth = the image extruded
    image_map = (lambda shape: model.pixel_map(shape)) if config.dim == 2 else (
        lambda shape: model.pixel_map((1, *shape)))
    if config.phantom == "homogeneous":
        inclusions = []
    elif config.phantom == "disks":
        inclusions = default_disks(R, config.sigma_background)
    elif config.phantom in ("disk", "three-disks", "ellipse"):
        lo, hi = (config.sigma_min + (config.sigma_max - config.sigma_min) * v for v in (0.1, 0.9))
        inclusions = random_inclusions(config.phantom, np.random.default_rng(config.seed), R, lo, hi)
    elif config.phantom in BALL_FAMILIES:
        fine, params = heldout_image(config.phantom, config.seed, size=RENDER_SIZE)
        sigma = image_map(fine.shape) @ image_to_conductivity(fine, config.sigma_min, config.sigma_max,
                                                                   check=True).ravel()
        x = render(config.phantom, params, config.image_size)
        sigma_img = image_to_conductivity(x, config.sigma_min, config.sigma_max)
        xx, yy = pixel_centres(x.shape, R)
        img = np.where(xx**2 + yy**2 <= R**2, sigma_img, np.nan)
        desc = {"kind": config.phantom, "heldout_index": config.seed, "background": ball_background(config.phantom),
                "centres": np.asarray(params["centres"]).tolist(), "radii": np.asarray(params["radii"]).tolist(),
                "values": np.asarray(params["values"]).tolist(),
                "sigma_min": config.sigma_min, "sigma_max": config.sigma_max, "image": x.tolist()}
        return sigma, img, desc
    elif config.phantom in ("image", "conductivity"):
        x = load_phantom_image(config.phantom_image, config.phantom, R)
        sigma_img = image_to_conductivity(x, config.sigma_min, config.sigma_max) if config.phantom == "image" else x
        sigma = image_map(x.shape) @ sigma_img.ravel()
        xx, yy = pixel_centres(x.shape, R)
        img = np.where(xx**2 + yy**2 <= R**2, sigma_img, np.nan)
        desc = {"kind": config.phantom, "file": str(config.phantom_image)}
        if config.phantom == "image":
            desc.update(sigma_min=config.sigma_min, sigma_max=config.sigma_max)
        return sigma, img, desc
    else:
        raise ValueError(f"unknown phantom {config.phantom!r}: choose one of {', '.join(PHANTOMS)}")
    sigma = inclusion_conductivity(model.centroids[:, :2], config.sigma_background, inclusions)
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
    return CEMForwardModel(mesh, config.injection, config.measurement, solver=config.solver)


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
            **({"tank3d": np.array(json.dumps(tank.to_dict()))} if isinstance(tank, CylinderTank) else {}),
        },
    )


def check_simulate(config: SimulateConfig) -> None:
    """The checks :func:`simulate` runs before any work: the phantom image, the output paths, and the
    contact impedance against the image's lowest conductivity (the options are checked by the config)."""
    if config.phantom_image is not None and config.phantom in ("image", "conductivity"):
        x = load_phantom_image(config.phantom_image, config.phantom, config.radius)
        if config.phantom == "conductivity":
            check_contact_impedance(config.contact_impedance, config.electrode_width, float(x.min()))
    check_output_file(config.out, "--out")
    if config.plot:
        check_output_file(config.plot, "--plot")
        if Path(config.plot).resolve() == Path(config.out).resolve():
            raise InputError(f"--plot and --out name the same file: {config.out}")


def mid_depth_section(model: CEMForwardModel, sigma: np.ndarray, size: int = 64) -> np.ndarray:
    """A horizontal section (size, size) of a 3-D per-cell field at mid-electrode height, NaN outside.

    Cell values averaged onto a thin voxel layer (volume-weighted through the voxel map).
    """
    z0, z1 = model.z_range
    heights = model.tank.electrode_heights
    zc = float(np.mean(heights))
    layers = 8
    k = int(np.clip((zc - z0) / (z1 - z0) * layers, 0, layers - 1))
    P = model.pixel_map((layers, size, size))
    weights = np.asarray(P.sum(axis=0)).ravel()
    values = P.T @ sigma
    layer = slice(k * size * size, (k + 1) * size * size)
    with np.errstate(invalid="ignore", divide="ignore"):
        img = (values[layer] / weights[layer]).reshape(size, size)
    return np.where(weights[layer].reshape(size, size) > 0, img, np.nan)


def simulate(config: SimulateConfig, comm: MPI.Comm = MPI.COMM_WORLD) -> dict:
    """Run the simulation and write the measurement file (and the PNG: both or neither); return a
    summary dict. Every input is checked before the mesh is made (:func:`check_simulate`)."""
    with collective_check(comm):
        check_simulate(config)
    rng = seed_everything(config.seed)
    model = simulation_model(config, comm)
    data = simulate_data(config, model, rng)
    sigma = data.extras["conductivity"]
    # collective: every process takes part
    vertices = model.cell_vertices() if config.plot and config.dim == 2 else None
    section = mid_depth_section(model, sigma) if config.plot and config.dim == 3 else None
    if config.xdmf:
        from eit_manifold.operators.eit.export import export_xdmf

        export_xdmf(config.xdmf, model.tank_mesh, {"conductivity": sigma})
    if comm.rank == 0:
        with staged_files() as stage:
            write_measurements(stage.path(config.out, suffix=".npz"), data)
            if config.plot and config.dim == 2:
                from eit_manifold.eit_plots import plot_simulation

                plot_simulation(stage.path(config.plot, suffix=".png"), vertices, sigma, data.measurements,
                                data.extras["measurements_clean"], model.tank.electrode_angles, model.tank.radius)
            elif config.plot:
                from eit_manifold.eit_plots import plot_reconstruction

                plot_reconstruction(stage.path(config.plot, suffix=".png"), section, model.tank.radius,
                                    data.measurements, data.extras["measurements_clean"],
                                    title="phantom, section at mid-electrode height")
    if comm.size > 1:
        comm.barrier()  # the file exists for every process when simulate returns (the demo reads it next)
    return {
        "out": config.out,
        "n_cells": model.tank_mesh.n_cells,
        "n_nodes": model.tank_mesh.n_nodes,
        "patterns": int(model.currents.shape[0]),
        "measurements_per_pattern": int(model.measurement_matrix.shape[0]),
        "noise": config.noise,
    }
