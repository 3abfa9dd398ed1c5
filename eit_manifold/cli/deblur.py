"""``eit-manifold deblur``: the bars deblurring experiment (atlas K=2 and K=1, Tikhonov, TV)."""

from __future__ import annotations

from pathlib import Path

import typer

from eit_manifold.cli._app import app


@app.command("deblur")
def deblur_command(
    atlas: str = typer.Option("bars", help="Bundled atlas name or atlas directory (K > 1)."),
    atlas_k1: str = typer.Option(None, help="The K=1 atlas (default: '<atlas>-k1'; '' to skip)."),
    noise: float = typer.Option(0.1, help="Noise standard deviation (bar contrast is 0.25)."),
    n: int = typer.Option(20, help="Number of held-out bar images."),
    seed: int = typer.Option(0, help="Seed of the test images, the noise and the multi-starts."),
    starts: int = typer.Option(8, help="Prior samples per atlas reconstruction."),
    max_iter: int = typer.Option(60, help="Iteration limit of the Riemannian descent."),
    retraction: str = typer.Option("projection", help="Retraction: projection or chart."),
    n_val: int = typer.Option(
        20, help="Validation bars (training split) that choose the Tikhonov and TV parameters."
    ),
    out: Path = typer.Option(Path("results/deblur"), help="Output directory."),
) -> None:
    """Deblur held-out bar images on the learned atlas and with classical baselines."""
    from eit_manifold.pipelines.deblur import DeblurConfig, markdown_table, run_deblur

    cfg = DeblurConfig(
        atlas=atlas, atlas_k1=atlas_k1, noise=noise, n=n, seed=seed, n_starts=starts,
        max_iter=max_iter, retraction=retraction, n_val=n_val,
    )
    results = run_deblur(cfg, out)
    typer.echo(markdown_table(results["methods"], cfg))
    typer.echo(
        f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'reconstructions.png'}, "
        f"{out / 'out_of_family.png'}"
    )
