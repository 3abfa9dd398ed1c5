"""Toy manifolds with known geometry: samples and exact distances to the manifold.

=============  ======  =====  ===============================================================
name           ambient  d      definition
=============  ======  =====  ===============================================================
two-circles    R^2      1      circles of radius 1 centred at (-1.5, 0) and (1.5, 0)
ring           R^3      2      flat annulus 0.5 <= r <= 1 in the plane x_3 = 0
sphere         R^3      2      unit sphere
torus          R^3      2      major radius 1, minor radius 0.4, axis x_3
swiss-roll     R^3      2      (t cos t, h, t sin t) / 10, t in [1.5 pi, 4.5 pi], h in [-1, 1]
=============  ======  =====  ===============================================================

Samples are uniform with respect to area/length, deterministic by ``(seed, split)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SPLITS = {"train": 0, "test": 1}
CIRCLE_CENTRES = np.array([[-1.5, 0.0], [1.5, 0.0]])
RING_RADII = (0.5, 1.0)
TORUS_RADII = (1.0, 0.4)
ROLL_T = (1.5 * np.pi, 4.5 * np.pi)
ROLL_SCALE = 0.1


def _two_circles(rng: np.random.Generator, n: int) -> np.ndarray:
    phi = rng.uniform(0, 2 * np.pi, n)
    centre = CIRCLE_CENTRES[rng.integers(0, 2, n)]
    return centre + np.stack([np.cos(phi), np.sin(phi)], axis=1)


def _ring(rng: np.random.Generator, n: int) -> np.ndarray:
    r0, r1 = RING_RADII
    r = np.sqrt(rng.uniform(r0**2, r1**2, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    return np.stack([r * np.cos(phi), r * np.sin(phi), np.zeros(n)], axis=1)


def _sphere(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _torus(rng: np.random.Generator, n: int) -> np.ndarray:
    big, small = TORUS_RADII
    out = np.empty((0, 3))
    while len(out) < n:  # rejection sampling: area element is proportional to big + small cos(v)
        u = rng.uniform(0, 2 * np.pi, 2 * n)
        v = rng.uniform(0, 2 * np.pi, 2 * n)
        keep = rng.uniform(0, big + small, 2 * n) < big + small * np.cos(v)
        u, v = u[keep], v[keep]
        rad = big + small * np.cos(v)
        pts = np.stack([rad * np.cos(u), rad * np.sin(u), small * np.sin(v)], axis=1)
        out = np.concatenate([out, pts])
    return out[:n]


def _swiss_roll(rng: np.random.Generator, n: int) -> np.ndarray:
    t0, t1 = ROLL_T
    t = np.sqrt(rng.uniform(t0**2, t1**2, n))  # arc length grows ~ t
    h = rng.uniform(-1, 1, n)
    return np.stack([ROLL_SCALE * t * np.cos(t), h, ROLL_SCALE * t * np.sin(t)], axis=1)


def _dist_two_circles(x: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(x[:, None, :] - CIRCLE_CENTRES[None], axis=2)
    return np.abs(d - 1.0).min(axis=1)


def _dist_ring(x: np.ndarray) -> np.ndarray:
    r = np.linalg.norm(x[:, :2], axis=1)
    radial = np.maximum(0.0, np.maximum(RING_RADII[0] - r, r - RING_RADII[1]))
    return np.hypot(radial, x[:, 2])


def _dist_sphere(x: np.ndarray) -> np.ndarray:
    return np.abs(np.linalg.norm(x, axis=1) - 1.0)


def _dist_torus(x: np.ndarray) -> np.ndarray:
    big, small = TORUS_RADII
    q = np.linalg.norm(x[:, :2], axis=1) - big
    return np.abs(np.hypot(q, x[:, 2]) - small)


def _dist_swiss_roll(x: np.ndarray, n_grid: int = 20001, chunk: int = 512) -> np.ndarray:
    """Distance to the swiss roll: nearest spiral point (dense grid in t) and clipped height."""
    t = np.linspace(*ROLL_T, n_grid)
    spiral = ROLL_SCALE * np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
    xz = x[:, [0, 2]]
    d2 = np.empty(len(x))
    for s in range(0, len(x), chunk):
        diff = xz[s : s + chunk, None, :] - spiral[None]
        d2[s : s + chunk] = np.einsum("ijk,ijk->ij", diff, diff).min(axis=1)
    dh = np.maximum(0.0, np.abs(x[:, 1]) - 1.0)
    return np.sqrt(d2 + dh**2)


_SAMPLERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "two-circles": _two_circles,
    "ring": _ring,
    "sphere": _sphere,
    "torus": _torus,
    "swiss-roll": _swiss_roll,
}
_DISTANCES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "two-circles": _dist_two_circles,
    "ring": _dist_ring,
    "sphere": _dist_sphere,
    "torus": _dist_torus,
    "swiss-roll": _dist_swiss_roll,
}
TOY_DATASETS = tuple(_SAMPLERS)
TOY_DIMS = {
    "two-circles": (2, 1),
    "ring": (3, 2),
    "sphere": (3, 2),
    "torus": (3, 2),
    "swiss-roll": (3, 2),
}


def _check_name(name: str) -> None:
    if name not in _SAMPLERS:
        raise ValueError(f"unknown toy dataset {name!r}; choose from {list(TOY_DATASETS)}")


def make_toy(name: str, n: int, split: str = "train", seed: int = 0) -> np.ndarray:
    """Sample ``n`` points of a toy manifold, float32 ``(n, ambient)``.

    Parameters
    ----------
    name : str
        One of :data:`TOY_DATASETS`.
    n : int
        Number of points.
    split : {"train", "test"}
        The test split uses a different random stream than the train split for the same seed.
    seed : int
        Non-negative seed.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be non-negative, got n={n}, seed={seed}")
    rng = np.random.default_rng([seed, SPLITS[split]])
    return _SAMPLERS[name](rng, n).astype(np.float32)


def distance_to_manifold(name: str, x: np.ndarray) -> np.ndarray:
    """Euclidean distance of points ``x`` ``(n, ambient)`` to the true manifold ``name``."""
    _check_name(name)
    x = np.asarray(x, dtype=np.float64)
    ambient = TOY_DIMS[name][0]
    if x.ndim != 2 or x.shape[1] != ambient:
        raise ValueError(f"points for {name!r} must have shape (n, {ambient}), got {x.shape}")
    return _DISTANCES[name](x)
