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
    n_out: int = typer.Option(1, help="Phantoms of each out-of-family kind (balls-signed, ellipse, three-disks)."),
    methods: str = typer.Option(None, help="Comma-separated subset of the methods (default: all of "
                                "'atlas K=2,atlas K=1,atlas-mean K=2,gauss-newton,tv,constant'; also "
                                "'atlas-mean K=1'); runs with the same --n, --noise and --seed see the same "
                                "phantoms and noise, so subsets can be run separately."),
) -> None:
    """The paper's EIT experiment: simulate held-out phantoms of the paper's balls family (and
    out-of-family ones) on the fine mesh, reconstruct them with atlas K=2, atlas K=1 (descent), the
    posterior mean on atlas K=2, Gauss-Newton, TV and the best constant on the coarse mesh; write
    results.md, results.json (every per-image value) and reconstructions.png."""
    from eit_manifold.pipelines.report import (
        DEFAULT_METHODS,
        OPTIONAL_METHODS,
        ReportConfig,
        markdown_table,
        run_report,
    )

    chosen = dict(DEFAULT_METHODS)
    if methods is not None:
        known = {**DEFAULT_METHODS, **OPTIONAL_METHODS}
        labels = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in labels if m not in known]
        if unknown or not labels:
            raise ValueError(f"--methods: unknown method(s) {unknown or methods!r}; choose from {list(known)}")
        chosen = {m: known[m] for m in labels}
    config = ReportConfig(n=n, noise=_floats(noise), seed=seed, out=str(out), starts=starts, iterations=iterations,
                          n_out=n_out, methods=chosen)
    summary = run_report(config)
    echo(markdown_table(summary))
    echo(f"wrote {out}/results.md, results.json, reconstructions.png")
