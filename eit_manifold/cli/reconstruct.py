"""``eit-manifold reconstruct``: reconstruct a conductivity from a measurement file."""

from __future__ import annotations

from pathlib import Path

import typer

from eit_manifold.cli._app import app, echo, is_root


@app.command("reconstruct")
def reconstruct_command(
    data: list[Path] = typer.Option(
        ..., "--data", help="Measurement file (.npz) from simulate or in the documented format; repeat for a batch."
    ),
    batch: bool = typer.Option(
        False, "--batch", help="Several files: split them across MPI processes (each on its own mesh copy)."
    ),
    out: Path = typer.Option(Path("reconstruction"), help="Output directory."),
    method: str = typer.Option(
        "atlas", help="atlas (Riemannian descent on a learned atlas), atlas-mean (posterior mean on the atlas: "
        "lower L2 error at 1 % noise, about 5x the time; needs the file's noise level), gauss-newton, tv, or "
        "constant (best homogeneous fit); 3-D files: gauss-newton or tv."),
    atlas: str = typer.Option("balls", help="Bundled atlas name (balls, balls-k1, ...) or an atlas directory."),
    starts: int = typer.Option(8, help="Multi-start: prior samples the atlas descent starts from."),
    iterations: int = typer.Option(None, help="Iteration limit (default: 60 descent steps; atlas-mean: 20 descent "
                                   "steps per chain start; 10 Gauss-Newton steps)."),
    mesh: str = typer.Option(None, help="Reconstruction mesh: preset (coarse, default, fine) or .msh file."),
    mesh_size: float = typer.Option(None, help="Element size of the reconstruction mesh (instead of --mesh)."),
    sigma_min: float = typer.Option(0.2, help="Conductivity of image value 0."),
    sigma_max: float = typer.Option(1.8, help="Conductivity of image value 1."),
    image_size: int = typer.Option(64, help="Image size (must match the atlas)."),
    seed: int = typer.Option(0, help="Random seed (start points)."),
    warm_start: bool = typer.Option(
        True, help="Atlas: add a start per chart at its projection of a 3-step Gauss-Newton reconstruction."
    ),
    prune: bool = typer.Option(
        True, help="Atlas: halve the surviving starts after descent iterations 10 and 20 (successive halving)."
    ),
    select: str = typer.Option(
        "posterior", help="Atlas: keep the end point of highest posterior density under the file's noise level "
        "(posterior; files without a noise level fall back to objective) or of lowest misfit (objective)."),
) -> None:
    """Reconstruct a conductivity image; writes conductivity.npy/.xdmf, reconstruction.png, metrics.json."""
    from eit_manifold.pipelines.reconstruct import ReconstructConfig, reconstruct, reconstruct_batch

    config = ReconstructConfig(
        data=str(data[0]), out=str(out), method=method, atlas=atlas, starts=starts, iterations=iterations,
        mesh=mesh, mesh_size=mesh_size, sigma_min=sigma_min, sigma_max=sigma_max, image_size=image_size, seed=seed,
        progress=is_root(), warm_start=warm_start, prune=prune, select=select,
    )
    if len(data) > 1 or batch:
        for item in reconstruct_batch([str(d) for d in data], config):
            echo(f"{item['data']}: {_summary(item['metrics'])}; wrote {item['out']}/")
        return
    result = reconstruct(config)
    echo(f"{method}: {_summary(result['metrics'])}; wrote {out}/")


def _summary(m: dict) -> str:
    keys = ("relative_l2", "psnr", "ssim", "relative_data_misfit", "reconstruction_s")
    return ", ".join(f"{k} {m[k]:.4g}" for k in keys if k in m)
