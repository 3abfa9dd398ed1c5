"""The typer application object and the entry point that turns user errors into one-line messages."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="eit-manifold",
    help="Reconstruct conductivities and images on a learned manifold (mixture of VAEs).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """eit-manifold: EIT with the complete electrode model, learned atlases, Riemannian descent."""


# Errors a user can cause: reported in one line, exit status 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, FileExistsError, PermissionError)


def main() -> None:
    """Run the app; print user errors as one line on stderr instead of a traceback."""
    try:
        app()
    except USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
