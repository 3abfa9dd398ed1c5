"""``eit-manifold ktc`` and ``ktc-score`` end to end on one training case."""

from __future__ import annotations

import json
import shutil

import numpy as np
from ktc_paths import ktc_dir
from typer.testing import CliRunner

from eit_manifold.cli import app

runner = CliRunner()


def _case_dir(tmp_path, names):
    """A data directory holding copies of the named KTC files."""
    data = tmp_path / "data"
    data.mkdir()
    for name in names:
        shutil.copy(ktc_dir() / name, data / name)
    return data


def test_ktc_linear_one_case(tmp_path):
    data = _case_dir(tmp_path, ("ref.mat", "data1.mat", "true1.mat"))
    out = tmp_path / "out"
    result = runner.invoke(app, ["ktc", str(data), "--method", "linear", "--out", str(out), "--truth", str(data),
                                 "--grid", "24", "--shared-impedance"])
    assert result.exit_code == 0, result.output
    seg = np.load(out / "data1.npy")
    assert seg.shape == (256, 256) and set(np.unique(seg).tolist()) <= {0, 1, 2}
    assert (out / "data1.png").is_file() and (out / "scores.md").is_file()
    scores = json.loads((out / "scores.json").read_text())
    assert 0.3 < scores["cases"][0]["score"] <= 1
    table = (out / "scores.md").read_text()
    assert "| case | level | linear |" in table and f"| data1 | 1 | {scores['cases'][0]['score']:.3f} (" in table
    # ktc-score on the written segmentation reproduces the table's value.
    again = runner.invoke(app, ["ktc-score", str(data / "true1.mat"), str(out / "data1.npy")])
    assert again.exit_code == 0, again.output
    assert f"score {scores['cases'][0]['score']:.4f}" in again.output


def test_ktc_score_identical_and_errors(tmp_path):
    from eit_manifold.ktc.data import read_truth

    np.save(tmp_path / "t.npy", read_truth(ktc_dir() / "true2.mat"))
    result = runner.invoke(app, ["ktc-score", str(ktc_dir() / "true2.mat"), str(tmp_path / "t.npy")])
    assert result.exit_code == 0 and "score 1.0000" in result.output
    bad = runner.invoke(app, ["ktc", str(ktc_dir()), "--level", "9", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "1..7" in bad.output
    bad = runner.invoke(app, ["ktc", str(ktc_dir()), "--method", "magic", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "magic" in bad.output


def test_ktc_learned_one_case_with_the_bundled_network(tmp_path):
    data = _case_dir(tmp_path, ("ref.mat", "data3.mat", "true3.mat"))
    out = tmp_path / "out"
    result = runner.invoke(app, ["ktc", str(data), "--method", "learned", "--out", str(out), "--truth", str(data),
                                 "--shared-impedance"])
    assert result.exit_code == 0, result.output
    seg = np.load(out / "data3.npy")
    assert seg.dtype == np.uint8 and seg.shape == (256, 256) and set(np.unique(seg).tolist()) <= {0, 1, 2}
    assert (out / "data3.png").is_file()
    # data3 holds one conductive target: the network finds it and nothing resistive of size
    assert (seg == 2).sum() > 2000 and (seg == 1).sum() < 200
    assert json.loads((out / "scores.json").read_text())["cases"][0]["score"] > 0.7


def test_ktc_train_small_run_and_resume(tmp_path):
    data = _case_dir(tmp_path, ["ref.mat"])  # no target data needed
    out = tmp_path / "net"
    args = ["ktc-train", str(data), "--out", str(out), "--n-train", "8", "--n-val", "4", "--epochs", "2",
            "--width", "4", "--grid", "24", "--seed", "1", "--prior-scales", "1,4", "--level", "1,7", "--init", "none"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "level 7: validation score" in result.output and "class presence rule" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["levels"] == [1, 7] and config["grid"] == 24 and len(config["loss"]) == 2
    assert config["channels"] == 3 and config["prior_scales"] == [1.0, 4.0] and config["mask_channel"]
    assert [k["level"] for k in config["kept_sets"]] == [1, 7]
    assert len(config["kept_sets"][1]["patterns"]) < len(config["kept_sets"][0]["patterns"])
    assert set(config["validation"]) == {"1", "7"} and config["presence"]["heldout"]["n"] == 2 * 2
    assert (out / "validation.png").is_file() and (out / "sim" / "train_0000.npz").is_file()
    # Running it again reuses the simulations and the finished checkpoint: the same network.
    stamp = (out / "sim" / "train_0000.npz").stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (out / "sim" / "train_0000.npz").stat().st_mtime_ns == stamp
    assert json.loads((out / "config.json").read_text())["sha256"] == config["sha256"]
    from eit_manifold.ktc.segmenter import load_segmenter

    net, meta = load_segmenter(out)
    assert meta["n_train"] == 8 and net.width == 4
    # the network runs at its levels and refuses the others, naming them
    (tmp_path / "c").mkdir()
    case = _case_dir(tmp_path / "c", ("ref.mat", "data1.mat"))
    ok = runner.invoke(app, ["ktc", str(case), "--segmenter", str(out), "--grid", "24", "--level", "7",
                             "--out", str(tmp_path / "o7")])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["ktc", str(case), "--segmenter", str(out), "--grid", "24", "--level", "3",
                              "--out", str(tmp_path / "o3")])
    assert bad.exit_code != 0 and "trained for level(s) [1, 7]" in str(bad.exception)
    bad = runner.invoke(app, [*args[:-1], "1,x"])
    assert bad.exit_code != 0
    bad = runner.invoke(app, [*args, "--threads", "0"])
    assert bad.exit_code != 0 and "--threads must be in [1, 1024], got 0" in str(bad.exception)


def test_ktc_all_levels_one_table(tmp_path):
    """--level all: one calibration (cached for the next run), one table of cases x levels by methods."""
    data = _case_dir(tmp_path, ("ref.mat", "data1.mat", "true1.mat"))
    out = tmp_path / "out"
    args = ["ktc", str(data), "--method", "linear,learned", "--level", "all", "--out", str(out), "--truth", str(data),
            "--shared-impedance"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "calibration (" in result.output  # computed, or cached by an earlier test of the session
    table = (out / "scores.md").read_text()
    assert "| case | level | linear | learned |" in table
    for level in range(1, 8):
        assert f"| data1 | {level} |" in table and (out / f"level{level}.png").is_file()
        assert (out / f"level{level}" / "learned" / "data1.npy").is_file()
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["cases"]) == 14 and set(scores["mean_scores"]) == {"linear", "learned"}
    assert [c["patterns"] for c in scores["cases"] if c["method"] == "linear"] == sorted(
        [c["patterns"] for c in scores["cases"] if c["method"] == "linear"], reverse=True)
    again = runner.invoke(app, [*args[:-1], "--shared-impedance", "--out", str(tmp_path / "again")])
    assert again.exit_code == 0 and "calibration (cached)" in again.output
    assert json.loads((tmp_path / "again" / "scores.json").read_text())["mean_scores"] == scores["mean_scores"]
    bad = runner.invoke(app, ["ktc", str(data), "--level", "0,2", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "'0,2'" in bad.output


def test_ktc_train_help_states_the_default_prior_scales():
    import typer

    from eit_manifold.pipelines.ktc_segmenter import DEFAULT_PRIOR_SCALES

    command = typer.main.get_command(app).commands["ktc-train"]
    (option,) = [p for p in command.params if p.name == "prior_scales"]
    assert f"[default: {','.join(f'{s:g}' for s in DEFAULT_PRIOR_SCALES)}]" in option.help
