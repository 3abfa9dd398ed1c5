"""benchmarks/posterior_calibration.py: case seeds, resuming, and one short deblurring case."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from script_module import load_script


@pytest.fixture(scope="module")
def pc():
    return load_script("benchmarks/posterior_calibration.py")


def test_case_seeds_keep_seed_zero_and_never_collide(pc):
    assert [pc.case_seed(i, 0) for i in range(5)] == list(range(5))  # the recorded studies
    seeds = {pc.case_seed(i, s) for i in range(0, 1000, 7) for s in range(4)}
    assert len(seeds) == len(range(0, 1000, 7)) * 4


def _argv(out: Path, *extra: str) -> list[str]:
    return ["posterior_calibration.py", "--kind", "sbc", "--cases", "1", "--chains", "2", "--draws", "8",
            "--burn-in", "8", "--importance", "16", "--starts", "1", "--descent-iter", "2", "--out", str(out),
            *extra]


def test_a_short_case_is_written_and_a_resume_with_another_seed_is_refused(pc, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", _argv(tmp_path))
    pc.main()
    rec = json.loads((tmp_path / "cases" / "sbc_000.json").read_text())
    assert rec["seed"] == 0 and rec["case"] == 0
    assert 0.0 <= rec["coverage_pixels"] <= 1.0 and rec["true_chart"] in (0, 1)
    assert np.isclose(sum(rec["chart_probabilities"]), 1.0)
    assert sum(rec["pit_hist"]) == 64 * 64  # every pixel of the deblurring image has a rank
    assert (tmp_path / "sbc_summary.json").is_file() and (tmp_path / "sbc_ranks.png").is_file()
    monkeypatch.setattr(sys, "argv", _argv(tmp_path, "--seed", "1"))
    with pytest.raises(SystemExit) as exc:
        pc.main()
    message = str(exc.value)
    assert "sbc_000.json" in message and "'seed' is 0" in message and "--seed 1" in message
