"""Serial vs ``mpirun -n 2``: distributed mesh, batch split, error propagation, simulate files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.mpi
HERE = Path(__file__).parent
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent))


def _run(n: int, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *args] if n == 1 else [MPIRUN, "-n", str(n), sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def parallel_results(tmp_path_factory):
    assert MPIRUN, "mpirun not found beside the Python interpreter (the dolfinx wheel ships MPICH)"
    out = tmp_path_factory.mktemp("mpi")
    script = str(HERE / "mpi" / "parallel_checks.py")
    for n in (1, 2):
        proc = _run(n, [script, str(out / f"{n}.npz")])
        assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out / "1.npz"), np.load(out / "2.npz")


@pytest.mark.parametrize(
    "key", ["dist_y", "dist_grad", "dist_img_y", "many_solves", "batch_y", "batch_grad", "recon_image"]
)
def test_parallel_equals_serial(parallel_results, key):
    serial, parallel = parallel_results
    assert int(parallel["size"]) == 2
    rel = np.abs(parallel[key] - serial[key]).max() / np.abs(serial[key]).max()
    assert rel <= 1e-10


def test_batch_split_covers_every_item_once(parallel_results):
    _, parallel = parallel_results
    assert sorted(parallel["batch_items"].tolist()) == list(range(11))
    owners = parallel["owners"]
    assert owners[:, 0].tolist() == list(range(11)) and set(owners[:, 1]) == {0, 1}


def test_error_on_one_rank_reaches_all(parallel_results):
    _, parallel = parallel_results
    # a user error becomes one collective error, the same on every process (the CLI prints it once)
    errors = parallel["errors"].tolist()
    assert errors == ["InputError: rank 1: item 3 is bad (collective)"] * 2
    # a bug keeps its type where it happened and reaches the others as RemoteError
    bugs = parallel["bug_errors"].tolist()
    assert len(bugs) == 2 and all("item 3 hit a bug" in e for e in bugs)
    assert bugs[0].startswith("RemoteError: rank 1") and bugs[1].startswith("RuntimeError")


def test_mpirun_simulate_writes_the_serial_file(tmp_path):
    cli = ["-c", "from eit_manifold.cli import main; main()", "simulate", "--mesh-size", "0.1", "--seed", "2"]
    for n in (1, 2):
        proc = _run(n, [*cli, "--out", str(tmp_path / f"{n}.npz")])
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("wrote") == 1  # only rank 0 reports and writes
    a, b = np.load(tmp_path / "1.npz"), np.load(tmp_path / "2.npz")
    for key in ("measurements", "electrode_potentials", "conductivity"):
        assert np.abs(a[key] - b[key]).max() <= 1e-10 * np.abs(a[key]).max()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.npz", "2.npz"]


def test_error_under_mpirun_ends_the_run(tmp_path):
    cli = ["-c", "from eit_manifold.cli import main; main()", "simulate", "--mesh-size", "0.1",
           "--sigma-background", "-1", "--out", str(tmp_path / "x.npz")]
    proc = _run(2, cli, timeout=120)
    # a bad option is found by the checks every process runs: one line from rank 0, a clean exit
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --sigma-background must be > 0, got -1.0"]
    assert not (tmp_path / "x.npz").exists()


def test_mpirun_batch_with_one_bad_file_is_one_line_and_writes_nothing(tmp_path):
    from eit_manifold.pipelines.simulate import SimulateConfig, simulate

    cli = ["-c", "from eit_manifold.cli import main; main()"]
    good = tmp_path / "good.npz"
    simulate(SimulateConfig(mesh_size=0.3, out=str(good)))
    arrays = dict(np.load(good))
    np.savez(tmp_path / "bad.npz", **{**arrays, "radius": np.array([1.0, 2.0])})
    proc = _run(2, [*cli, "reconstruct", "--batch", "--data", str(good), "--data", str(tmp_path / "bad.npz"),
                    "--method", "tv", "--out", str(tmp_path / "out")], timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: measurement file {tmp_path / 'bad.npz'}: key 'radius' must be "
                                                "a scalar, got shape (2,)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "good.npz"]


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# One write per process: two processes' prints under mpirun may interleave between their pieces.
_PRINT_THREADS = ("import os, sys, eit_manifold.cli; sys.stdout.write("
                  "','.join(os.environ.get(v, '-') for v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS')) + '\\n')")


def test_cli_runs_one_blas_thread_per_process_only_under_mpirun():
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    parallel = subprocess.run([MPIRUN, "-n", "2", sys.executable, "-c", _PRINT_THREADS], env=env,
                              capture_output=True, text=True, timeout=120)
    assert parallel.stdout.split() == ["1,1"] * 2, parallel.stderr[-2000:]
    serial = subprocess.run([sys.executable, "-c", _PRINT_THREADS], env=env, capture_output=True, text=True,
                            timeout=120)
    assert serial.stdout.split() == ["-,-"]
    chosen = subprocess.run([MPIRUN, "-n", "2", sys.executable, "-c", _PRINT_THREADS],
                            env={**env, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=120)
    assert chosen.stdout.split() == ["2,1"] * 2


@pytest.mark.parametrize("init", [["--burn-in", "6", "--descent-iter", "2"], ["--init", "smc", "--particles", "32"]],
                         ids=["descent", "smc"])
def test_mpirun_posterior_spreads_chains_and_matches_serial(tmp_path, init):
    cli = ["-c", "from eit_manifold.cli import main; main()", "posterior", "--operator", "blur", "--heldout", "1",
           "--samples", "12", *init, "--chains", "2", "--importance-samples", "16",
           # a fixed thinning: the automatic one rounds an autocorrelation time estimated from 12 draws,
           # which round-off between the two runs can move across an integer
           "--thin", "2"]
    for n in (1, 2):
        proc = _run(n, [*cli, "--out", str(tmp_path / str(n))])
        assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    d1, d2 = (json.loads((tmp_path / str(n) / "diagnostics.json").read_text()) for n in (1, 2))
    assert d2["processes"] == 2 and d1["processes"] == 1
    # chain i runs on rank i % 2 with its own generator, and the potential is evaluated one chain at a
    # time (ChartPotential), so the parallel run draws exactly the serial run's chains
    s1, s2 = (np.load(tmp_path / str(n) / "samples.npz") for n in (1, 2))
    for key in ("latents", "charts", "weights", "images"):
        assert np.array_equal(s1[key], s2[key]), key
    assert d1["chart_probabilities"] == d2["chart_probabilities"]


def test_mpirun_atlas_mean_spreads_chains_and_writes_the_serial_result(tmp_path):
    # atlas-mean under mpirun: every process holds the whole mesh and runs its share of the chains
    # (not the distributed mesh); chain i has its own generator, so the files equal the serial ones
    data = tmp_path / "b.npz"
    proc = _run(1, ["-c", "from eit_manifold.cli import main; main()", "simulate", "--phantom", "balls", "--seed", "3",
                    "--noise", "0.01", "--out", str(data)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = str(HERE / "mpi" / "atlas_mean_checks.py")
    for n in (1, 2):
        proc = _run(n, [script, str(data), str(tmp_path / str(n))])
        assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    m1, m2 = (json.loads((tmp_path / str(n) / "metrics.json").read_text()) for n in (1, 2))
    assert (m1["details"]["processes"], m2["details"]["processes"]) == (1, 2)
    assert m1["details"]["ess_min"] == m2["details"]["ess_min"]
    c1, c2 = (np.load(tmp_path / str(n) / "conductivity.npy") for n in (1, 2))
    assert np.array_equal(c1, c2, equal_nan=True) and np.isfinite(c1).any()
    assert sorted(p.name for p in (tmp_path / "2").iterdir()) == sorted(p.name for p in (tmp_path / "1").iterdir())

