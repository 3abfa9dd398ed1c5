"""Run under ``mpirun -n N`` (or serially) by tests/test_mpi.py: ``reconstruct --method atlas-mean``.

Short chains (the test is about where the chains run, not about the estimate); the same script
with 1 and 2 processes must write the same files.
"""

from __future__ import annotations

import os
import sys

# One BLAS/OpenMP and torch thread per process, as the command line sets them (eit_manifold.cli):
# bit-for-bit equality holds at equal thread counts only, and a bare script would take every core
# serially but fewer per process under mpirun, so threaded reductions would round differently.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import torch  # noqa: E402

import eit_manifold.pipelines.reconstruct as rec  # noqa: E402

torch.set_num_threads(1)


def main(data: str, out: str) -> None:
    rec.MEAN_BURN_IN, rec.MEAN_DRAWS = 8, 8
    rec.reconstruct(rec.ReconstructConfig(data=data, method="atlas-mean", starts=2, iterations=2, out=out,
                                          plot=False))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
