"""3-D tank geometry: a cylinder of water with rectangular electrodes on its wall.

The horizontal layout of the electrodes (centre angles, widths as arc lengths, contact
impedances) is a 2-D :class:`~eit_manifold.operators.eit.geometry.Tank`, the cross-section; the
cylinder adds the height of the water and the vertical extent of each electrode. Electrode
parts above the water level carry no current and are clipped off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from eit_manifold.operators.eit.geometry import Tank


@dataclass(frozen=True)
class CylinderTank:
    """A cylindrical tank filled to ``water_level`` with electrodes ``[z_min, z_max]`` high.

    Parameters
    ----------
    section : Tank
        The horizontal cross-section: radius, electrode count, centre angles, widths (arc
        lengths) and contact impedances.
    height : float
        Height of the tank wall (the water cannot be higher).
    water_level : float, optional
        Height of the water surface (default: ``height``, a full tank). The domain is the water.
    electrode_bottom, electrode_top : float or sequence of L floats
        Vertical extent of each electrode on the wall; defaults: the full wall height. Parts
        above the water level are clipped; an electrode entirely above it is an error.

    Notes
    -----
    The bottom (z = 0) and the water surface are insulated (no current leaves through them).
    With electrodes over the full water depth the potential does not depend on z, and the
    electrode potentials are those of the 2-D tank ``section`` (the verification in the tests).
    """

    section: Tank = field(default_factory=Tank)
    height: float = 1.0
    water_level: float | None = None
    electrode_bottom: float | tuple[float, ...] = 0.0
    electrode_top: float | tuple[float, ...] | None = None
    _z: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.height, int | float) and math.isfinite(self.height) and self.height > 0):
            raise ValueError(f"height must be a positive finite number, got {self.height!r}")
        level = self.height if self.water_level is None else self.water_level
        if not (math.isfinite(level) and 0 < level <= self.height):
            raise ValueError(f"water_level must be in (0, height = {self.height:g}], got {self.water_level!r}")
        object.__setattr__(self, "water_level", float(level))
        L = self.section.n_electrodes
        top = self.height if self.electrode_top is None else self.electrode_top
        lo, hi = (np.broadcast_to(np.asarray(v, dtype=float), (L,)).copy() for v in (self.electrode_bottom, top))
        bad = ~np.isfinite(lo) | ~np.isfinite(hi) | (lo < 0) | (hi > self.height) | (hi <= lo)
        if np.any(bad):
            raise ValueError(
                f"electrode heights must satisfy 0 <= electrode_bottom < electrode_top <= height = {self.height:g}, "
                f"got bottom {lo.tolist()}, top {hi.tolist()}"
            )
        dry = np.flatnonzero(lo >= level)
        if dry.size:
            raise ValueError(
                f"electrodes {(dry + 1).tolist()} lie entirely above the water level {level:g} (bottom "
                f"{lo[dry].tolist()}): they carry no current"
            )
        z = np.stack([lo, np.minimum(hi, level)], axis=1)
        z.setflags(write=False)
        for name, arr in (("electrode_bottom", lo), ("electrode_top", hi)):
            object.__setattr__(self, name, float(arr[0]) if np.all(arr == arr[0]) else tuple(arr.tolist()))
        object.__setattr__(self, "_z", z)

    # The CEM needs only these (the same names as the 2-D Tank's).
    @property
    def n_electrodes(self) -> int:
        return self.section.n_electrodes

    @property
    def impedances(self) -> np.ndarray:
        """Contact impedances, shape (L,)."""
        return self.section.impedances

    @property
    def radius(self) -> float:
        return self.section.radius

    @property
    def widths(self) -> np.ndarray:
        """Electrode widths (arc lengths), shape (L,)."""
        return self.section.widths

    @property
    def electrode_angles(self) -> np.ndarray:
        """Centre angles (radians), shape (L,)."""
        return self.section.electrode_angles

    @property
    def electrode_intervals(self) -> np.ndarray:
        """Angular extent (start, end) of each electrode, shape (L, 2)."""
        return self.section.electrode_intervals

    @property
    def electrode_heights(self) -> np.ndarray:
        """Wetted vertical extent (z_min, z_max) of each electrode, shape (L, 2)."""
        return self._z

    @property
    def electrode_areas(self) -> np.ndarray:
        """Wetted area of each electrode (width times wetted height), shape (L,)."""
        return self.widths * (self._z[:, 1] - self._z[:, 0])

    @property
    def full_height(self) -> bool:
        """True when every electrode spans the whole water depth (the potential is then 2-D)."""
        return bool(np.all(self._z[:, 0] == 0) and np.all(self._z[:, 1] == self.water_level))

    def with_impedance(self, contact_impedance: float | np.ndarray) -> CylinderTank:
        """A copy with other contact impedances."""
        return CylinderTank(self.section.with_impedance(contact_impedance), self.height, self.water_level,
                            self.electrode_bottom, self.electrode_top)

    def to_dict(self) -> dict:
        """JSON-serialisable description (the inverse of :meth:`from_dict`)."""
        return {"section": self.section.to_dict(), "height": float(self.height), "water_level": self.water_level,
                "electrode_bottom": np.broadcast_to(self.electrode_bottom, (self.n_electrodes,)).tolist(),
                "electrode_top": np.broadcast_to(self.electrode_top, (self.n_electrodes,)).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> CylinderTank:
        return cls(Tank.from_dict(d["section"]), float(d["height"]), d.get("water_level"),
                   _tuple(d.get("electrode_bottom", 0.0)), _tuple(d.get("electrode_top")))


def _tuple(v):
    if v is None or np.ndim(v) == 0:
        return v
    return tuple(float(x) for x in v)
