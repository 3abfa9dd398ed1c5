"""Bad inputs to every command: exit status 2, one line on stderr, no traceback, no files written.

The commands run in this process (``eit_manifold.cli.main`` with a patched ``sys.argv``): every
case must be rejected by the boundary checks, before any meshing, calibration or training, so the
whole table takes seconds. Each case snapshots every file under the test's directory before and
after the run and requires them to be the same.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from ktc_paths import ktc_dir

from eit_manifold.operators.eit.data_file import REQUIRED_KEYS, read_measurements

HERE = Path(__file__).parent


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run ``eit-manifold ARGS`` in this process; return (exit status, stdout, stderr)."""
    from eit_manifold.cli import main

    monkeypatch.setattr(sys, "argv", ["eit-manifold", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.lstat().st_size if not p.is_dir() else -1) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def measurement(tmp_path_factory) -> Path:
    """A valid measurement file (coarse mesh, 16 electrodes)."""
    from eit_manifold.pipelines.simulate import SimulateConfig, simulate

    path = tmp_path_factory.mktemp("valid") / "data.npz"
    simulate(SimulateConfig(mesh_size=0.3, noise=0.01, out=str(path)))
    return path


def _variant(base: Path, target: Path, **changes) -> Path:
    with np.load(base, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(target, **arrays)
    return target


def _ktc_copy(root: Path, **replace: dict) -> Path:
    """A KTC directory with ref.mat and data1.mat, optionally with keys of files replaced."""
    d = root / "ktcdata"
    d.mkdir()
    for name in ("ref.mat", "data1.mat"):
        shutil.copy(ktc_dir() / name, d / name)
    for name, keys in replace.items():
        arrays = {k: v for k, v in scipy.io.loadmat(d / f"{name}.mat").items() if not k.startswith("__")}
        arrays.update(keys)
        scipy.io.savemat(d / f"{name}.mat", arrays)
    return d


def _copy_with(root: Path, src: Path, chart: bool, **changes) -> Path:
    """A copy of a bundled atlas or network directory with entries of its config.json changed."""
    d = root / src.name
    shutil.copytree(src, d)
    config = json.loads((d / "config.json").read_text())
    (config["chart"] if chart else config).update(changes)
    (d / "config.json").write_text(json.dumps(config))
    return d


def _atlas_with(root: Path, **chart_changes) -> Path:
    return _copy_with(root, HERE.parent / "eit_manifold" / "atlases" / "balls", True, **chart_changes)


def _segmenter_with(root: Path, **changes) -> Path:
    return _copy_with(root, HERE.parent / "eit_manifold" / "models" / "ktc-segmenter", False, **changes)


def _other_segmenter_checkpoint(root: Path) -> Path:
    """An output directory holding a ktc-train checkpoint written by another run (other seed's data)."""
    from eit_manifold.ktc.segmenter import SegmenterTrainConfig
    from eit_manifold.manifold.checkpoint import save_training_checkpoint

    out = root / "segout"
    out.mkdir()
    save_training_checkpoint(out / "checkpoint.pt", {
        "provenance": {"format": 1, "reference_sha256": "0" * 64, "level": 1}, "config": asdict(SegmenterTrainConfig(
            epochs=1, width=16, seed=0)), "n": 10, "model": {}, "optimizer": {}, "scheduler": {}, "history": []})
    return out


def _other_train_checkpoint(root: Path) -> Path:
    """A train output directory whose train.json is this job's but whose checkpoint is another run's
    (another training-set size)."""
    from eit_manifold.manifold.checkpoint import save_training_checkpoint
    from eit_manifold.pipelines.train import default_job, job_provenance

    job = default_job("two-circles", n_train=200, epochs=2)
    other = default_job("two-circles", n_train=400, epochs=2)
    out = root / "trainout"
    out.mkdir()
    (out / "train.json").write_text(json.dumps({"job": job.to_dict(), "train_seconds": 1.0}))
    save_training_checkpoint(out / "checkpoint.pt", {"provenance": job_provenance(other),
                                                     "config": asdict(other.train), "epoch": 1})
    return out


def _truncated_cache(root: Path) -> Path:
    out = root / "segout"
    (out / "sim").mkdir(parents=True)
    chunk = out / "sim" / "train_0000.npz"  # ktc-train's simulation chunks
    np.savez(chunk, key=np.array("x"), clean=np.zeros((100, 100)))
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    return out


def _npy(root: Path, name: str, value) -> Path:
    np.save(root / name, value)
    return root / name


def _bytes(root: Path, name: str, data: bytes = b"not what it claims") -> Path:
    (root / name).write_bytes(data)
    return root / name


def _cases():
    """(id, function (tmp, measurement) -> argv, substring of the message)."""
    m = "measurement file"
    bad_measurements = {
        "vector-radius": (dict(radius=np.array([1.0, 2.0])), "'radius' must be a scalar"),
        "empty-electrode-angles": (dict(electrode_angles=np.zeros(0)), "electrode_angles"),
        "string-measurements": (dict(measurements=np.array([["a", "b"]])), "'measurements' must hold numbers"),
        "nan-measurements": (dict(measurements=np.full((16, 16), np.nan)), "non-finite"),
        "negative-noise-level": (dict(noise_level=np.array(-1.0)), "'noise_level' must be a relative noise level"),
        "unbalanced-currents": (dict(currents=np.eye(16)), "does not sum to zero"),
        "zero-width": (dict(electrode_width=np.zeros(16)), "'electrode_width' must be positive"),
        "missing-key": (dict(measurement_matrix=None), "lacks key(s) measurement_matrix"),
        "complex-matrix": (dict(measurement_matrix=np.eye(16) * 1j), "must be real"),
        "tiny-contact-impedance": (dict(contact_impedance=np.full(16, 1e-16)), "double precision"),
    }
    for name, (changes, message) in bad_measurements.items():
        yield (f"reconstruct-{name}", lambda t, ms, c=changes: [
            "reconstruct", "--data", str(_variant(ms, t / "bad.npz", **c)), "--out", str(t / "rec"),
            "--method", "tv"], message)
    yield ("reconstruct-not-npz", lambda t, ms: ["reconstruct", "--data", str(_bytes(t, "x.npz")), "--out",
                                                 str(t / "rec")], f"cannot read {m}")
    yield ("reconstruct-missing-file", lambda t, ms: ["reconstruct", "--data", str(t / "none.npz")], "not found")
    yield ("reconstruct-data-is-dir", lambda t, ms: ["reconstruct", "--data", str(t)], "not a regular file")
    yield ("reconstruct-batch-one-bad", lambda t, ms: [
        "reconstruct", "--batch", "--data", str(ms), "--data", str(_variant(ms, t / "bad.npz", radius=np.array(-1.0))),
        "--out", str(t / "rec"), "--method", "tv"], "'radius' must be a positive number")
    yield ("reconstruct-out-is-file", lambda t, ms: ["reconstruct", "--data", str(ms), "--out",
                                                     str(_npy(t, "f.npy", 1))], "not a directory")
    if Path("/proc/self").is_dir():  # permission bits say writable to root here, yet no file can be made
        yield ("reconstruct-out-in-proc", lambda t, ms: ["reconstruct", "--data", str(ms), "--out",
                                                         "/proc/eitm-out"], "not writable")
    yield ("reconstruct-sigma-order", lambda t, ms: ["reconstruct", "--data", str(ms), "--sigma-min", "2",
                                                     "--sigma-max", "0.5", "--out", str(t / "r")], "smaller than")
    yield ("reconstruct-starts-0", lambda t, ms: ["reconstruct", "--data", str(ms), "--starts", "0"], "--starts")
    yield ("reconstruct-image-size", lambda t, ms: ["reconstruct", "--data", str(ms), "--image-size", "0"],
           "--image-size")
    yield ("reconstruct-atlas-size", lambda t, ms: ["reconstruct", "--data", str(ms), "--image-size", "32",
                                                    "--out", str(t / "r")], "pass --image-size 64")
    yield ("reconstruct-no-atlas", lambda t, ms: ["reconstruct", "--data", str(ms), "--atlas", str(t / "none"),
                                                  "--out", str(t / "r")], "no atlas")
    yield ("reconstruct-huge-atlas", lambda t, ms: ["reconstruct", "--data", str(ms), "--atlas",
                                                    str(_atlas_with(t, hidden=10**7)), "--out", str(t / "r")],
           "hidden must be in")
    yield ("reconstruct-mesh-size-0", lambda t, ms: ["reconstruct", "--data", str(ms), "--mesh-size", "0",
                                                     "--method", "tv"], "--mesh-size")
    yield ("reconstruct-method", lambda t, ms: ["reconstruct", "--data", str(ms), "--method", "magic"], "--method")
    yield ("reconstruct-seed", lambda t, ms: ["reconstruct", "--data", str(ms), "--seed", "-1"], "--seed")

    sim = ["simulate", "--mesh-size", "0.3"]
    yield ("simulate-tiny-z", lambda t, ms: [*sim, "--contact-impedance", "1e-16", "--out", str(t / "s.npz")],
           "below what double precision resolves")
    yield ("simulate-sigma-order", lambda t, ms: [*sim, "--sigma-min", "2", "--sigma-max", "0.5", "--out",
                                                  str(t / "s.npz")], "smaller than")
    yield ("simulate-complex-image", lambda t, ms: [*sim, "--phantom", "image", "--phantom-image",
                                                    str(_npy(t, "c.npy", np.full((8, 8), 0.5 + 0.5j))),
                                                    "--out", str(t / "s.npz")], "must be real")
    yield ("simulate-image-range", lambda t, ms: [*sim, "--phantom", "image", "--phantom-image",
                                                  str(_npy(t, "c.npy", np.full((8, 8), 3.0))), "--out",
                                                  str(t / "s.npz")], "--phantom conductivity")
    yield ("simulate-string-image", lambda t, ms: [*sim, "--phantom", "conductivity", "--phantom-image",
                                                   str(_npy(t, "c.npy", np.array([["a"]]))), "--out",
                                                   str(t / "s.npz")], "must hold numbers")
    yield ("simulate-conductivity-nan-inside", lambda t, ms: [*sim, "--phantom", "conductivity", "--phantom-image",
                                                              str(_npy(t, "c.npy", np.full((8, 8), np.nan))),
                                                              "--out", str(t / "s.npz")], "inside the tank")
    yield ("simulate-plot-device", lambda t, ms: [*sim, "--out", str(t / "s.npz"), "--plot", "/dev/null"],
           "is a device")
    yield ("simulate-plot-under-file", lambda t, ms: [*sim, "--out", str(t / "s.npz"), "--plot",
                                                      str(_npy(t, "f.npy", 1) / "p.png")], "is not a directory")
    yield ("simulate-out-is-dir", lambda t, ms: [*sim, "--out", str(t)], "is a directory")
    yield ("simulate-out-symlink", lambda t, ms: [*sim, "--out", str(_symlink(t))], "symbolic link")
    simulate_options = {  # id: (options, message); every run has --mesh-size 0.3 --out s.npz
        "electrodes-0": (["--electrodes", "0"], "--electrodes"),
        "noise-negative": (["--noise", "-1"], "--noise"),
        "radius-inf": (["--radius", "inf"], "--radius"),
        "wide-electrodes": (["--electrode-width", "1"], "overlap"),
        "opposite-odd": (["--electrodes", "15", "--injection", "opposite"], "even number"),
        "contact-negative": (["--contact-impedance", "-1"], "--contact-impedance"),
        "image-without-file": (["--phantom", "image"], "needs --phantom-image"),
        "image-missing": (["--phantom", "image", "--phantom-image", "nope.npy"], "not found"),
        "background-nan": (["--sigma-background", "nan"], "--sigma-background"),
        "injection": (["--injection", "diagonal"], "--injection must be one of"),
        "phantom": (["--phantom", "blob"], "--phantom must be one of"),
        "noise-text": (["--noise", "abc"], "Invalid value for '--noise'"),
        "unknown-option": (["--no-such-option"], "No such option"),
    }
    for name, (options, message) in simulate_options.items():
        yield (f"simulate-{name}", lambda t, ms, o=options: [*sim, *o, "--out", str(t / "s.npz")], message)
    yield ("simulate-mesh-size-0", lambda t, ms: ["simulate", "--mesh-size", "0", "--out", str(t / "s.npz")],
           "--mesh-size")
    yield ("simulate-missing-mesh", lambda t, ms: ["simulate", "--mesh", "missing.msh", "--out", str(t / "s.npz")],
           "missing.msh")
    yield ("simulate-garbage-mesh", lambda t, ms: ["simulate", "--mesh", str(_bytes(t, "m.msh")), "--out",
                                                   str(t / "s.npz")], "cannot read mesh file")

    yield ("deblur-n-0", lambda t, ms: ["deblur", "--n", "0", "--out", str(t / "d")], "--n")
    yield ("deblur-noise", lambda t, ms: ["deblur", "--noise", "-1", "--out", str(t / "d")], "--noise")
    yield ("deblur-retraction", lambda t, ms: ["deblur", "--retraction", "x", "--out", str(t / "d")],
           "--retraction")
    yield ("deblur-no-atlas", lambda t, ms: ["deblur", "--atlas", str(t / "none"), "--out", str(t / "d")],
           "no atlas")
    yield ("deblur-no-k1", lambda t, ms: ["deblur", "--atlas-k1", str(t / "none"), "--out", str(t / "d")],
           "no atlas")
    yield ("deblur-out-is-file", lambda t, ms: ["deblur", "--out", str(_npy(t, "f.npy", 1))], "not a directory")
    yield ("demo-out-is-file", lambda t, ms: ["demo", "--out", str(_npy(t, "f.npy", 1))], "not a directory")
    yield ("demo-seed", lambda t, ms: ["demo", "--seed", "-3", "--out", str(t / "d")], "--seed")
    yield ("report-n-0", lambda t, ms: ["report", "--n", "0", "--out", str(t / "r")], "--n")
    yield ("report-noise-text", lambda t, ms: ["report", "--noise", "a,b", "--out", str(t / "r")], "--noise")
    yield ("report-noise-negative", lambda t, ms: ["report", "--noise", "-1", "--out", str(t / "r")], "--noise")
    yield ("report-out-is-file", lambda t, ms: ["report", "--out", str(_npy(t, "f.npy", 1))], "not a directory")

    yield ("ktc-grid-0", lambda t, ms: ["ktc", str(ktc_dir()), "--grid", "0", "--out", str(t / "k")], "--grid")
    yield ("ktc-truth-missing", lambda t, ms: ["ktc", str(ktc_dir()), "--truth", str(t / "nonexistent"),
                                               "--out", str(t / "k")], "--truth directory not found")
    yield ("ktc-truth-incomplete", lambda t, ms: ["ktc", str(_ktc_copy(t)), "--truth", str(_ktc_copy_dir(t)),
                                                  "--out", str(t / "k")], "has no true1.mat")
    yield ("ktc-level", lambda t, ms: ["ktc", str(ktc_dir()), "--level", "9", "--out", str(t / "k")], "level")
    yield ("ktc-method", lambda t, ms: ["ktc", str(ktc_dir()), "--method", "x", "--out", str(t / "k")], "--method")
    yield ("ktc-no-dir", lambda t, ms: ["ktc", str(t / "none"), "--out", str(t / "k")], "not found")
    yield ("ktc-string-data", lambda t, ms: ["ktc", str(_ktc_copy(t, data1={"Uel": np.array(["abc"])})), "--out",
                                             str(t / "k")], "'Uel' must hold numbers")
    yield ("ktc-complex-inj", lambda t, ms: ["ktc", str(_ktc_copy(t, ref={"Injref": np.ones((32, 76)) * 1j})),
                                             "--out", str(t / "k")], "must be real")
    yield ("ktc-huge-segmenter", lambda t, ms: ["ktc", str(ktc_dir()), "--method", "learned", "--segmenter",
                                                str(_segmenter_with(t, width=10**7)), "--out", str(t / "k")],
           "width must be in")
    yield ("ktc-segmenter-grid", lambda t, ms: ["ktc", str(ktc_dir()), "--method", "learned", "--grid", "32",
                                                "--out", str(t / "k")], "pass --grid 48")
    yield ("ktc-out-is-file", lambda t, ms: ["ktc", str(ktc_dir()), "--out", str(_npy(t, "f.npy", 1))],
           "not a directory")
    yield ("ktc-score-strings", lambda t, ms: ["ktc-score", str(ktc_dir() / "true1.mat"),
                                               str(_npy(t, "s.npy", np.full((256, 256), "a")))], "must hold numbers")
    yield ("ktc-score-shape", lambda t, ms: ["ktc-score", str(ktc_dir() / "true1.mat"),
                                             str(_npy(t, "s.npy", np.zeros((3, 3))))], "shape")
    yield ("ktc-score-missing", lambda t, ms: ["ktc-score", str(ktc_dir() / "true1.mat"), str(t / "none.npy")],
           "not found")
    yield ("ktc-score-truth-not-mat", lambda t, ms: ["ktc-score", str(_npy(t, "s.npy", 1)),
                                                     str(_npy(t, "s2.npy", np.zeros((256, 256))))],
           "as a MATLAB file")
    kt = ["ktc-train", str(ktc_dir())]
    yield ("ktc-train-width-0", lambda t, ms: [*kt, "--width", "0", "--out", str(t / "k")], "--width")
    yield ("ktc-train-grid-0", lambda t, ms: [*kt, "--grid", "0", "--out", str(t / "k")], "--grid")
    yield ("ktc-train-threads-0", lambda t, ms: [*kt, "--threads", "0", "--out", str(t / "k")], "--threads")
    yield ("ktc-train-n-train-0", lambda t, ms: [*kt, "--n-train", "0", "--out", str(t / "k")], "--n-train")
    yield ("ktc-train-prior-scales", lambda t, ms: [*kt, "--prior-scales", "1,-1", "--out", str(t / "k")],
           "prior scales")
    yield ("ktc-train-truncated-cache", lambda t, ms: [*kt, "--out", str(_truncated_cache(t))],
           "simulation cache")
    yield ("ktc-train-other-checkpoint", lambda t, ms: [*kt, "--n-train", "10", "--epochs", "1", "--out",
                                                        str(_other_segmenter_checkpoint(t))], "another run")
    yield ("ktc-train-no-ref", lambda t, ms: ["ktc-train", str(t), "--out", str(t / "k")], "no ref.mat")

    tr = ["train", "--dataset", "two-circles"]
    yield ("train-lr-huge", lambda t, ms: [*tr, "--lr", "1e30", "--out", str(t / "a")], "lr must be in")
    yield ("train-threads-0", lambda t, ms: [*tr, "--threads", "0", "--out", str(t / "a")], "--threads")
    yield ("train-dataset", lambda t, ms: ["train", "--dataset", "nope", "--out", str(t / "a")], "unknown dataset")
    yield ("train-charts-0", lambda t, ms: [*tr, "--charts", "0", "--out", str(t / "a")], "--charts")
    yield ("train-hidden-huge", lambda t, ms: [*tr, "--hidden", "10000000", "--out", str(t / "a")], "hidden")
    yield ("train-size", lambda t, ms: ["train", "--dataset", "bars", "--size", "12", "--out", str(t / "a")],
           "multiple of 8")
    yield ("train-resume-nothing", lambda t, ms: [*tr, "--resume", "--out", str(t / "a")], "cannot resume")
    yield ("train-resume-other-run", lambda t, ms: [*tr, "--n-train", "200", "--epochs", "2", "--resume", "--out",
                                                    str(_other_train_checkpoint(t))], "written by another run")
    yield ("train-out-is-file", lambda t, ms: [*tr, "--out", str(_npy(t, "f.npy", 1))], "not a directory")
    yield ("atlas-plot-huge", lambda t, ms: ["atlas-plot", str(_atlas_with(t, blocks=10**6))], "blocks must be in")
    yield ("atlas-plot-string-size", lambda t, ms: ["atlas-plot", str(_atlas_with(t, hidden="big"))], "integer")
    yield ("atlas-plot-device", lambda t, ms: ["atlas-plot", "balls", "--out", "/dev/null"], "is a device")
    post = ["posterior", "--operator", "blur", "--heldout", "1"]
    for name, args, message in (
            ("samples", ["--samples", "4"], "--samples must be >= 8"),
            ("chains", ["--chains", "0"], "--chains must be >= 1"),
            ("thin", ["--thin", "0"], "--thin must be >= 1"),
            ("burn-in", ["--burn-in", "-1"], "--burn-in must be >= 0"),
            ("noise", ["--noise-level", "-0.1"], "--noise-level must be > 0"),
            ("sigma", ["--sigma-min", "2", "--sigma-max", "1"], "smaller than"),
            ("seed", ["--seed", "-3"], "--seed must be in"),
            ("heldout", ["--heldout", "-2"], "--heldout must be >= 0"),
            ("operator", ["--operator", "xray"], "--operator must be one of eit, blur")):
        yield (f"posterior-{name}", lambda t, ms, a=args: [*post, *a, "--out", str(t / "p")], message)
    yield ("posterior-eit-needs-data", lambda t, ms: ["posterior", "--heldout", "1", "--out", str(t / "p")],
           "needs --data")


def _ktc_copy_dir(root: Path) -> Path:
    d = root / "truths"
    d.mkdir()
    shutil.copy(ktc_dir() / "true2.mat", d / "true2.mat")
    return d


def _symlink(root: Path) -> Path:
    (root / "target.npz").write_bytes(b"keep me")
    (root / "link.npz").symlink_to(root / "target.npz")
    return root / "link.npz"


CASES = list(_cases())


@pytest.mark.parametrize(("make_args", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line_and_writes_nothing(tmp_path, monkeypatch, capsys, measurement, make_args,
                                                        message):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = make_args(work, measurement)
    before = snapshot(tmp_path)
    code, out, err = run_cli(args, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error"), err
    assert "Traceback" not in err and message in lines[0], lines
    assert snapshot(tmp_path) == before  # nothing written, nothing removed, no temporaries left


def test_measurement_cases_are_valid_apart_from_the_change(measurement):
    # the table's measurement variants differ from a file the reader accepts in one key only
    data = read_measurements(measurement)
    assert data.noise_level == 0.01 and data.measurements.shape == (16, 16)
    assert set(REQUIRED_KEYS) <= set(np.load(measurement).files)


def test_temporaries_of_a_killed_run_are_removed_by_the_next(tmp_path):
    from eit_manifold.io import TMP_PREFIX, save_npy_atomic, temp_prefix

    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    host_part = temp_prefix("x").split("-")[2]
    stale = tmp_path / f"{TMP_PREFIX}-{host_part}-{dead_pid}-out.npy.abc.npy"
    stale.write_bytes(b"half")
    stale_dir = tmp_path / f"{TMP_PREFIX}-{host_part}-{dead_pid}-rec.xyz"
    stale_dir.mkdir()
    (stale_dir / "a").write_bytes(b"1")
    alive = tmp_path / f"{TMP_PREFIX}-{host_part}-{os.getppid()}-other.npy.q.npy"  # a running process's
    alive.write_bytes(b"in use")
    save_npy_atomic(tmp_path / "out.npy", np.zeros(3))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["out.npy", alive.name])


def test_output_writer_refuses_non_regular_files_and_publishes_together(tmp_path):
    from eit_manifold.io import OutputError, save_npy_atomic, staged_dir, write_json

    (tmp_path / "real.npy").write_bytes(b"x")
    (tmp_path / "link.npy").symlink_to(tmp_path / "real.npy")
    with pytest.raises(OutputError, match="symbolic link"):
        save_npy_atomic(tmp_path / "link.npy", np.zeros(2))
    assert (tmp_path / "real.npy").read_bytes() == b"x"
    (tmp_path / "adir.npy").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        save_npy_atomic(tmp_path / "adir.npy", np.zeros(2))
    # a failure inside the block leaves no directory and no temporary
    with pytest.raises(RuntimeError), staged_dir(tmp_path / "new" / "out") as stage:
        write_json(stage / "a.json", {"a": 1})
        raise RuntimeError("late failure")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.npy", "link.npy", "real.npy"]
    # into an existing directory: new files replace old ones, others are kept; a directory in the way
    # of a file stops the publication before anything moves
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    (out / "b.json").mkdir()
    with pytest.raises(OutputError, match="b.json"), staged_dir(out) as stage:
        write_json(stage / "a.json", {"a": 1})
        write_json(stage / "b.json", {"b": 2})
    assert sorted(p.name for p in out.iterdir()) == ["b.json", "keep.txt"]
    (out / "b.json").rmdir()
    with staged_dir(out) as stage:
        write_json(stage / "a.json", {"a": 1})
        write_json(stage / "sub" / "b.json", {"b": 2})
    assert json.loads((out / "sub" / "b.json").read_text()) == {"b": 2}
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "keep.txt", "sub"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.npy", "link.npy", "out", "real.npy"]


@pytest.mark.parametrize(("umask", "outputs_on_tmpfs"), [(0o022, False), (0o077, True)])
def test_commands_with_tmpdir_on_another_filesystem_write_with_the_umask(tmp_path, monkeypatch, capsys, umask,
                                                                         outputs_on_tmpfs):
    """TMPDIR on a tmpfs (/dev/shm) and the outputs on the disk, or the other way round: simulate,
    reconstruct, simulate again from the reconstruction's conductivity.npy; results and file modes."""
    import tempfile

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("/dev/shm must be a separate filesystem for this test")
    shm_dir = Path(tempfile.mkdtemp(dir=shm, prefix="eitm-test-"))
    old = os.umask(umask)
    try:
        for tmpdir, out_root in [(tmp_path, shm_dir) if outputs_on_tmpfs else (shm_dir, tmp_path)]:
            monkeypatch.setenv("TMPDIR", str(tmpdir))
            monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
            data = out_root / "new" / "data.npz"
            rec = out_root / "new" / "rec"
            code, _, err = run_cli(["simulate", "--mesh-size", "0.5", "--out", str(data), "--plot",
                                    str(out_root / "new" / "data.png")], monkeypatch, capsys)
            assert code == 0, err
            code, _, err = run_cli(["reconstruct", "--data", str(data), "--method", "gauss-newton", "--iterations",
                                    "1", "--mesh-size", "0.6", "--image-size", "16", "--out", str(rec)],
                                   monkeypatch, capsys)
            assert code == 0, err
            assert sorted(p.name for p in rec.iterdir()) == ["conductivity.h5", "conductivity.npy",
                                                             "conductivity.xdmf", "metrics.json",
                                                             "reconstruction.png"]
            # what reconstruct writes, simulate reads: S/m with NaN outside the tank
            again = out_root / "new" / "again.npz"
            code, _, err = run_cli(["simulate", "--mesh-size", "0.5", "--phantom", "conductivity",
                                    "--phantom-image", str(rec / "conductivity.npy"), "--out", str(again)],
                                   monkeypatch, capsys)
            assert code == 0, err
            sigma = np.load(rec / "conductivity.npy")
            cells = read_measurements(again).extras["conductivity"]
            assert np.nanmin(sigma) - 1e-9 <= cells.min() and cells.max() <= np.nanmax(sigma) + 1e-9
            for p in (out_root / "new").rglob("*"):
                mode = p.stat().st_mode & 0o777
                assert mode == (0o777 if p.is_dir() else 0o666) & ~umask, (p, oct(mode))
                assert not p.name.startswith(".eitm-tmp"), p
            assert not [p for p in tmpdir.iterdir() if p.name.startswith(".eitm-tmp")]
            shutil.rmtree(out_root / "new")
    finally:
        os.umask(old)
        shutil.rmtree(shm_dir, ignore_errors=True)
