"""Conductivity phantoms evaluated on the cells of a tank mesh."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ellipse:
    """An elliptic inclusion of constant conductivity (a disk when both semi-axes are equal).

    Parameters
    ----------
    center : (float, float)
        Centre (x, y).
    semi_axes : (float, float)
        Semi-axes along the rotated x and y directions (> 0).
    sigma : float
        Conductivity inside (> 0).
    angle : float
        Rotation in radians, counter-clockwise.
    """

    center: tuple[float, float]
    semi_axes: tuple[float, float]
    sigma: float
    angle: float = 0.0

    def __post_init__(self) -> None:
        if min(self.semi_axes) <= 0:
            raise ValueError(f"ellipse semi-axes must be > 0, got {self.semi_axes}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"inclusion conductivity must be positive and finite, got {self.sigma!r}")

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean mask of the points (n, 2) inside the ellipse."""
        d = points - np.asarray(self.center)
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (c * d[:, 0] + s * d[:, 1]) / self.semi_axes[0]
        v = (-s * d[:, 0] + c * d[:, 1]) / self.semi_axes[1]
        return u**2 + v**2 <= 1.0

    def to_dict(self) -> dict:
        return {
            "center": list(self.center), "semi_axes": list(self.semi_axes), "sigma": self.sigma, "angle": self.angle
        }


def disk(center: tuple[float, float], radius: float, sigma: float) -> Ellipse:
    """A disk-shaped inclusion."""
    return Ellipse(center, (radius, radius), sigma)


def inclusion_conductivity(
    centroids: np.ndarray, background: float, inclusions: list[Ellipse] | tuple[Ellipse, ...]
) -> np.ndarray:
    """Per-cell conductivity: ``background`` with the inclusions painted in order (later wins).

    Cells are assigned by their centroid.
    """
    if not (math.isfinite(background) and background > 0):
        raise ValueError(f"background conductivity must be positive and finite, got {background!r}")
    sigma = np.full(centroids.shape[0], float(background))
    for inc in inclusions:
        sigma[inc.contains(centroids)] = inc.sigma
    return sigma


def default_disks(radius: float, background: float = 1.0) -> list[Ellipse]:
    """The default two-disk phantom: one conductive and one resistive disk."""
    return [
        disk((0.35 * radius, 0.3 * radius), 0.25 * radius, 2.0 * background),
        disk((-0.4 * radius, -0.25 * radius), 0.2 * radius, 0.3 * background),
    ]


def random_inclusions(kind: str, rng: np.random.Generator, radius: float = 1.0,
                      low: float = 0.36, high: float = 1.64) -> list[Ellipse]:
    """Phantoms outside the ``balls`` family, drawn from ``rng``.

    ``disk``: one disk; ``three-disks``: three disjoint disks; ``ellipse``: one rotated ellipse.
    Inclusions are conductive (``high``) or resistive (``low``) at random, inside 0.9 R.
    """
    def centre(r: float) -> tuple[float, float]:
        rho = (0.9 * radius - r) * math.sqrt(rng.uniform())
        phi = rng.uniform(0, 2 * math.pi)
        return (rho * math.cos(phi), rho * math.sin(phi))

    def value() -> float:
        return float(high if rng.uniform() < 0.5 else low)

    if kind == "disk":
        r = rng.uniform(0.15, 0.4) * radius
        return [disk(centre(r), r, value())]
    if kind == "three-disks":
        disks: list[Ellipse] = []
        while len(disks) < 3:
            r = rng.uniform(0.1, 0.25) * radius
            c = centre(r)
            if all(math.dist(c, d.center) >= r + d.semi_axes[0] + 0.05 * radius for d in disks):
                disks.append(disk(c, r, value()))
        return disks
    if kind == "ellipse":
        a, b = rng.uniform(0.25, 0.45) * radius, rng.uniform(0.08, 0.18) * radius
        return [Ellipse(centre(a), (a, b), value(), float(rng.uniform(0, math.pi)))]
    raise ValueError(f"unknown random phantom {kind!r}: choose disk, three-disks or ellipse")
