"""File I/O shared by every layer: atomic writes, published output directories, JSON, clear errors.

Output guarantees (see docs/formats.md, "Validation and output guarantees"):

* every file is written to a hidden temporary file in its destination directory and moved into
  place with ``os.replace`` (readers never see half a file, and the move never crosses a
  filesystem), with the mode the umask gives an ordinary file (not ``mkstemp``'s 0600);
* an existing destination that is not a regular file (a directory, a symlink, a device node such
  as ``/dev/null``) is never replaced: that is an :class:`OutputError`;
* a command's output directory is staged as a whole (:func:`staged_dir`) and published when the
  command succeeds, so a failed run leaves nothing behind;
* temporaries carry the prefix :data:`TMP_PREFIX`, the host and the process id; the next run in
  the same directory removes those of processes that no longer exist (a killed run).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: Prefix of every temporary file or directory this package creates beside its outputs.
TMP_PREFIX = ".eitm-tmp"
#: Temporaries of another host (shared filesystem) are only removed when older than this (s).
STALE_AGE_S = 24 * 3600.0


class OutputError(ValueError):
    """An output location that cannot or must not be written (a user error: exit status 2)."""


def umask_mode(base: int = 0o666) -> int:
    """The mode a file created with ``base`` gets under the process's umask (``open`` semantics).

    ``tempfile.mkstemp`` always creates files 0600 (``mkdtemp`` directories 0700); what this module
    publishes is given this mode instead (``base=0o777`` for directories), so that outputs (e.g. in a
    container's mounted directory) are as readable as any other file the user creates.
    """
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def _host() -> str:
    return socket.gethostname().split(".")[0].replace("-", "_") or "host"


def temp_prefix(name: str) -> str:
    """Prefix of a temporary for the output ``name``: hidden, ours, with host and process id."""
    return f"{TMP_PREFIX}-{_host()}-{os.getpid()}-{name}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporaries a killed run left in ``directory``; return what was removed.

    A temporary is stale when its process (host and pid are in its name) no longer exists on this
    host, or, for another host, when it is older than :data:`STALE_AGE_S`. Temporaries of running
    processes (another command writing into the same directory) are left alone.
    """
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    host = _host()
    for entry in entries:
        if not entry.name.startswith(TMP_PREFIX + "-"):
            continue
        parts = entry.name[len(TMP_PREFIX) + 1:].split("-", 2)
        try:
            entry_host, pid = parts[0], int(parts[1])
        except (IndexError, ValueError):
            continue
        try:
            age = time.time() - entry.lstat().st_mtime
        except OSError:
            continue
        if entry_host == host:
            stale = pid != os.getpid() and not _pid_alive(pid)
        else:
            stale = age > STALE_AGE_S
        if not stale:
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _writable_parent(path: Path, what: str) -> None:
    """``path``'s nearest existing ancestor must be a writable directory (it is created below it)."""
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link
            raise OutputError(f"{what} {path}: {parent} is a dangling symbolic link")
        parent = parent.parent
    for ancestor in (path.parent, *path.parent.parents):  # the first existing one that is not a directory
        if ancestor.exists() and not ancestor.is_dir():
            raise OutputError(f"{what} {path}: {ancestor} is not a directory")
        if ancestor == parent:
            break
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is not a directory")
    _probe_writable(parent, f"{what} {path}: directory {parent}")


def _probe_writable(directory: Path, what: str) -> None:
    """Create and remove an empty file in ``directory``: the writability check, for every user.

    Not ``os.access``: it answers from the permission bits, and for root it says yes to directories
    where no file can be made (``/proc``, ``/sys``), so such an ``--out`` failed only at the final
    write, after the whole reconstruction.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".eitm-probe-", dir=directory)
    except OSError as exc:
        raise OutputError(f"{what} is not writable ({exc.strerror})") from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that ``path`` can be written as a file, before any work.

    It must not exist, or be a regular file (not a symlink, directory or device: replacing those
    would destroy them or not do what the user meant), and its directory must exist or be creatable
    and be writable.

    Raises
    ------
    OutputError
        Naming the path and the reason.
    """
    path = Path(path)
    if str(path) in ("", "."):
        raise OutputError(f"{what}: empty path")
    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # the latter: a file on the way, reported below
        mode = None
    except OSError as exc:
        raise OutputError(f"{what} {path}: {exc.strerror}") from exc
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(f"{what} {path} exists and is {_kind(mode)}: refusing to replace it (choose another path)")
    _writable_parent(path, what)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Check that ``path`` can take a command's output files: missing (it is created) or a directory.

    Raises
    ------
    OutputError
        ``path`` is a file, a device or a dangling link, or it (or its parent) is not writable.
    """
    path = Path(path)
    if str(path) == "":
        raise OutputError(f"{what}: empty path")
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"{what} {path} exists and is {_kind(path.stat().st_mode)}, not a directory")
        _probe_writable(path, f"{what} {path}")
    elif path.is_symlink():
        raise OutputError(f"{what} {path} is a dangling symbolic link")
    else:
        _writable_parent(path, what)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    Readers never see a half-written file and a failed write leaves no partial output behind. The
    temporary file lives in the destination directory itself, so the final ``os.replace`` never
    crosses a filesystem (EXDEV), and it is given the mode the umask allows (not mkstemp's 0600).
    A destination that is not a regular file is refused (:func:`check_output_file`).

    Parameters
    ----------
    path : path-like
        Final destination.
    suffix : str, optional
        Suffix of the temporary file (some writers, e.g. ``np.savez``, append their own suffix
        unless the name already ends with it). Defaults to the suffix of ``path``.
    """
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=suffix or path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, umask_mode())
        check_output_file(path)  # nothing non-regular appeared there meanwhile
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def make_temp_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new private temporary directory (our prefix) inside ``parent`` (created)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(parent)
    return Path(tempfile.mkdtemp(dir=parent, prefix=temp_prefix(name)))


