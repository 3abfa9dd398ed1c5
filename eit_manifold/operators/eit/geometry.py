"""Tank geometry: a disk with L electrodes on its boundary, each with its own contact impedance."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def _per_electrode(name: str, value: float | np.ndarray, n: int) -> np.ndarray:
    """Broadcast a scalar or length-``n`` sequence to a float array; reject other lengths."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have length {n} (one per electrode), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


@dataclass(frozen=True)
class Tank:
    """A circular tank with ``n_electrodes`` electrodes on its boundary.

    Parameters
    ----------
    radius : float
        Radius ``R`` of the disk, centred at the origin.
    n_electrodes : int
        Number of electrodes ``L`` (at least 2).
    electrode_width : float or array of shape (L,)
        Arc length of each electrode (same length unit as ``radius``).
    contact_impedance : float or array of shape (L,)
        Contact impedance ``z_l > 0`` of each electrode.
    first_angle : float
        Angle (radians, from the positive x axis) of the centre of electrode 1.
    orientation : {1, -1}
        Numbering direction: 1 counter-clockwise, -1 clockwise.
    angle_offsets : float or array of shape (L,)
        Per-electrode shift (radians, counter-clockwise positive) of each centre from its nominal,
        equally spaced position; 0 (the default) for an ideal tank. Calibrated tanks use it.

    Notes
    -----
    Array-valued fields are stored as tuples (the dataclass stays hashable); :attr:`widths`,
    :attr:`impedances` and :attr:`offsets` give them as read-only arrays.
    Electrode centres are ``theta_l = first_angle + orientation * 2 pi l / L + angle_offsets_l``
    for ``l = 0..L-1`` (equally spaced without offsets). Electrodes may not touch or overlap.
    """

    radius: float = 1.0
    n_electrodes: int = 16
    electrode_width: float | tuple[float, ...] = 0.2
    contact_impedance: float | tuple[float, ...] = 0.01
    first_angle: float = 0.0
    orientation: int = 1
    angle_offsets: float | tuple[float, ...] = 0.0
    _widths: np.ndarray = field(init=False, repr=False, compare=False)
    _impedances: np.ndarray = field(init=False, repr=False, compare=False)
    _offsets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.radius, int | float) and math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"radius must be a positive finite number, got {self.radius!r}")
        if int(self.n_electrodes) != self.n_electrodes or self.n_electrodes < 2:
            raise ValueError(f"n_electrodes must be an integer >= 2, got {self.n_electrodes!r}")
        if self.orientation not in (1, -1):
            raise ValueError(f"orientation must be 1 (counter-clockwise) or -1 (clockwise), got {self.orientation!r}")
        if not math.isfinite(self.first_angle):
            raise ValueError(f"first_angle must be finite, got {self.first_angle!r}")
        widths = _per_electrode("electrode_width", self.electrode_width, self.n_electrodes)
        if np.any(widths <= 0):
            raise ValueError(f"electrode_width must be > 0, got {widths.tolist()}")
        z = _per_electrode("contact_impedance", self.contact_impedance, self.n_electrodes)
        if np.any(z <= 0):
            raise ValueError(f"contact_impedance must be > 0, got {z.tolist()}")
        offsets = _per_electrode("angle_offsets", self.angle_offsets, self.n_electrodes)
        half = widths / (2 * self.radius)  # half-angles
        spacing = 2 * math.pi / self.n_electrodes
        gaps = spacing + self.orientation * (np.roll(offsets, -1) - offsets) - half - np.roll(half, -1)
        if np.any(gaps <= 0):
            l = int(np.argmin(gaps))
            raise ValueError(
                f"electrodes {l + 1} and {(l + 1) % self.n_electrodes + 1} overlap: electrode_width "
                f"{widths[l]:g} is too wide for {self.n_electrodes} electrodes on radius {self.radius:g} "
                f"(widths must stay below 2*pi*R/L = {spacing * self.radius:g}, less any angle_offsets)"
            )
        for arr in (widths, z, offsets):
            arr.setflags(write=False)
        # Array-valued fields are stored as tuples: the frozen dataclass must stay hashable.
        for name in ("electrode_width", "contact_impedance", "angle_offsets"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        object.__setattr__(self, "_widths", widths)
        object.__setattr__(self, "_impedances", z)
        object.__setattr__(self, "_offsets", offsets)

    @property
    def widths(self) -> np.ndarray:
        """Arc lengths of the electrodes, shape (L,)."""
        return self._widths

    @property
    def impedances(self) -> np.ndarray:
        """Contact impedances of the electrodes, shape (L,)."""
        return self._impedances

    @property
    def offsets(self) -> np.ndarray:
        """Angle offsets of the electrode centres from equal spacing (radians), shape (L,)."""
        return self._offsets

    @property
    def electrode_angles(self) -> np.ndarray:
        """Centre angles of the electrodes in radians, shape (L,), in electrode order."""
        l = np.arange(self.n_electrodes)
        return self.first_angle + self.orientation * 2 * np.pi * l / self.n_electrodes + self._offsets

    @property
    def electrode_intervals(self) -> np.ndarray:
        """Start and end angles of each electrode, shape (L, 2), with start < end."""
        half = self.widths / (2 * self.radius)
        c = self.electrode_angles
        return np.stack([c - half, c + half], axis=1)

    def with_impedance(self, contact_impedance: float | np.ndarray) -> Tank:
        """Return a copy of this tank with other contact impedances."""
        return Tank(
            radius=self.radius,
            n_electrodes=self.n_electrodes,
            electrode_width=self.electrode_width,
            contact_impedance=contact_impedance,
            first_angle=self.first_angle,
            orientation=self.orientation,
            angle_offsets=self.angle_offsets,
        )

    def to_dict(self) -> dict:
        """JSON-serialisable description (the inverse of :meth:`from_dict`)."""
        return {
            "radius": float(self.radius),
            "n_electrodes": int(self.n_electrodes),
            "electrode_width": self.widths.tolist(),
            "contact_impedance": self.impedances.tolist(),
            "first_angle": float(self.first_angle),
            "orientation": int(self.orientation),
            "angle_offsets": self.offsets.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Tank:
        """Build a tank from :meth:`to_dict` output."""
        return cls(
            radius=float(d["radius"]),
            n_electrodes=int(d["n_electrodes"]),
            electrode_width=d["electrode_width"],
            contact_impedance=d["contact_impedance"],
            first_angle=float(d.get("first_angle", 0.0)),
            orientation=int(d.get("orientation", 1)),
            angle_offsets=d.get("angle_offsets", 0.0),
        )


def _tuple(value: float | np.ndarray | list) -> float | tuple[float, ...]:
    """Keep scalars scalar; turn sequences into tuples (the dataclass must stay hashable)."""
    arr = np.asarray(value, dtype=float)
    return float(arr) if arr.ndim == 0 else tuple(float(v) for v in arr)
