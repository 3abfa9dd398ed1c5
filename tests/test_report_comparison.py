"""scripts/report_comparison.py: merging report runs and the tables built from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_module import load_script


@pytest.fixture(scope="module")
def rc():
    return load_script("scripts/report_comparison.py")


def _item(method: str, index: int, err: float, family: str = "balls", noise: float = 0.01) -> dict:
    return {"method": method, "family": family, "index": index, "noise": noise,
            "metrics": {"relative_l2": err, "psnr": 20.0, "ssim": 0.5, "reconstruction_cpu_s": 1.0}}


def _run(path: Path, methods: list[str], items: list[dict]) -> Path:
    config = {"n": 2, "noise": [0.01], "seed": 0, "methods": {m: ["atlas", "balls"] for m in methods},
              "out_of_family": ["ellipse"], "n_out": 1}
    path.write_text(json.dumps({"config": config, "summary": {}, "items": items}))
    return path


def test_a_later_run_replaces_the_items_of_its_methods_only(rc, tmp_path):
    old = _run(tmp_path / "old.json", ["atlas K=2", "tv"],
               [_item("atlas K=2", 0, 0.3), _item("atlas K=2", 1, 0.3), _item("tv", 0, 0.2), _item("tv", 1, 0.4)])
    new = _run(tmp_path / "new.json", ["atlas K=2"], [_item("atlas K=2", 0, 0.1), _item("atlas K=2", 1, 0.3)])
    items, methods = rc.merge([old, new])
    assert list(methods) == ["atlas K=2", "tv"]
    errors = {(r["method"], r["index"]): r["metrics"]["relative_l2"] for r in items}
    assert errors == {("atlas K=2", 0): 0.1, ("atlas K=2", 1): 0.3, ("tv", 0): 0.2, ("tv", 1): 0.4}
    table = rc.held_out_table(items, list(methods), "atlas K=2")
    # the reference is lower than TV on both phantoms, by 0.1 each
    assert "| 0.01 | tv | 0.3000 ± 0.100 [0.200, 0.400] |" in table and "| 2 / 2 |" in table
    assert "atlas K=2 - tv: -0.1000 (standard error 0.0000, -33.3% of tv's mean), lower on 2 / 2" in table
    out = tmp_path / "merged.json"
    import sys

    argv, sys.argv = sys.argv, ["report_comparison.py", str(old), str(new), "--out", str(out)]
    try:
        rc.main()
    finally:
        sys.argv = argv
    merged = json.loads(out.read_text())
    assert len(merged["items"]) == 4
    # a merged file can itself be merged again (its config records merged_from)
    again = tmp_path / "again.json"
    argv, sys.argv = sys.argv, ["report_comparison.py", str(out), "--out", str(again)]
    try:
        rc.main()
    finally:
        sys.argv = argv
    assert json.loads(again.read_text())["items"] == merged["items"]
    assert merged["summary"]["balls (held-out)"]["0.01"]["atlas K=2"]["relative_l2"]["mean"] == pytest.approx(0.2)
