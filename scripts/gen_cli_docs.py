"""Generate docs/cli.md, the command-line reference, from the typer app.

Walks every command registered on ``eit_manifold.cli.app`` (sub-groups too, hidden commands skipped)
and renders each one's help text with the plain click formatter at a fixed width, so the output does
not depend on the terminal. The file is written atomically.

    .venv/bin/python scripts/gen_cli_docs.py            # rewrite docs/cli.md
    .venv/bin/python scripts/gen_cli_docs.py --check    # exit 1 if docs/cli.md is out of date
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "cli.md"
PROG = "eit-manifold"
WIDTH = 100

HEADER = f"""# Command-line reference

Generated from the typer app (`eit_manifold.cli.app`) by `scripts/gen_cli_docs.py`; do not edit by
hand. Regenerate with `.venv/bin/python scripts/gen_cli_docs.py` after changing a command;
`tests/test_docs.py` fails when this file is out of date. The same text is printed by
`{PROG} COMMAND --help`.
"""


def _context(command, name: str, parent=None):
    """A click context at a fixed width (click's own ``Context``, whether vendored by typer or not)."""
    return command.context_class(command, info_name=name, parent=parent, terminal_width=WIDTH, max_content_width=WIDTH)


def _plain_help(command, ctx) -> str:
    """The help text as ``--help`` prints it without rich formatting."""
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None
    return command.get_help(ctx).rstrip()


def iter_commands(group=None, ctx=None, path: tuple[str, ...] = ()):
    """Yield ``(path, command, context)`` for every visible leaf command, sorted by name."""
    if group is None:
        from eit_manifold.cli import app

        group = typer.main.get_command(app)
        ctx = _context(group, PROG, None)
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = _context(command, name, ctx)
        if hasattr(command, "list_commands"):  # a sub-group
            yield from iter_commands(command, sub, (*path, name))
        else:
            yield (*path, name), command, sub


def render() -> str:
    """The whole of docs/cli.md."""
    from eit_manifold.cli import app

    root = typer.main.get_command(app)
    root_ctx = _context(root, PROG, None)
    commands = list(iter_commands(root, root_ctx))
    lines = [HEADER, "| command | what it does |", "|---|---|"]
    for path, command, _ in commands:
        name = " ".join(path)
        summary = command.get_short_help_str(limit=200).replace("|", "\\|")
        lines.append(f"| [`{name}`](#{PROG}-{'-'.join(path)}) | {summary} |")
    lines += ["", f"## `{PROG}`", "", "```text", _plain_help(root, root_ctx), "```"]
    for path, command, ctx in commands:
        lines += ["", f"## `{PROG} {' '.join(path)}`", "", "```text", _plain_help(command, ctx), "```"]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Output file (default: docs/cli.md).")
    parser.add_argument("--check", action="store_true", help="Do not write; exit 1 if the file is out of date.")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: run .venv/bin/python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    write_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
