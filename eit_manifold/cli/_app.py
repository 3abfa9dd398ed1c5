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


def main() -> None:
    """Run the app; print user errors as one line on stderr instead of a traceback.

    Under ``mpirun`` an error on any process aborts the whole job (never a hang of the others
    in a collective call), after printing the message with the process's rank.
    """
    import os

    from mpi4py import MPI

    if "OMP_NUM_THREADS" not in os.environ:
        # One torch thread per process unless asked otherwise: intra-op threads oversubscribe the
        # cores under mpirun or beside the MUMPS solves (a small decoder ran 15x slower with 2).
        import torch

        torch.set_num_threads(1)
    from typer import _click

    comm = MPI.COMM_WORLD
    try:
        # standalone_mode=False: option errors come back to us and are printed in one line too
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except _click.exceptions.NoArgsIsHelpError:
        sys.exit(2)  # the help text has been printed
    except _click.exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "eit-manifold"
        print(f"error: {exc.format_message()} (see '{where} --help')", file=sys.stderr, flush=True)
        sys.exit(2)
    except _click.exceptions.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as exc:
        from eit_manifold.validation import one_line

        if comm.size > 1 and getattr(exc, "collective", False):
            # raised on every process alike (boundary checks, gathered batch errors): say it once
            if comm.rank == 0:
                print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
            sys.exit(2)
        prefix = f"error (rank {comm.rank})" if comm.size > 1 else "error"
        print(f"{prefix}: {one_line(exc)}", file=sys.stderr, flush=True)
        if comm.size > 1:
            comm.Abort(2)  # the other processes may be waiting in a collective call
        sys.exit(2)
    except Exception:
        if comm.size > 1:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            comm.Abort(1)
        raise
