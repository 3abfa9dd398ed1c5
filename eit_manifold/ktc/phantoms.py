"""KTC-like phantoms for simulation: one to four targets of physical contrast in the water tank.

A phantom is a list of polygonal targets (vertices in metres, counter-clockwise or not), each
resistive (class 1, plastic: conductivity ``sigma0 * 10^-a``) or conductive (class 2, metal:
``sigma0 * 10^a``). Shapes, drawn with equal probability:

* disks (a 96-gon);
* convex polygons, 3-7 vertices on an ellipse of axis ratio 0.4-1 (squares, triangles, bars);
* star-shaped non-convex polygons, 5-12 vertices at jittered equal angles with radii 0.35-1 times
  the enclosing radius (stars, crosses, L- and C-like shapes);
* smooth non-convex blobs (hand-drawn-like): a radius ``1 + sum_k a_k cos(k t + phi_k)`` over
  harmonics k = 2..5 with random amplitudes, 64 vertices (kidneys, peanuts, rounded crosses).

The number of targets is uniform in 1..:data:`MAX_TARGETS`. Placement reuses the image families'
disjoint-disk sampler (:func:`eit_manifold.data.images.disjoint_disks`) with the ``ktc`` family's
ranges: enclosing radii 0.15-0.38 R (four targets: :data:`FOUR_TARGET_RADII`, so that they fit),
inside the disk of radius 0.92 R, at least 0.06 R apart. Contrast exponents ``a`` are uniform in
[1, 4] (a factor 10 to 10^4: beyond a factor 10 the boundary data saturate, so the range covers
insulators and good conductors without claiming to know the objects' material). These ranges are
set a priori from the challenge's description (plastic and metal objects, one to four per case,
hand-drawn-like shapes among them), not from the four training cases' scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.path import Path as PolygonPath

from eit_manifold.data.images import (
    KTC_GAP,
    KTC_MARGIN,
    KTC_MAX_TARGETS,
    KTC_RADII,
    disjoint_disks,
    ellipse_polygon,
)
from eit_manifold.ktc.data import RADIUS

SHAPES = ("disk", "convex", "star", "blob")
CONTRAST_EXPONENTS = (1.0, 4.0)
DISK_VERTICES = 96
BLOB_VERTICES = 64
MAX_TARGETS = 4
FOUR_TARGET_RADII = (0.12, 0.30)  # in units of R: four targets of the 1-3 range rarely fit (rejection)


@dataclass(frozen=True)
class Target:
    """One target: polygon ``vertices`` (k, 2) in metres, ``label`` 1 (resistive) or 2 (conductive),
    conductivity ``factor`` relative to the water."""

    vertices: np.ndarray
    label: int
    factor: float


def _star(rng: np.random.Generator, radius: float) -> np.ndarray:
    m = int(rng.integers(5, 13))
    t = (np.arange(m) + rng.uniform(-0.3, 0.3, m)) * (2 * np.pi / m) + rng.uniform(0, 2 * np.pi)
    r = radius * rng.uniform(0.35, 1.0, m)
    r[int(rng.integers(m))] = radius  # the enclosing radius is reached
    return np.column_stack([r * np.cos(t), r * np.sin(t)])


def _blob(rng: np.random.Generator, radius: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, BLOB_VERTICES, endpoint=False)
    k = np.arange(2, 6)
    amp = rng.uniform(0, 0.45, k.size) / np.sqrt(k - 1)
    r = 1 + (amp[:, None] * np.cos(k[:, None] * t + rng.uniform(0, 2 * np.pi, k.size)[:, None])).sum(axis=0)
    r = np.maximum(r, 0.3)
    r *= radius / r.max()  # the enclosing radius is reached
    return np.column_stack([r * np.cos(t), r * np.sin(t)])


def _disk(radius: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, DISK_VERTICES, endpoint=False)
    return radius * np.column_stack([np.cos(t), np.sin(t)])


def sample_phantom(rng: np.random.Generator) -> list[Target]:
    """Draw one phantom (module docstring)."""
    n = int(rng.integers(1, MAX_TARGETS + 1))
    centres, radii = disjoint_disks(rng, n, KTC_RADII if n <= KTC_MAX_TARGETS else FOUR_TARGET_RADII, KTC_MARGIN,
                                    KTC_GAP)
    targets = []
    for c, r in zip(centres * RADIUS, radii * RADIUS, strict=True):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if shape == "disk":
            local = _disk(r)
        elif shape == "convex":
            local = ellipse_polygon(rng, r, 0.4)
        elif shape == "star":
            local = _star(rng, r)
        else:
            local = _blob(rng, r)
        label = int(rng.integers(1, 3))
        exponent = rng.uniform(*CONTRAST_EXPONENTS)
        targets.append(Target(c + local, label, float(10.0 ** (exponent if label == 2 else -exponent))))
    return targets


def labels_at(targets: list[Target], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class (0/1/2, uint8) and conductivity factor (1 in the water) at ``points`` (n, 2) in metres."""
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {points.shape}")
    label = np.zeros(len(points), dtype=np.uint8)
    factor = np.ones(len(points))
    for t in targets:
        inside = PolygonPath(t.vertices).contains_points(points)
        label[inside] = t.label
        factor[inside] = t.factor
    return label, factor


def label_image(targets: list[Target], size: int) -> np.ndarray:
    """Classes on a ``size x size`` pixel grid over [-R, R]^2 (row 0 at the top, the truths' frame)."""
    c = -RADIUS + (np.arange(size) + 0.5) * (2 * RADIUS / size)
    X, Y = np.meshgrid(c, c[::-1])
    label, _ = labels_at(targets, np.column_stack([X.ravel(), Y.ravel()]))
    return label.reshape(size, size)
