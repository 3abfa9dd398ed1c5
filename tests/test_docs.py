"""The generated CLI reference is up to date, and every command's ``--help`` is usable."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eit_manifold.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
COMMANDS = [(path, command) for path, command, _ in gen.iter_commands()]


def test_cli_reference_is_up_to_date(tmp_path):
    out = tmp_path / "cli.md"
    assert gen.main(["--out", str(out)]) == 0
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == current, (
        "docs/cli.md is out of date: run .venv/bin/python scripts/gen_cli_docs.py"
    )


def test_every_command_is_documented():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert COMMANDS, "no commands registered on the app"
    for path, _ in COMMANDS:
        assert f"## `eit-manifold {' '.join(path)}`" in text


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_subcommand_help(path):
    command = dict(COMMANDS)[path]
    assert (command.help or "").strip(), f"{' '.join(path)} has no description"
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert command.help.strip().split()[0] in result.output


def test_console_script_help():
    script = Path(sys.executable).parent / "eit-manifold"
    if not script.exists():
        pytest.skip("eit-manifold console script not installed next to the interpreter")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "simulate" in result.stdout
