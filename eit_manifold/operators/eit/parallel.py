"""MPI helpers for splitting independent work (batch items, phantoms) across processes.

Two modes scale EIT (see docs/mpi.md): the mesh distributed over a communicator (dolfinx, PETSc
and MUMPS do the work, see :mod:`~eit_manifold.operators.eit.cem`), and independent items split
across processes that each hold the whole mesh on ``COMM_SELF``. This module serves the second:
every process runs its share, the results are gathered on every process in item order, and an
error on any process is raised on all of them with that process's message (no hangs).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence

from mpi4py import MPI


class RemoteError(RuntimeError):
    """An exception raised on another MPI process, re-raised here so every process stops."""


def share(n_items: int, comm: MPI.Comm) -> range:
    """The contiguous block of item indices this process works on (blocks differ by at most one)."""
    base, extra = divmod(n_items, comm.size)
    start = comm.rank * base + min(comm.rank, extra)
    return range(start, start + base + (1 if comm.rank < extra else 0))


# Errors a user can cause (bad input): re-raised on every process as one collective error.
_USER_ERRORS = (ValueError, KeyError, OSError)


def allgather_checked[R](comm: MPI.Comm, local: R | None, error: BaseException | None) -> list[R]:
    """Gather one value per process on every process; re-raise the first error of any process.

    A user error (``ValueError``, ``KeyError``, ``OSError``) becomes an
    :class:`~eit_manifold.validation.InputError` with ``collective = True`` on every process (the
    CLI prints it once); any other error is re-raised where it happened and as
    :class:`RemoteError` elsewhere.
    """
    from eit_manifold.validation import InputError, one_line

    message = None
    if error is not None:
        user = isinstance(error, _USER_ERRORS)
        message = (user, f"rank {comm.rank}: {one_line(error) if user else f'{type(error).__name__}: {error}'}")
    gathered = comm.allgather((local, message))
    for _, msg in gathered:
        if msg is not None:
            user, text = msg
            if user:
                exc = InputError(text)
                exc.collective = True
                raise exc from error
            if error is not None:
                raise error
            raise RemoteError(text)
    return [value for value, _ in gathered]


def spmd_map[T, R](fn: Callable[[T], R], items: Sequence[T], comm: MPI.Comm) -> list[R]:
    """Apply ``fn`` to this process's share of ``items``; return all results, in order, everywhere.

    Parameters
    ----------
    fn : callable
        Work on one item (runs on ``COMM_SELF`` resources only: no collective calls inside).
    items : sequence
        All items (the same on every process).
    comm : MPI.Comm
        The processes sharing the work.

    Raises
    ------
    Exception
        The original exception on the process where it happened, :class:`RemoteError` naming
        the process and its message on the others.
    """
    if comm.size == 1:
        return [fn(item) for item in items]
    mine, error = [], None
    try:
        mine = [fn(items[i]) for i in share(len(items), comm)]
    except Exception as exc:  # noqa: BLE001  (every error must reach the other processes)
        error = exc
        if not isinstance(exc, _USER_ERRORS):  # a bug: keep its traceback
            traceback.print_exc()
    parts = allgather_checked(comm, mine, error)
    return [r for part in parts for r in part]

