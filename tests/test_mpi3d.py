"""3-D tank, serial vs ``mpirun -n 2`` (mesh distributed): data and VJPs, direct and iterative."""

from __future__ import annotations

import numpy as np
import pytest
from test_mpi import HERE, MPIRUN, _run

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def results_3d(tmp_path_factory):
    assert MPIRUN, "mpirun not found beside the Python interpreter (the dolfinx wheel ships MPICH)"
    out = tmp_path_factory.mktemp("mpi3d")
    for n in (1, 2):
        proc = _run(n, [str(HERE / "mpi" / "parallel_checks_3d.py"), str(out / f"{n}.npz")])
        assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out / "1.npz"), np.load(out / "2.npz")


@pytest.mark.parametrize("solver", ["direct", "iterative"])
@pytest.mark.parametrize("key", ["y", "grad", "vox_y", "vox_grad"])
def test_parallel_equals_serial_3d(results_3d, solver, key):
    serial, parallel = results_3d
    assert int(parallel["size"]) == 2
    a, b = serial[f"{solver}_{key}"], parallel[f"{solver}_{key}"]
    assert np.abs(b - a).max() <= 1e-8 * np.abs(a).max()


@pytest.mark.parametrize("key", ["y", "grad", "vox_y", "vox_grad"])
def test_iterative_equals_direct_3d(results_3d, key):
    serial, parallel = results_3d
    for r in (serial, parallel):
        assert np.abs(r[f"iterative_{key}"] - r[f"direct_{key}"]).max() <= 1e-8 * np.abs(r[f"direct_{key}"]).max()
