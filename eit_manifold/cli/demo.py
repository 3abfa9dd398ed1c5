"""``eit-manifold demo``: the main job end to end with the bundled defaults."""

from __future__ import annotations

from pathlib import Path

import typer

from eit_manifold.cli._app import app, echo, is_root


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("results/demo"), help="Output directory."),
    seed: int = typer.Option(0, help="Held-out phantom index, noise and start points."),
) -> None:
    """Simulate a held-out balls phantom (1% noise) and reconstruct it with the bundled atlas."""
    from eit_manifold.pipelines.demo import run_demo

    echo(f"simulating held-out balls phantom {seed} on the default mesh, reconstructing with the balls atlas ...")
    m = run_demo(out, seed, progress=is_root())
    echo(f"relative L2 error {m['relative_l2']:.3f} | PSNR {m['psnr']:.1f} dB | SSIM {m['ssim']:.3f} | "
         f"relative data misfit {m['relative_data_misfit']:.4f} | reconstruction {m['reconstruction_s']:.1f} s")
    echo(f"wrote {out}/data.npz, data.png, reconstruction.png, conductivity.npy, conductivity.xdmf, metrics.json")
