"""``eit-manifold report``: the validation report on held-out and out-of-family phantoms."""

from __future__ import annotations

from pathlib import Path

import typer

from eit_manifold.cli._app import app, echo


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--noise must be comma-separated numbers, got {text!r}") from None


@app.command("report")
def report_command(
    n: int = typer.Option(20, help="Number of held-out balls phantoms."),
    noise: str = typer.Option("0.001,0.01", help="Comma-separated relative noise levels."),
    seed: int = typer.Option(0, help="First held-out phantom index and noise seed."),
    out: Path = typer.Option(Path("report"), help="Output directory."),
    starts: int = typer.Option(8, help="Multi-start of the atlas methods."),
    iterations: int = typer.Option(None, help="Iteration limit of the atlas methods (default 60; baselines: 10)."),
) -> None:
    """Simulate held-out phantoms on the fine mesh, reconstruct them with atlas K=2, atlas K=1,
    Gauss-Newton and TV on the coarse mesh; write results.md, results.json and reconstructions.png."""
    from eit_manifold.pipelines.report import ReportConfig, markdown_table, run_report

    config = ReportConfig(n=n, noise=_floats(noise), seed=seed, out=str(out), starts=starts, iterations=iterations)
    summary = run_report(config)
    echo(markdown_table(summary))
    echo(f"wrote {out}/results.md, results.json, reconstructions.png")
