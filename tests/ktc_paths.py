"""Location of the KTC2023 training files for the tests (vendored under datasets/ktc2023)."""

from __future__ import annotations

from pathlib import Path

import pytest

KTC_DIR = Path(__file__).resolve().parents[1] / "datasets" / "ktc2023"


def ktc_dir() -> Path:
    """The data directory; fails (never skips) when it is missing."""
    if not (KTC_DIR / "ref.mat").is_file():
        pytest.fail(f"KTC2023 data not found at {KTC_DIR} (vendored in the repository: datasets/ktc2023)")
    return KTC_DIR
