"""The typer application object and the entry point that turns user errors into one-line messages."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="eit-manifold",
    help="Reconstruct conductivities and images on a learned manifold (mixture of VAEs).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """eit-manifold: EIT with the complete electrode model, learned atlases, Riemannian descent."""


# Errors a user can cause: reported in one line, exit status 2, no traceback. OSError covers a
# missing, unreadable or unwritable path (a directory named as a file, a full disk, ...).
USER_ERRORS = (ValueError, KeyError, OSError)


def is_root() -> bool:
    """True on the process that reports and writes files (rank 0, or the only process)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD.rank == 0


def echo(message: str) -> None:
    """Print once, from rank 0, under ``mpirun`` as in a serial run."""
    if is_root():
        typer.echo(message)


#: Under mpirun: how long a process with a user error waits for the others to report one too
#: before it aborts the job alone (the boundary checks run on every process at the same point).
PEER_WAIT_S = 5.0


def _all_failed(err_comm, timeout: float) -> bool:
    """Whether every process reached the error path (a non-blocking barrier on a communicator used
    for nothing else, so it can never be matched with a collective call of the work)."""
    import time

    request = err_comm.Ibarrier()
    deadline = time.monotonic() + timeout
    while not request.Test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _user_error(message: str, comm, err_comm, collective: bool) -> None:
    """Print a user error once and exit with status 2; under mpirun rank 0 prints it when every
    process has it (``collective``, or all of them arrive here), otherwise the process prints it
    with its rank and aborts the job (the others may be waiting in a collective call)."""
    if comm.size > 1 and (collective or _all_failed(err_comm, PEER_WAIT_S)):
        if comm.rank == 0:
            print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    prefix = f"error (rank {comm.rank})" if comm.size > 1 else "error"
    print(f"{prefix}: {message}", file=sys.stderr, flush=True)
    if comm.size > 1:
        comm.Abort(2)
    sys.exit(2)


def main() -> None:
    """Run the app; print user errors as one line on stderr instead of a traceback.

    Under ``mpirun`` a user error that every process meets (the boundary checks, gathered batch
    errors) is printed once, by rank 0, and every process exits with status 2; one that only some
    processes meet, and any other error, aborts the whole job (never a hang of the others in a
    collective call), after printing the message with the process's rank.
    """
    import os

    from mpi4py import MPI

    if "OMP_NUM_THREADS" not in os.environ:
        # One torch thread per process unless asked otherwise: intra-op threads oversubscribe the
        # cores under mpirun or beside the MUMPS solves (a small decoder ran 15x slower with 2).
        import torch

        torch.set_num_threads(1)
    from typer import _click

    from eit_manifold.validation import one_line

    comm = MPI.COMM_WORLD
    err_comm = comm.Dup() if comm.size > 1 else None  # reserved for _all_failed
    try:
        # standalone_mode=False: option errors come back to us and are printed in one line too
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except _click.exceptions.NoArgsIsHelpError:
        sys.exit(2)  # the help text has been printed
    except _click.exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "eit-manifold"
        _user_error(f"{exc.format_message()} (see '{where} --help')", comm, err_comm, False)
    except _click.exceptions.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as exc:
        _user_error(one_line(exc), comm, err_comm, getattr(exc, "collective", False))
    except Exception:
        if comm.size > 1:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            comm.Abort(1)
        raise
