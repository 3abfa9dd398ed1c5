"""Validation at the boundary: every CLI option and every field of every input file, before any work.

The checks here are cheap (no meshing, solving or training), raise :class:`InputError` (a
``ValueError``: the CLI prints it in one line and exits with status 2) whose message names the
option or the file and key, the value and what is required. Readers of the input formats
(measurement files, KTC files, atlas and segmenter directories, images) use the array checks;
the commands run all their checks first (:func:`collective_check` under MPI) and only then start.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator
from numbers import Integral, Real
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

#: Double-precision round-off.
EPS = float(np.finfo(float).eps)
#: Largest relative round-off we accept in a CEM solve from the contact term (see
#: :func:`check_contact_impedance`).
CEM_ROUNDOFF = 1e-6
#: Seeds must fit every generator the package seeds (numpy, torch, Python's ``random``).
MAX_SEED = 2**63 - 1


class InputError(ValueError):
    """A bad option or input-file field (a user error: one line, exit status 2)."""


def fail(what: str, value: Any, requirement: str) -> NoReturn:
    """Raise :class:`InputError` ``"<what> must <requirement>, got <value>"``."""
    raise InputError(f"{what} must {requirement}, got {_show(value)}")


def _show(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(what: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]`` (bounds optional); bools and non-integral floats fail."""
    if isinstance(value, bool) or not isinstance(value, Integral | Real) or not float(value).is_integer():
        fail(what, value, "be an integer")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        fail(what, v, _range_text(lo, hi))
    return v


