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
``noise_level``            ()          relative noise level eta (``RelativeNoise``)
``conductivity``           (n_cells,)  true per-cell conductivity (optional)
``conductivity_image``     (H, W)      true conductivity image, NaN outside (optional)
``phantom``                ()          JSON description of the phantom (optional)
``tank3d``                 ()          JSON of the 3-D cylinder (3-D files only, optional)
=========================  ==========  ====================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from eit_manifold.io import save_npz_atomic
from eit_manifold.operators.eit.geometry import Tank
from eit_manifold.validation import InputError, check_input_file, numeric_array

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


def write_measurements(path: str | Path, data: MeasurementData) -> None:
    """Write a measurement file atomically (and validate it first)."""
    data = _validate(data, str(path))
    arrays = {k: getattr(data, k) for k in REQUIRED_KEYS}
    arrays.update(data.extras)
    save_npz_atomic(path, **arrays)


#: Largest electrode count, pattern count and measurements per pattern a file may declare (bounds
#: the operator built from it before any allocation).
MAX_ELECTRODES = 1024
MAX_PATTERNS = 100_000


def read_measurements(path: str | Path) -> MeasurementData:
    """Read and validate a measurement file; errors name the file, the key and the value.

    Every required key is checked for dtype (real numbers), shape, finiteness and range
    (positive radius, widths and contact impedances; ``noise_level`` >= 0 or NaN for "unknown";
    currents of each pattern summing to zero); the optional truth keys for their shapes.
    """
    path = check_input_file(path, "measurement file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise InputError(f"cannot read measurement file {path}: {' '.join(str(exc).split())}") from exc
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise InputError(f"measurement file {path} lacks key(s) {', '.join(missing)}")
    where = f"measurement file {path}"
    scalars = {}
    for key in ("radius", "noise_level"):
        if np.ndim(arrays[key]) != 0:
            raise InputError(f"{where}: key '{key}' must be a scalar, got shape {np.shape(arrays[key])}")
        scalars[key] = float(numeric_array(arrays.pop(key), f"{where}: key '{key}'", finite=False))
    data = MeasurementData(**{k: arrays.pop(k) for k in REQUIRED_KEYS[:7]}, **scalars, extras=arrays)
    return _validate(data, str(path))


def _validate(d: MeasurementData, source: str) -> MeasurementData:
    """Check every field of ``d`` (see :func:`read_measurements`); return it with float64 arrays."""
    where = f"measurement file {source}"

    def key(name: str) -> str:
        return f"{where}: key '{name}'"

    angles = numeric_array(d.electrode_angles, key("electrode_angles"), ndim=1)
    L = angles.shape[0]
    if not 2 <= L <= MAX_ELECTRODES:
        raise InputError(f"{key('electrode_angles')} must list 2..{MAX_ELECTRODES} electrodes, got {L}")
    width = numeric_array(d.electrode_width, key("electrode_width"), shape=(L,))
    z = numeric_array(d.contact_impedance, key("contact_impedance"), shape=(L,))
    for name, values in (("electrode_width", width), ("contact_impedance", z)):
        if np.any(values <= 0):
            raise InputError(f"{key(name)} must be positive, got {values.min():g}")
    currents = numeric_array(d.currents, key("currents"), ndim=2)
    if currents.shape[1] != L or not 1 <= currents.shape[0] <= MAX_PATTERNS:
        raise InputError(f"{key('currents')} must have shape (P, {L}) with 1 <= P <= {MAX_PATTERNS}, "
                         f"got {currents.shape}")
    P = currents.shape[0]
    scale = np.abs(currents).max(axis=1)
    if np.any(scale == 0):
        raise InputError(f"{key('currents')}: pattern {int(np.argmin(scale)) + 1} injects no current")
    imbalance = np.abs(currents.sum(axis=1)) / scale
    if np.any(imbalance > 1e-8):
        p = int(np.argmax(imbalance))
        raise InputError(f"{key('currents')}: pattern {p + 1} does not sum to zero (sum {currents[p].sum():g}); "
                         "injected currents must be balanced")
    potentials = numeric_array(d.electrode_potentials, key("electrode_potentials"), shape=(P, L), allow_nan=True)
    matrix = numeric_array(d.measurement_matrix, key("measurement_matrix"), ndim=2)
    if matrix.shape[1] != L or not 1 <= matrix.shape[0] <= MAX_PATTERNS:
        raise InputError(f"{key('measurement_matrix')} must have shape (M, {L}), got {matrix.shape}")
    M = matrix.shape[0]
    measurements = numeric_array(d.measurements, key("measurements"), shape=(P, M))
    radius = d.radius
    if not (np.isfinite(radius) and radius > 0):
        raise InputError(f"{key('radius')} must be a positive number, got {radius!r}")
    noise = d.noise_level
    if not (np.isnan(noise) or (np.isfinite(noise) and noise >= 0)):
        raise InputError(f"{key('noise_level')} must be a relative noise level >= 0 (or NaN: unknown), got {noise!r}")
    for name, shape in (("measurements_clean", (P, M)), ("conductivity_image", (None, None))):
        if name in d.extras:
            numeric_array(d.extras[name], key(name), shape=shape, allow_nan=name == "conductivity_image")
    if "conductivity" in d.extras:
        numeric_array(d.extras["conductivity"], key("conductivity"), ndim=1)
    return replace(d, currents=currents, electrode_potentials=potentials, measurements=measurements,
                   measurement_matrix=matrix, electrode_angles=angles, electrode_width=width, contact_impedance=z,
                   radius=float(radius), noise_level=float(noise))
