"""KTC2023 water-tank files (``.mat``): reading, difficulty levels, conversion to the project format.

A KTC measurement file holds ``Inj`` (32 x 76 currents, column j = pattern j), ``Mpat`` (32 x 31,
column m = +1 on electrode m, -1 on electrode m + 1) and ``Uel`` (2356 x 1, pattern-major: the 31
differences of pattern 0, then pattern 1, ...). The reference file ``ref.mat`` uses the keys
``Injref`` and ``Uelref``. Ground truths ``trueK.mat`` hold ``truth`` (256 x 256, values 0/1/2).

**Levels.** The challenge's level ``N`` (1..7) removes electrodes ``1 .. 2(N - 1)``: every
injection pattern that drives a current through one of them and every measurement that involves
one of them (measurement m involves electrodes m and m + 1, so measurements ``1 .. 2(N - 1)`` go).
In the challenge's own files the removed values are NaN; NaN is never used as data here.

**Units.** Currents and voltages are kept as they are in the files (currents of about 1.5, in the
organisers' mA-scale units, voltages in the same scale). The 2-D model with these numbers gives a
background conductivity near 0.8 "S/m" (really a sheet conductance per unit depth); see docs/ktc.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io

from eit_manifold.operators.eit.data_file import MeasurementData
from eit_manifold.operators.eit.geometry import Tank
from eit_manifold.validation import InputError, check_input_file, numeric_array

RADIUS = 0.115  # m
N_ELECTRODES = 32
N_PATTERNS = 76
N_MEASUREMENTS = 31
IMAGE_SHAPE = (256, 256)
LEVELS = range(1, 8)

DATA_KEYS = ("Inj", "Mpat", "Uel")
REFERENCE_KEYS = ("Injref", "Mpat", "Uelref")


@dataclass(frozen=True)
class KTCMeasurement:
    """One KTC measurement after the level's removals.

    Attributes
    ----------
    currents : array (P, 32)
        Injected currents of the kept patterns (rows sum to zero).
    measurement_matrix : array (M, 32)
        Kept difference measurements (rows ``e_m - e_{m+1}``).
    data : array (P, M)
        Measured voltages, all finite.
    level : int
        Difficulty level the removals follow.
    patterns : array (P,)
        Indices (0-based, into the file's 76 patterns) of the kept patterns.
    measurements : array (M,)
        Indices (0-based, into the file's 31 measurements) of the kept measurements.
    source : str
        File the data came from.
    """

    currents: np.ndarray
    measurement_matrix: np.ndarray
    data: np.ndarray
    level: int
    patterns: np.ndarray
    measurements: np.ndarray
    source: str = ""
    extras: dict = field(default_factory=dict, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(P, M): kept patterns by kept measurements."""
        return self.data.shape


def check_level(level: int) -> int:
    """Return ``level`` as an int; raise ``ValueError`` unless it is one of 1..7."""
    if isinstance(level, bool) or int(level) != level or int(level) not in LEVELS:
        raise ValueError(f"level must be an integer in 1..7, got {level!r}")
    return int(level)


def removed_electrodes(level: int) -> np.ndarray:
    """Electrodes (1-based) that level ``level`` removes: ``1 .. 2(level - 1)``."""
    return np.arange(1, 2 * (check_level(level) - 1) + 1)


def _load_mat(path: str | Path) -> dict[str, np.ndarray]:
    path = check_input_file(path, "KTC file")
    try:
        return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    except Exception as exc:  # scipy raises assorted errors for non-MAT input
        raise InputError(f"cannot read {path} as a MATLAB file: {' '.join(str(exc).split())}") from exc


def _require(arrays: dict[str, np.ndarray], keys: tuple[str, ...], path: str | Path) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(
            f"{path} lacks key(s) {', '.join(missing)} (has {', '.join(sorted(arrays)) or 'none'}); "
            f"a KTC file needs {', '.join(keys)}"
        )


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...], path: str | Path) -> np.ndarray:
    return numeric_array(arr, f"{path}: '{name}'", shape=shape)