def _range_text(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"be {'>' if lo_open else '>='} {lo:g}"
    return f"be {'<' if hi_open else '<='} {hi:g}"


def check_float(
    what: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval (``lo_open``: ``lo`` excluded)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        fail(what, value, "be a finite number")
    v = float(value)
    if lo is not None and (v < lo or (lo_open and v == lo)) or hi is not None and (v > hi or (hi_open and v == hi)):
        fail(what, v, _range_text(lo, hi, lo_open, hi_open))
    return v


def check_positive(what: str, value: Any) -> float:
    """A finite number > 0."""
    return check_float(what, value, 0.0, lo_open=True)


def check_seed(what: str, value: Any) -> int:
    """A seed: an integer in ``[0, 2**63 - 1]`` (numpy refuses negative seeds)."""
    return check_int(what, value, 0, MAX_SEED)


def check_choice(what: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise InputError(f"{what} must be one of {', '.join(choices)}, got {_show(value)}")
    return value


def check_sigma_range(sigma_min: Any, sigma_max: Any, names: tuple[str, str] = ("--sigma-min", "--sigma-max")):
    """Conductivities of image values 0 and 1: ``0 < sigma_min < sigma_max``, both finite."""
    lo = check_positive(names[0], sigma_min)
    hi = check_positive(names[1], sigma_max)
    if not lo < hi:
        raise InputError(f"{names[0]} ({lo:g}) must be smaller than {names[1]} ({hi:g})")
    return lo, hi


def check_input_file(path: str | os.PathLike, what: str = "input file") -> Path:
    """An existing, readable regular file (a directory or a missing path fails)."""
    return _check_input(Path(path), what, directory=False)


def check_input_dir(path: str | os.PathLike, what: str = "input directory") -> Path:
    """An existing, readable directory."""
    return _check_input(Path(path), what, directory=True)


def _check_input(path: Path, what: str, directory: bool) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if (path.is_dir() if directory else path.is_file()) is False:
        raise InputError(f"{what} {path} is not {'a directory' if directory else 'a regular file'}")
    if not os.access(path, os.R_OK | (os.X_OK if directory else 0)):
        raise PermissionError(f"{what} {path} is not readable")
    return path


def numeric_array(
    value: Any,
    where: str,
    ndim: int | None = None,
    shape: tuple[int | None, ...] | None = None,
    finite: bool = True,
    allow_nan: bool = False,
    min_size: int = 1,
) -> np.ndarray:
    """``value`` as a float64 array after checking dtype (real numbers), shape and finiteness.

    Parameters
    ----------
    where : str
        Names the file and key in messages, e.g. ``"measurement file a.npz: key 'radius'"``.
    ndim, shape : optional
        Required number of dimensions / shape (``None`` entries: any length).
    finite : bool
        Reject infinities (and NaN unless ``allow_nan``).
    min_size : int
        Fewest elements (empty arrays fail by default).
    """
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"{where} must hold numbers, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        imag = np.imag(arr).ravel() != 0
        if np.any(imag):
            raise InputError(f"{where} must be real, got complex values (e.g. {arr.ravel()[np.argmax(imag)]})")
        arr = np.real(arr)
    if ndim is not None and arr.ndim != ndim:
        raise InputError(f"{where} must have {ndim} dimension(s), got shape {arr.shape}")
    if shape is not None and (arr.ndim != len(shape)
                              or any(s is not None and s != a for s, a in zip(shape, arr.shape, strict=True))):
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise InputError(f"{where} must have shape {want}, got {arr.shape}")
    if arr.size < min_size:
        raise InputError(f"{where} must not be empty, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if finite:
        bad = ~np.isfinite(arr)
        if allow_nan:
            bad &= ~np.isnan(arr)
        if np.any(bad):
            raise InputError(f"{where} contains non-finite values (e.g. {arr.ravel()[np.argmax(bad.ravel())]})")
    return arr


def smallest_contact_impedance(width: Any, sigma: float) -> np.ndarray:
    """The smallest contact impedance double precision resolves against conductivity ``sigma``
    for electrodes of ``width`` (:func:`check_contact_impedance`): ``|e| EPS / (CEM_ROUNDOFF sigma)``."""
    return np.asarray(width, dtype=float) * EPS / (CEM_ROUNDOFF * sigma)


def check_contact_impedance(z: Any, width: Any, sigma_min: float, what: str = "--contact-impedance") -> np.ndarray:
    """Contact impedances that double precision resolves against the conductivity.

    The complete electrode model adds ``|e| / z`` (an electrode's contact conductance) to the
    bulk stiffness, whose scale is ``sigma``. When ``|e| / (z sigma_min)`` exceeds
    ``CEM_ROUNDOFF / EPS`` (about 4.5e9), the bulk term is lost in the round-off of the contact
    term by more than ``CEM_ROUNDOFF`` relative: the potentials are wrong (``z = 1e-16`` doubled
    them), not near the ``z -> 0`` limit. Use a small but resolvable ``z`` for that limit.
    """
    z = np.atleast_1d(np.asarray(z, dtype=float))
    w = np.broadcast_to(np.asarray(width, dtype=float), z.shape)
    if not np.all(np.isfinite(z)) or np.any(z <= 0):
        fail(what, z.tolist() if z.size > 1 else float(z[0]), "be positive and finite")
    z_min = smallest_contact_impedance(w, sigma_min)
    low = z < z_min
    if np.any(low):
        i = int(np.argmax(low))
        raise InputError(
            f"{what} {z[i]:g} is below what double precision resolves against sigma {sigma_min:g}: the contact "
            f"term |e|/z = {w[i] / z[i]:.3g} swamps the conductivity (round-off > {CEM_ROUNDOFF:g}); use z >= "
            f"{float(z_min[i]):.2g} (potentials are already at their z -> 0 limit well above that)"
        )
    return z


@contextlib.contextmanager
def collective_check(comm: Any = None) -> Iterator[None]:
    """Run a block of checks on every MPI process and fail on all of them if any fails.

    The first error (lowest rank) is raised on every process as :class:`InputError` with
    ``collective = True``, so the CLI prints it once (rank 0) and every process exits with status 2
    without an ``MPI_Abort``. In a serial run the block's own exception propagates unchanged.
    """
    if comm is None or comm.size == 1:
        yield
        return
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001  (gathered and re-raised below, on every process)
        error = exc
    messages = comm.allgather(None if error is None else _message(error))
    first = next((m for m in messages if m is not None), None)
    if first is not None:
        exc = InputError(first)
        exc.collective = True
        raise exc from error


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


def one_line(exc: BaseException) -> str:
    """The message of a user error on one line (OSErrors without ``[Errno n]``)."""
    return " ".join(_message(exc).split())
