"""Measurement files (``.npz``): writing, reading and validation.

Keys (shapes with P patterns, L electrodes, M measurements per pattern):

=========================  ==========  ====================================================
key                        shape       meaning
=========================  ==========  ====================================================
``currents``               (P, L)      injected currents (A), rows sum to zero
``electrode_potentials``   (P, L)      noise-free grounded electrode potentials (sum U = 0)
``measurements``           (P, M)      measured data ``M U_p`` plus noise
``measurements_clean``     (P, M)      the same without noise (optional)
``measurement_matrix``     (M, L)      rows combine electrode potentials into data
``electrode_angles``       (L,)        centre angle of each electrode (rad)
``electrode_width``        (L,)        arc length of each electrode
``contact_impedance``      (L,)        contact impedance of each electrode
``radius``                 ()          tank radius
``noise_level``            ()          relative noise level eta (see ``add_noise``)
``conductivity``           (n_cells,)  true per-cell conductivity (optional)
``conductivity_image``     (H, W)      true conductivity image, NaN outside (optional)
``phantom``                ()          JSON description of the phantom (optional)
``tank3d``                 ()          JSON of the 3-D cylinder (3-D files only, optional)
=========================  ==========  ====================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eit_manifold.io import save_npz_atomic
from eit_manifold.operators.eit.geometry import Tank

REQUIRED_KEYS = (
    "currents",
    "electrode_potentials",
    "measurements",
    "measurement_matrix",
    "electrode_angles",
    "electrode_width",
    "contact_impedance",
    "radius",
    "noise_level",
)


@dataclass
class MeasurementData:
    """Contents of a measurement file."""

    currents: np.ndarray
    electrode_potentials: np.ndarray
    measurements: np.ndarray
    measurement_matrix: np.ndarray
    electrode_angles: np.ndarray
    electrode_width: np.ndarray
    contact_impedance: np.ndarray
    radius: float
    noise_level: float
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_electrodes(self) -> int:
        return self.electrode_angles.shape[0]

    def tank(self) -> Tank:
        """The tank described by the file (electrodes equally spaced from the first angle)."""
        a = self.electrode_angles
        L = a.shape[0]
        step = (a[1] - a[0]) % (2 * np.pi) if L > 1 else 0.0
        orientation = 1 if step < np.pi else -1
        expected = a[0] + orientation * 2 * np.pi * np.arange(L) / L
        if not np.allclose(np.angle(np.exp(1j * (a - expected))), 0, atol=1e-6):
            raise ValueError("electrode_angles are not equally spaced: only equally spaced electrodes are supported")
        return Tank(
            radius=float(self.radius),
            n_electrodes=L,
            electrode_width=tuple(self.electrode_width.tolist()),
            contact_impedance=tuple(self.contact_impedance.tolist()),
            first_angle=float(a[0]),
            orientation=orientation,
        )


def relative_noise_std(data: np.ndarray, level: float) -> np.ndarray:
    """Noise std of every datum (shape of ``data``, (P, M)): ``level * rms(data_p)`` per pattern.

    ``rms(d_p) = ||d_p|| / sqrt(M)``, so noise of this std has ``||noise_p|| / ||d_p||`` about ``level``.
    """
    if not (np.isfinite(level) and level >= 0):
        raise ValueError(f"noise level must be a non-negative number, got {level!r}")
    rms = np.sqrt(np.mean(data**2, axis=1, keepdims=True))
    return np.broadcast_to(level * rms, data.shape)


def add_noise(clean: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise relative to each pattern's root-mean-square value.

    ``d_pm = clean_pm + level * rms(clean_p) * N(0, 1)`` (see :func:`relative_noise_std`).
    """
    return clean + relative_noise_std(clean, level) * rng.standard_normal(clean.shape)


def write_measurements(path: str | Path, data: MeasurementData) -> None:
    """Write a measurement file atomically (and validate it first)."""
    _validate(data, str(path))
    arrays = {k: getattr(data, k) for k in REQUIRED_KEYS}
    arrays.update(data.extras)
    save_npz_atomic(path, **arrays)


def read_measurements(path: str | Path) -> MeasurementData:
    """Read and validate a measurement file; errors name the missing or inconsistent key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"measurement file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise ValueError(f"cannot read measurement file {path}: {exc}") from exc
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"measurement file {path} lacks key(s) {', '.join(missing)}")
    data = MeasurementData(
        **{k: arrays.pop(k) for k in REQUIRED_KEYS[:7]},
        radius=float(arrays.pop("radius")),
        noise_level=float(arrays.pop("noise_level")),
        extras=arrays,
    )
    _validate(data, str(path))
    return data


def _validate(d: MeasurementData, source: str) -> None:
    def fail(key: str, msg: str) -> None:
        raise ValueError(f"measurement file {source}: key '{key}' {msg}")

    L = np.asarray(d.electrode_angles).shape[0] if np.ndim(d.electrode_angles) == 1 else fail(
        "electrode_angles", f"must be a vector, got shape {np.shape(d.electrode_angles)}"
    )
    for key in ("electrode_width", "contact_impedance"):
        if np.shape(getattr(d, key)) != (L,):
            fail(key, f"must have shape ({L},) like electrode_angles, got {np.shape(getattr(d, key))}")
    if np.ndim(d.currents) != 2 or np.shape(d.currents)[1] != L:
        fail("currents", f"must have shape (P, {L}), got {np.shape(d.currents)}")
    P = d.currents.shape[0]
    if np.shape(d.electrode_potentials) != (P, L):
        fail("electrode_potentials", f"must have shape ({P}, {L}), got {np.shape(d.electrode_potentials)}")
    if np.ndim(d.measurement_matrix) != 2 or np.shape(d.measurement_matrix)[1] != L:
        fail("measurement_matrix", f"must have shape (M, {L}), got {np.shape(d.measurement_matrix)}")
    M = d.measurement_matrix.shape[0]
    if np.shape(d.measurements) != (P, M):
        fail("measurements", f"must have shape ({P}, {M}) (patterns x measurements), got {np.shape(d.measurements)}")
    if not np.all(np.isfinite(d.measurements)):
        fail("measurements", "contains non-finite values")
    if not (np.isfinite(d.radius) and d.radius > 0):
        fail("radius", f"must be positive, got {d.radius}")
