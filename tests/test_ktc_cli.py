"""``eit-manifold ktc`` and ``ktc-score`` end to end on one training case."""

from __future__ import annotations

import json
import shutil

import numpy as np
from ktc_paths import ktc_dir
from typer.testing import CliRunner

from eit_manifold.cli import app

runner = CliRunner()


def test_ktc_linear_one_case(tmp_path):
    src = ktc_dir()
    data = tmp_path / "data"
    data.mkdir()
    for name in ("ref.mat", "data1.mat", "true1.mat"):
        shutil.copy(src / name, data / name)
    out = tmp_path / "out"
    result = runner.invoke(app, ["ktc", str(data), "--method", "linear", "--out", str(out), "--truth", str(data),
                                 "--grid", "24", "--shared-impedance"])
    assert result.exit_code == 0, result.output
    seg = np.load(out / "data1.npy")
    assert seg.shape == (256, 256) and set(np.unique(seg).tolist()) <= {0, 1, 2}
    assert (out / "data1.png").is_file() and (out / "scores.md").is_file()
    scores = json.loads((out / "scores.json").read_text())
    assert 0.3 < scores["cases"][0]["score"] <= 1
    assert "| data1 | linear | 1 |" in (out / "scores.md").read_text()
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
    assert bad.exit_code != 0 and "1..7" in str(bad.exception)
    bad = runner.invoke(app, ["ktc", str(ktc_dir()), "--method", "magic", "--out", str(tmp_path / "o")])
    assert bad.exit_code != 0 and "magic" in str(bad.exception)
