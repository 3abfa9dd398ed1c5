"""Simulated KTC difference data: phantoms -> data change -> linearised reconstruction.

Training pairs for a learned post-processing of the linearised reconstruction (the approach of the
challenge's winners). Each sample:

1. a phantom (:mod:`eit_manifold.ktc.phantoms`) on a *finer* mesh of the calibrated tank than the
   one the reconstruction linearises on (no inverse crime), with the water's conductivity drifted
   by a factor ``1 + N(0, drift^2)`` between reference and target measurement (temperature);
2. the data change ``F(sigma) - F(sigma0)`` on the kept patterns/measurements plus Gaussian noise of
   standard deviation ``eta * rms(U_ref)``, ``eta`` log-uniform in ``noise``;
3. the caller's reconstruction of that change (e.g. the ``linear`` method), and the phantom's class
   image.

Noise range: in data1-4 the ten pairs of patterns that inject opposite currents give
``dU_p + dU_q`` (zero for any linear model, offsets cancel) with rms 0.37-0.75 % of rms(U_ref);
the default range 0.2-1.5 % covers that with room on both sides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from eit_manifold.ktc.calibration import Calibration, forward_model, ktc_mesh
from eit_manifold.ktc.data import KTCMeasurement
from eit_manifold.ktc.phantoms import label_image, labels_at, sample_phantom
from eit_manifold.operators.eit import MeshOptions


@dataclass(frozen=True)
class SimulationConfig:
    """How training data are simulated (module docstring).

    Attributes
    ----------
    noise : (float, float)
        Range of the noise std relative to rms(U_ref) (log-uniform).
    drift : float
        Std of the relative change of the water conductivity between reference and data.
    mesh_size : float
        Element size (m) of the simulation mesh (the calibration mesh uses 6 mm).
    label_size : int
        Side of the class images.
    """

    noise: tuple[float, float] = (0.002, 0.015)
    drift: float = 0.01
    mesh_size: float = 0.004
    label_size: int = 64

    def __post_init__(self) -> None:
        lo, hi = self.noise
        if not 0 < lo <= hi:
            raise ValueError(f"noise range must satisfy 0 < low <= high, got {self.noise!r}")
        if not self.drift >= 0:
            raise ValueError(f"drift must be >= 0, got {self.drift!r}")
        if not self.mesh_size > 0:
            raise ValueError(f"mesh_size must be positive, got {self.mesh_size!r}")


def simulate_pairs(
    calibration: Calibration,
    reference: KTCMeasurement,
    reconstruct: Callable[[np.ndarray], np.ndarray] | None,
    n: int,
    rng: np.random.Generator,
    config: SimulationConfig = SimulationConfig(),
    truth_size: int | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Simulate ``n`` (reconstruction, classes) pairs.

    Parameters
    ----------
    calibration : Calibration
        The calibrated tank (geometry, impedances, current convention, water conductivity).
    reference : KTCMeasurement
        The reference measurement on the kept set (its patterns/measurements are simulated).
    reconstruct : callable or None
        Maps data changes (P*M, k) to images (k, H, W); None: no ``inputs`` (the caller
        reconstructs the returned ``changes`` later).
    n : int
        Number of samples.
    rng : numpy Generator
        Source of every random draw (phantoms, drift, noise).
    truth_size : int, optional
        Also return the classes on a ``truth_size`` grid (key ``truths``), e.g. 256 to score.

    Returns
    -------
    dict
        ``inputs`` (n, H, W) float32 (with ``reconstruct``), ``labels`` (n, s, s) uint8,
        ``changes`` (n, P*M) float32, ``noise`` (n,), and ``truths`` when asked for.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"number of samples must be a positive integer, got {n!r}")
    options = MeshOptions(mesh_size=config.mesh_size, refinement=calibration.mesh_options.refinement,
                          grading_radius=calibration.mesh_options.grading_radius)
    model = forward_model(ktc_mesh(calibration.tank(), options), reference, calibration.contact_impedance,
                          calibration.currents)
    if model.data_shape != reference.data.shape:
        raise ValueError(f"model data {model.data_shape} differ from the reference's {reference.data.shape}")
    sigma0 = calibration.sigma
    background = model.measurements(np.full(model.n_cells, sigma0)).ravel()
    scale = float(np.sqrt(np.mean(reference.data**2)))
    centroids = model.centroids
    changes = np.empty((n, background.size))
    labels = np.empty((n, config.label_size, config.label_size), dtype=np.uint8)
    truths = np.empty((n, truth_size, truth_size), dtype=np.uint8) if truth_size else None
    etas = np.exp(rng.uniform(*np.log(config.noise), n))
    for i in tqdm(range(n), desc="simulating", disable=not progress):
        targets = sample_phantom(rng)
        _, factor = labels_at(targets, centroids)
        water = sigma0 * (1.0 + config.drift * rng.standard_normal())
        clean = model.measurements(water * factor).ravel() - background
        changes[i] = clean + etas[i] * scale * rng.standard_normal(clean.size)
        labels[i] = label_image(targets, config.label_size)
        if truths is not None:
            truths[i] = label_image(targets, truth_size)
    out = {"labels": labels, "changes": changes.astype(np.float32), "noise": etas}
    if reconstruct is not None:
        out["inputs"] = np.asarray(reconstruct(changes.T), dtype=np.float32)
        if out["inputs"].shape[0] != n:
            raise ValueError(f"reconstruct returned {out['inputs'].shape[0]} images for {n} data changes")
    if truths is not None:
        out["truths"] = truths
    return out
