"""Run under ``mpirun -n N`` (or serially) by tests/test_mpi.py: ``reconstruct --method atlas-mean``.

Short chains (the test is about where the chains run, not about the estimate); the same script
with 1 and 2 processes must write the same files.
"""

from __future__ import annotations

import sys

import eit_manifold.pipelines.reconstruct as rec


def main(data: str, out: str) -> None:
    rec.MEAN_BURN_IN, rec.MEAN_DRAWS = 8, 8
    rec.reconstruct(rec.ReconstructConfig(data=data, method="atlas-mean", starts=2, iterations=2, out=out,
                                          plot=False))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
