"""The issue's toy validation on a learned atlas (slow: trains the two-circles atlas, ~2 min)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "riemannian_toy.py"


def _toy_module():
    spec = importlib.util.spec_from_file_location("riemannian_toy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_two_circles_descent_is_monotone_stays_on_the_atlas_and_finds_the_closest_point(tmp_path: Path) -> None:
    toy = _toy_module()
    torch.manual_seed(0)
    k, d, _, _ = toy.CASES["two-circles"]
    atlas = toy.train_or_load("two-circles", k, d, 40, tmp_path / "atlases")
    summary = toy.validate("two-circles", atlas, 6, tmp_path)
    assert summary["monotone"]
    assert summary["max_off_manifold"] <= 1e-4
    assert summary["limit_within_projection_error"], summary
    assert (tmp_path / "trajectory_two-circles.png").stat().st_size > 0
