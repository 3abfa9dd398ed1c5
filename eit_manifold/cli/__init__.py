"""The ``eit-manifold`` command line: a thin typer app.

Each sub-command lives in its own module of this package and registers itself on ``app``; the
commands only parse options and call a pipeline from :mod:`eit_manifold.pipelines`.
"""

from __future__ import annotations

import os


def _one_blas_thread_per_mpi_process() -> None:
    """Under ``mpirun -n N>1`` run each process's BLAS/OpenMP on one thread, unless the user chose.

    Must run before numpy is imported (OpenBLAS reads its thread count when it loads). With the
    default two BLAS threads per process, 2 processes on 2 cores made a TV reconstruction 30x and a
    Gauss-Newton one 8x slower (busy-waiting threads competing for the cores).
    """
    size = os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "1"
    if size.isdigit() and int(size) > 1:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")


_one_blas_thread_per_mpi_process()

from eit_manifold.cli import deblur as _deblur  # noqa: E402,F401
from eit_manifold.cli import demo as _demo  # noqa: E402,F401
from eit_manifold.cli import ktc as _ktc  # noqa: E402,F401
from eit_manifold.cli import posterior as _posterior  # noqa: E402,F401

# Importing the command modules registers their commands on ``app``.
from eit_manifold.cli import reconstruct as _reconstruct  # noqa: E402,F401
from eit_manifold.cli import report as _report  # noqa: E402,F401
from eit_manifold.cli import simulate as _simulate  # noqa: E402,F401
from eit_manifold.cli import train as _train  # noqa: E402,F401
from eit_manifold.cli._app import app, main  # noqa: E402

__all__ = ["app", "main"]