def _publish_checks(staging: Path, out: Path) -> None:
    """Every file of ``staging`` may replace its counterpart in ``out`` (checked before moving any)."""
    for src in staging.iterdir():
        dest = out / src.name
        if src.is_dir():
            if dest.exists() or dest.is_symlink():
                if not dest.is_dir():
                    raise OutputError(f"output {dest} exists and is not a directory: refusing to replace it")
                _publish_checks(src, dest)
        else:
            check_output_file(dest, "output")


def _chmod_tree(path: Path) -> None:
    """Give ``path`` and everything below it the modes the umask allows (mkstemp/mkdtemp's are 0600/0700)."""
    dir_mode, file_mode = umask_mode(0o777), umask_mode()
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(Path(root) / d, dir_mode)
            for f in files:
                os.chmod(Path(root) / f, file_mode)
    os.chmod(path, dir_mode if path.is_dir() else file_mode)


def _publish(staging: Path, out: Path) -> None:
    if not out.exists():  # the whole tree appears at once
        _chmod_tree(staging)
        out.parent.mkdir(parents=True, exist_ok=True)  # staged in the nearest existing ancestor
        os.rename(staging, out)
        return
    for src in staging.iterdir():
        dest = out / src.name
        if src.is_dir() and dest.is_dir():
            _publish(src, dest)
        else:
            _chmod_tree(src)
            os.replace(src, dest)


def _existing_ancestor(path: Path) -> Path:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    return parent


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, comm: Any = None) -> Iterator[Path]:
    """Stage a command's output directory; publish all of it together when the block succeeds.

    Yields a hidden temporary directory beside ``out`` (in its nearest existing ancestor: the same
    filesystem, so no EXDEV, and no parent directories are created for a run that fails) to write
    every output into. On success its files replace their counterparts in ``out`` (created if
    missing; other files already in ``out`` are kept), after checking that none of them is
    anything but a regular file; on failure the staging directory is removed and ``out`` is as it
    was. Collective over ``comm`` (an mpi4py communicator; rank 0 creates and publishes). An error
    raised on one process only leaves the staging directory to the abort (the next run removes it).
    """
    out = check_output_dir(out)
    parallel = comm is not None and comm.size > 1
    rank = comm.rank if comm is not None else 0
    staging = None
    if rank == 0:
        staging = make_temp_dir(out.resolve().parent if out.exists() else _existing_ancestor(out), out.name)
    if parallel:
        staging = comm.bcast(str(staging) if staging else None, root=0)
    staging = Path(staging)
    try:
        yield staging
    except BaseException:
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if parallel:
        comm.barrier()
    error = None
    if rank == 0:
        try:
            _publish_checks(staging, out)
            _publish(staging, out)
        except OSError as exc:  # OutputError included
            error = str(exc)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if parallel:
        error = comm.bcast(error, root=0)
    if error is not None:
        exc = OutputError(error)
        exc.collective = True  # raised on every process
        raise exc


class StagedFiles:
    """Several output files written as one transaction (see :func:`staged_files`)."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def path(self, dest: str | os.PathLike, suffix: str | None = None) -> Path:
        """A temporary path beside ``dest`` to write ``dest``'s content to."""
        dest = check_output_file(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(dest.parent)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=temp_prefix(dest.name), suffix=suffix or dest.suffix)
        os.close(fd)
        self._pending.append((Path(tmp), dest))
        return Path(tmp)


@contextlib.contextmanager
def staged_files() -> Iterator[StagedFiles]:
    """Write several files (possibly in different directories) and publish them all or none.

    ``with staged_files() as stage: np.save(stage.path(a), x); plot(stage.path(b))``: each
    temporary sits beside its destination; when the block succeeds every destination is checked
    and then replaced, when it fails every temporary is removed.
    """
    stage = StagedFiles()
    try:
        yield stage
        for _, dest in stage._pending:
            check_output_file(dest)
        mode = umask_mode()
        for tmp, dest in stage._pending:
            os.chmod(tmp, mode)
            os.replace(tmp, dest)
    finally:
        for tmp, _ in stage._pending:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


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


def load_npy(path: str | os.PathLike, what: str = "array file") -> np.ndarray:
    """Read one array from a ``.npy`` file (no pickles); errors name the file.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        It is not a regular file, or not an ``.npy`` array (corrupt, a pickle, another format).
    """
    from eit_manifold.validation import InputError, check_input_file

    path = check_input_file(path, what)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises assorted errors for damaged or foreign files
        raise InputError(f"cannot read {what} {path} as a .npy array: {' '.join(str(exc).split())}") from exc
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{what} {path} holds several arrays (an .npz archive), expected one .npy array")
    return arr
