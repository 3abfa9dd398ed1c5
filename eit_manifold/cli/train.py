"""``eit-manifold train`` and ``eit-manifold atlas-plot``."""

from __future__ import annotations

from pathlib import Path

import typer

from eit_manifold.cli._app import app


@app.command("train")
def train(
    dataset: str = typer.Option(
        ..., help="two-circles, ring, sphere, torus, swiss-roll, bars, balls, balls-signed, balls-mixed, ktc"
    ),
    out: Path = typer.Option(..., help="output directory (atlas, checkpoint, figures)"),
    charts: int = typer.Option(None, help="number of charts K (default: per dataset)"),
    latent_dim: int = typer.Option(None, help="latent dimension d (default: the true one)"),
    epochs: int = typer.Option(None, help="total epochs (all phases)"),
    n_train: int = typer.Option(None, help="number of training items"),
    size: int = typer.Option(None, help="image size (images only; multiple of 8)"),
    batch_size: int = typer.Option(None, help="mini-batch size"),
    lr: float = typer.Option(None, help="Adam learning rate"),
    pretrain_epochs: int = typer.Option(None, help="epochs of the seeding phase"),
    lipschitz_epochs: int = typer.Option(None, help="epochs with the Lipschitz penalty"),
    overlap_epochs: int = typer.Option(None, help="epochs of the overlap phase"),
    sigma_hd: float = typer.Option(None, help="decoder noise (normalised units)"),
    hidden: int = typer.Option(None, help="hidden width of dense couplings"),
    blocks: int = typer.Option(None, help="number of dense coupling blocks"),
    conv_hidden: int = typer.Option(None, help="hidden channels of conv couplings"),
    checkpoint_every: int = typer.Option(None, help="checkpoint period in epochs"),
    seed: int = typer.Option(0, help="random seed (initialisation and training)"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint.pt"),
    stop_after: int = typer.Option(
        None, help="time-boxed run: stop after this many epochs of the schedule (counted from the start) and "
        "save the atlas as it is (train.json: stopped_after); --resume continues"),
    threads: int = typer.Option(1, help="torch CPU threads"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Train a learned atlas (mixture of VAEs); write it, its figures and its figures of merit."""
    import torch

    from eit_manifold.pipelines.train import default_job, run_train
    from eit_manifold.validation import check_int

    check_int("--threads", threads, 1, 1024)
    job = default_job(
        dataset,
        charts=charts,
        latent_dim=latent_dim,
        epochs=epochs,
        n_train=n_train,
        size=size,
        batch_size=batch_size,
        lr=lr,
        pretrain_epochs=pretrain_epochs,
        lipschitz_epochs=lipschitz_epochs,
        overlap_epochs=overlap_epochs,
        sigma_hd=sigma_hd,
        hidden=hidden,
        blocks=blocks,
        conv_hidden=conv_hidden,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    if stop_after is not None and not 1 <= stop_after <= job.train.epochs:
        raise ValueError(f"--stop-after must be in [1, {job.train.epochs}] (the epochs), got {stop_after}")
    torch.set_num_threads(threads)
    summary = run_train(job, out, resume=resume, progress=progress, stop_after=stop_after,
                        save_partial=stop_after is not None)
    minutes = summary["train_seconds"] / 60
    stopped = ""
    if "stopped_after" in summary:
        stopped = f" (stopped after epoch {summary['stopped_after']} of {job.train.epochs})"
    typer.echo(
        f"trained {job.dataset} K={job.charts} d={job.latent_dim} in {minutes:.1f} min{stopped} -> {out}"
    )
    for key, value in summary.get("evaluation", {}).items():
        typer.echo(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")


@app.command("atlas-plot")
def atlas_plot(
    atlas: str = typer.Argument(..., help="atlas directory or bundled name"),
    out: Path = typer.Option(None, help="output PNG (default: ATLAS/atlas.png, or ./<name>.png)"),
    dataset: str = typer.Option(None, help="toys: also plot held-out points of this dataset"),
    seed: int = typer.Option(0, help="sampling seed"),
) -> None:
    """Plot an atlas: points coloured by chart (toys) or sample grids per chart (images)."""
    from eit_manifold.data import check_dataset
    from eit_manifold.io import check_output_file
    from eit_manifold.manifold import bundled_atlases, load_atlas
    from eit_manifold.plotting import plot_atlas
    from eit_manifold.validation import check_seed

    check_seed("--seed", seed)
    if dataset is not None:
        check_dataset(dataset)
    model = load_atlas(atlas)
    if out is None:
        out = Path(f"{atlas}.png") if atlas in bundled_atlases() else Path(atlas) / "atlas.png"
    check_output_file(out, "--out")
    dataset = dataset or (model.meta.get("dataset") if model.image_shape is None else None)
    plot_atlas(model, out, dataset=dataset, seed=seed)
    typer.echo(f"wrote {out}")
