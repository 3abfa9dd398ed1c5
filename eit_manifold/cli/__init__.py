"""The ``eit-manifold`` command line: a thin typer app.

Each sub-command lives in its own module of this package and registers itself on ``app``; the
commands only parse options and call a pipeline from :mod:`eit_manifold.pipelines`.
"""

from __future__ import annotations

from eit_manifold.cli import deblur as _deblur  # noqa: E402,F401
from eit_manifold.cli import demo as _demo  # noqa: E402,F401
from eit_manifold.cli import ktc as _ktc  # noqa: E402,F401

# Importing the command modules registers their commands on ``app``.
from eit_manifold.cli import reconstruct as _reconstruct  # noqa: E402,F401
from eit_manifold.cli import report as _report  # noqa: E402,F401
from eit_manifold.cli import simulate as _simulate  # noqa: E402,F401
from eit_manifold.cli import train as _train  # noqa: E402,F401
from eit_manifold.cli._app import app, main

__all__ = ["app", "main"]