def read_raw(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a KTC data or reference file without removals.

    Returns
    -------
    currents : array (76, 32)
        Injection patterns, one per row.
    measurement_matrix : array (31, 32)
        Difference measurements, one per row.
    data : array (76, 31)
        Voltages (may hold NaN where the file removed them).

    Raises
    ------
    ValueError
        If keys are missing (the message names them) or shapes are wrong.
    """
    arrays = _load_mat(path)
    keys = REFERENCE_KEYS if "Uelref" in arrays or "Injref" in arrays else DATA_KEYS
    _require(arrays, keys, path)
    inj = _check_shape(keys[0], arrays[keys[0]], (N_ELECTRODES, N_PATTERNS), path)
    mpat = _check_shape("Mpat", arrays["Mpat"], (N_ELECTRODES, N_MEASUREMENTS), path)
    uel = numeric_array(arrays[keys[2]], f"{path}: '{keys[2]}'", finite=False)  # NaN: removed by the file
    if np.any(np.isinf(uel)):
        raise InputError(f"{path}: '{keys[2]}' contains infinite values")
    if uel.size != N_PATTERNS * N_MEASUREMENTS:
        raise ValueError(
            f"{path}: '{keys[2]}' must hold {N_PATTERNS}x{N_MEASUREMENTS} = {N_PATTERNS * N_MEASUREMENTS} values, "
            f"got shape {uel.shape}"
        )
    return inj.T.copy(), mpat.T.copy(), uel.reshape(N_PATTERNS, N_MEASUREMENTS)


def select_level(
    currents: np.ndarray, measurement_matrix: np.ndarray, data: np.ndarray, level: int, source: str = ""
) -> KTCMeasurement:
    """Apply level ``level``'s removals and drop NaN.

    A pattern is dropped if it drives current through a removed electrode, a measurement if its
    row touches a removed electrode. Then measurements that are NaN for every kept pattern, and
    patterns that are NaN for every kept measurement, are dropped too. Any NaN left after that is
    not explained by whole rows or columns and raises ``ValueError``.
    """
    level = check_level(level)
    gone = removed_electrodes(level) - 1
    keep_p = ~np.any(currents[:, gone] != 0, axis=1)
    keep_m = ~np.any(measurement_matrix[:, gone] != 0, axis=1)
    sub = data[np.ix_(keep_p, keep_m)]
    nan = np.isnan(sub)
    col_ok = ~nan.all(axis=0)
    row_ok = ~nan.all(axis=1)
    p_idx = np.flatnonzero(keep_p)[row_ok]
    m_idx = np.flatnonzero(keep_m)[col_ok]
    values = data[np.ix_(p_idx, m_idx)]
    if not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values))
        p, m = p_idx[bad[0, 0]], m_idx[bad[0, 1]]
        raise ValueError(
            f"{source or 'data'}: {len(bad)} non-finite value(s) left at level {level}, e.g. pattern {p + 1} "
            f"measurement {m + 1}; they are not whole removed patterns or measurements (wrong --level?)"
        )
    if p_idx.size == 0 or m_idx.size == 0:
        raise ValueError(f"{source or 'data'}: no data left at level {level}")
    return KTCMeasurement(
        currents=currents[p_idx], measurement_matrix=measurement_matrix[m_idx], data=values,
        level=level, patterns=p_idx, measurements=m_idx, source=source,
    )


def read_ktc(path: str | Path, level: int = 1) -> KTCMeasurement:
    """Read a KTC ``dataK.mat`` or ``ref.mat`` and apply level ``level`` (1..7)."""
    check_level(level)
    return select_level(*read_raw(path), level=level, source=str(path))


def restrict_like(measurement: KTCMeasurement, like: KTCMeasurement) -> KTCMeasurement:
    """Keep only the patterns and measurements that ``like`` kept (e.g. the reference for a data file).

    Raises
    ------
    ValueError
        If ``like`` kept a pattern or measurement that ``measurement`` lacks, or the injections differ.
    """
    pos_p = {int(p): i for i, p in enumerate(measurement.patterns)}
    pos_m = {int(m): i for i, m in enumerate(measurement.measurements)}
    missing = [int(p) + 1 for p in like.patterns if int(p) not in pos_p]
    missing_m = [int(m) + 1 for m in like.measurements if int(m) not in pos_m]
    if missing or missing_m:
        raise ValueError(
            f"{measurement.source} lacks patterns {missing} / measurements {missing_m} that {like.source} has"
        )
    rows = [pos_p[int(p)] for p in like.patterns]
    cols = [pos_m[int(m)] for m in like.measurements]
    currents = measurement.currents[rows]
    if not np.allclose(currents, like.currents, rtol=1e-9, atol=1e-12):
        raise ValueError(f"{measurement.source} and {like.source} use different injection currents")
    return KTCMeasurement(
        currents=currents, measurement_matrix=measurement.measurement_matrix[cols],
        data=measurement.data[np.ix_(rows, cols)], level=like.level, patterns=like.patterns.copy(),
        measurements=like.measurements.copy(), source=measurement.source,
    )


def read_truth(path: str | Path) -> np.ndarray:
    """Read a ground truth ``trueK.mat``: a (256, 256) integer array with values in {0, 1, 2}."""
    arrays = _load_mat(path)
    _require(arrays, ("truth",), path)
    truth = numeric_array(arrays["truth"], f"{path}: 'truth'", shape=IMAGE_SHAPE)
    bad = np.setdiff1d(np.unique(truth), [0, 1, 2])
    if bad.size:
        raise ValueError(f"{path}: 'truth' must hold only 0, 1, 2, found {bad.tolist()}")
    return truth.astype(np.uint8)


def to_measurement_data(measurement: KTCMeasurement, tank: Tank) -> MeasurementData:
    """The project's :class:`MeasurementData` for a KTC measurement on ``tank``.

    The electrode potentials are not observed (only differences are): they are stored as NaN.
    The noise level is unknown and stored as NaN. Level, kept pattern and measurement indices
    and the source file travel in ``extras``.
    """
    P = measurement.currents.shape[0]
    L = tank.n_electrodes
    return MeasurementData(
        currents=measurement.currents,
        electrode_potentials=np.full((P, L), np.nan),
        measurements=measurement.data,
        measurement_matrix=measurement.measurement_matrix,
        electrode_angles=tank.electrode_angles,
        electrode_width=tank.widths.copy(),
        contact_impedance=tank.impedances.copy(),
        radius=float(tank.radius),
        noise_level=float("nan"),
        extras={
            "level": np.array(measurement.level),
            "patterns": measurement.patterns,
            "kept_measurements": measurement.measurements,
            "source": np.array(measurement.source),
        },
    )
