"""Location of the KTC2023 training files for the tests (../shared/ktc2023 next to the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

KTC_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "ktc2023").resolve()


def ktc_dir() -> Path:
    """The data directory; fails (never skips) when it is missing."""
    if not (KTC_DIR / "ref.mat").is_file():
        pytest.fail(f"KTC2023 data not found at {KTC_DIR} (expected ../shared/ktc2023 beside the repository)")
    return KTC_DIR
