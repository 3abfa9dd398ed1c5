"""Challenge levels as subsets of the level-1 data, and the electrode mask as an image.

Level ``N`` keeps the patterns and measurements that touch none of electrodes ``1 .. 2(N - 1)``
(:mod:`eit_manifold.ktc.data`). Since every level's data are a subset of level 1's, one calibration
and one simulation per phantom serve every level: :func:`restrict_level` gives a measurement's
level-``N`` part and :func:`level_rows` the positions of those data in the flattened level-1
vector. :func:`removed_map` draws which electrodes are gone as an image channel for the learned
segmenter (one network for all levels, conditioned on the mask, not on a level number).
"""

from __future__ import annotations

import numpy as np

from eit_manifold.ktc.calibration import FIRST_ANGLE, ORIENTATION
from eit_manifold.ktc.data import N_ELECTRODES, KTCMeasurement, check_level, removed_electrodes

MASK_WIDTH = 2 * np.pi / N_ELECTRODES  # angular std of one electrode's blob in removed_map: one spacing


def _kept(measurement: KTCMeasurement, level: int) -> tuple[np.ndarray, np.ndarray]:
    gone = removed_electrodes(level) - 1
    keep_p = ~np.any(measurement.currents[:, gone] != 0, axis=1)
    keep_m = ~np.any(measurement.measurement_matrix[:, gone] != 0, axis=1)
    return keep_p, keep_m


def restrict_level(measurement: KTCMeasurement, level: int) -> KTCMeasurement:
    """The part of ``measurement`` (any level <= ``level``) that level ``level`` keeps."""
    level = check_level(level)
    if level < measurement.level:
        raise ValueError(f"{measurement.source}: level {measurement.level} data hold no level-{level} subset")
    keep_p, keep_m = _kept(measurement, level)
    if not keep_p.any() or not keep_m.any():
        raise ValueError(f"{measurement.source or 'data'}: no data left at level {level}")
    return KTCMeasurement(
        currents=measurement.currents[keep_p], measurement_matrix=measurement.measurement_matrix[keep_m],
        data=measurement.data[np.ix_(keep_p, keep_m)], level=level, patterns=measurement.patterns[keep_p],
        measurements=measurement.measurements[keep_m], source=measurement.source,
    )


def level_rows(full: KTCMeasurement, sub: KTCMeasurement) -> np.ndarray:
    """Positions in ``full.data.ravel()`` (pattern-major) of ``sub``'s data; ``ValueError`` if ``sub``
    has a pattern or measurement that ``full`` lacks."""
    pos_p = {int(p): i for i, p in enumerate(full.patterns)}
    pos_m = {int(m): i for i, m in enumerate(full.measurements)}
    try:
        rows = [pos_p[int(p)] for p in sub.patterns]
        cols = [pos_m[int(m)] for m in sub.measurements]
    except KeyError as exc:
        raise ValueError(f"{sub.source}: pattern/measurement index {exc} is not in {full.source}") from None
    return (np.asarray(rows)[:, None] * full.data.shape[1] + np.asarray(cols)[None, :]).ravel()


def electrode_mask(sub: KTCMeasurement) -> np.ndarray:
    """(32,) bool: electrodes that some kept pattern drives or some kept measurement touches."""
    used = np.any(sub.currents != 0, axis=0) | np.any(sub.measurement_matrix != 0, axis=0)
    return np.asarray(used, dtype=bool)


def removed_map(mask: np.ndarray, size: int) -> np.ndarray:
    """Image (size, size) on [-R, R]^2 (row 0 at the top) of the removed electrodes: at angle ``t``,
    ``sum_l removed_l w_l(t)`` with ``w_l`` a periodic Gaussian of std :data:`MASK_WIDTH` around
    electrode ``l``'s nominal centre, normalised so that all electrodes removed gives 1 everywhere;
    0 outside the disk. Depends only on the angle, so it marks the side of the tank without data."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (N_ELECTRODES,):
        raise ValueError(f"electrode mask must have shape ({N_ELECTRODES},), got {mask.shape}")
    c = (np.arange(size) + 0.5) / size * 2 - 1
    X, Y = np.meshgrid(c, -c)
    t = np.arctan2(Y, X)
    centres = FIRST_ANGLE + ORIENTATION * 2 * np.pi * np.arange(N_ELECTRODES) / N_ELECTRODES
    d = np.angle(np.exp(1j * (t[..., None] - centres)))
    w = np.exp(-0.5 * (d / MASK_WIDTH) ** 2)
    image = (w * ~mask).sum(axis=-1) / w.sum(axis=-1)
    image[np.hypot(X, Y) >= 1] = 0
    return image
