"""The calibration of a ``ref.mat`` computed once and reused: a cache keyed by content and settings.

:func:`cached_calibration` returns the :class:`~eit_manifold.ktc.calibration.Calibration` of a
reference measurement, reading it from ``CACHE_DIR/<key>.json`` when that file exists and its
recorded provenance (format, SHA-256 of the reference file, level, kept patterns/measurements and
the calibration settings) equals the request's; otherwise it calibrates and writes the file
atomically (:func:`eit_manifold.io.write_json`). The key is the SHA-256 of that provenance, so a
changed file, level or setting never meets a stale entry; an unreadable or mismatching entry is
recomputed and replaced, never used.

Where: ``$EIT_MANIFOLD_CACHE`` if set, else ``$XDG_CACHE_HOME/eit-manifold`` (``~/.cache/eit-manifold``),
subdirectory ``ktc-calibration``; ``eit-manifold ktc --cache-dir DIR`` overrides it and
``--no-cache`` disables it. The calibrated mesh is not stored: it is remade from the fitted tank
(gmsh, deterministic, 0.5 s).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from eit_manifold.io import read_json, write_json
from eit_manifold.ktc.calibration import Calibration, calibrate, ktc_mesh, ktc_tank
from eit_manifold.ktc.data import KTCMeasurement
from eit_manifold.operators.eit import MeshOptions

# Bump when calibrate()'s algorithm or defaults change: entries of another format are recomputed.
CACHE_FORMAT = "eit-manifold-ktc-calibration/1"
SUBDIR = "ktc-calibration"


def default_cache_dir() -> Path:
    """``$EIT_MANIFOLD_CACHE``, else ``$XDG_CACHE_HOME/eit-manifold`` (``~/.cache/...``), plus ``ktc-calibration``."""
    root = os.environ.get("EIT_MANIFOLD_CACHE")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eit-manifold")
    return Path(root) / SUBDIR


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def calibration_from_dict(d: dict) -> Calibration:
    """Inverse of :meth:`Calibration.to_dict` (plus ``mesh_options``); the mesh is remade on first use."""
    opts = d.get("mesh_options")
    return Calibration(
        sigma=float(d["sigma"]), contact_impedance=np.asarray(d["contact_impedance"], dtype=float),
        residual=float(d["residual"]), electrode_width=np.asarray(d["electrode_width"], dtype=float),
        first_angle=float(d["first_angle"]), orientation=int(d["orientation"]),
        angle_offsets=np.asarray(d["angle_offsets"], dtype=float), offsets=np.asarray(d["offsets"], dtype=float),
        currents=str(d["currents"]), stages=list(d.get("stages", [])),
        **({"mesh_options": MeshOptions(**opts)} if opts else {}),
    )


def _provenance(reference: KTCMeasurement, digest: str, settings: dict) -> dict:
    return {"format": CACHE_FORMAT, "reference_sha256": digest, "level": int(reference.level),
            "patterns": reference.patterns.tolist(), "measurements": reference.measurements.tolist(),
            "settings": settings}


def cached_calibration(
    reference: KTCMeasurement,
    reference_path: str | os.PathLike,
    per_electrode: bool = True,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> tuple[Calibration, bool]:
    """The default calibration (:func:`calibrate`) of ``reference`` read from ``reference_path``.

    Returns
    -------
    (Calibration, bool)
        The calibration and whether it came from the cache.
    """
    def compute() -> Calibration:
        return calibrate(reference, ktc_mesh(ktc_tank()), per_electrode=per_electrode)

    if not use_cache:
        return compute(), False
    from dataclasses import asdict

    from eit_manifold.ktc.calibration import MESH_OPTIONS

    settings = {"per_electrode": bool(per_electrode), "mesh_options": asdict(MESH_OPTIONS)}
    provenance = _provenance(reference, file_digest(reference_path), settings)
    key = hashlib.sha256(json.dumps(provenance, sort_keys=True).encode()).hexdigest()[:32]
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = path / f"{key}.json"
    if entry.is_file():
        try:
            stored = read_json(entry)
            if stored.get("provenance") == provenance:
                return calibration_from_dict(stored["calibration"]), True
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # unreadable or foreign entry: recompute and replace it
    cal = compute()
    path.mkdir(parents=True, exist_ok=True)
    write_json(entry, {"provenance": provenance,
                       "calibration": {**cal.to_dict(), "mesh_options": asdict(cal.mesh_options)}})
    return cal, False
