"""File I/O shared by every layer: atomic writes, JSON, and clear errors for corrupt files."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def umask_mode(base: int = 0o666) -> int:
    """The mode a file created with ``base`` gets under the process's umask (``open`` semantics).

    ``tempfile.mkstemp`` always creates files 0600; files published with :func:`atomic_path` are
    given this mode instead, so that outputs (e.g. in a container's mounted directory) are as readable
    as any other file the user creates.
    """
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    Readers never see a half-written file and a failed write leaves no partial output behind. The
    temporary file lives in the destination directory itself, so the final ``os.replace`` never
    crosses a filesystem (EXDEV), and it is given the mode the umask allows (not mkstemp's 0600).

    Parameters
    ----------
    path : path-like
        Final destination.
    suffix : str, optional
        Suffix of the temporary file (some writers, e.g. ``np.savez``, append their own suffix
        unless the name already ends with it). Defaults to the suffix of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, umask_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (NumPy scalars and arrays are converted)."""

    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot serialise {type(o).__name__} to JSON")

    write_bytes_atomic(path, (json.dumps(obj, indent=2, default=default) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising ``ValueError`` naming the file when it is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt JSON file {path}: {exc}") from exc


def save_npz_atomic(path: str | os.PathLike, **arrays: Any) -> None:
    """Save arrays with ``np.savez_compressed`` atomically (the file appears complete or not at all)."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array with ``np.save`` atomically."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)
