"""``eit-manifold ktc`` and ``ktc-score``: the KTC2023 water-tank data."""

from __future__ import annotations

from pathlib import Path

import typer

from eit_manifold.cli._app import app


@app.command("ktc")
def ktc_command(
    data_dir: Path = typer.Argument(..., help="Directory with ref.mat and data*.mat (KTC2023 format)."),
    method: str = typer.Option(
        "tv", help="Reconstruction method: linear (organisers' baseline), tv, absolute (Gauss-Newton on the case's "
        "own data), atlas (Riemannian descent on the bundled ktc atlas), or learned (linear reconstructions "
        "segmented by a U-Net trained on simulations, see ktc-train)."),
    out: Path = typer.Option(Path("results/ktc"), help="Output directory: dataK.npy, dataK.png, scores."),
    truth: Path = typer.Option(None, help="Directory with trueK.mat ground truths (writes a score table)."),
    level: int = typer.Option(1, help="Challenge level 1..7: level N removes electrodes 1..2(N-1)."),
    seed: int = typer.Option(0, help="Random seed (for stochastic methods)."),
    grid: int = typer.Option(48, help="Pixels per side of the reconstruction grid."),
    shared_impedance: bool = typer.Option(False, help="Calibrate one contact impedance for all electrodes."),
    segmenter: Path = typer.Option(None, help="Network for --method learned (a ktc-train output directory; "
                                   "default: the bundled level-1 network)."),
) -> None:
    """Reconstruct every data*.mat in DATA_DIR and segment it into water / resistive / conductive."""
    from eit_manifold.ktc.data import check_level
    from eit_manifold.pipelines.ktc import KTCConfig, markdown_table, run_ktc

    check_level(level)
    cfg = KTCConfig(data_dir=str(data_dir), out=str(out), method=method, truth_dir=str(truth) if truth else None,
                    level=level, seed=seed, grid=grid, per_electrode=not shared_impedance,
                    segmenter=str(segmenter) if segmenter else None)
    summary = run_ktc(cfg)
    cal = summary["calibration"][0]
    typer.echo(f"calibration: sigma {cal['sigma']:.4g}, residual {100 * cal['residual']:.2f}%")
    if "mean_score" in summary:
        typer.echo(markdown_table(summary["cases"], method))
    typer.echo(f"wrote {len(summary['cases'])} segmentation(s) to {out}")


@app.command("ktc-score")
def ktc_score_command(
    truth: Path = typer.Argument(..., help="Ground truth trueK.mat (key 'truth', 256x256)."),
    reconstruction: Path = typer.Argument(..., help="Segmentation .npy (256x256, values 0/1/2)."),
) -> None:
    """Print the KTC2023 score of a segmentation (1 is perfect) and its two class scores."""
    from eit_manifold.io import load_npy
    from eit_manifold.ktc.data import read_truth
    from eit_manifold.ktc.score import check_segmentation, class_scores

    truth_image = read_truth(truth)
    segmentation = check_segmentation(f"segmentation {reconstruction}", load_npy(reconstruction, "segmentation"))
    scores = class_scores(truth_image, segmentation)
    typer.echo(f"score {0.5 * (scores[1] + scores[2]):.4f} (resistive {scores[1]:.4f}, conductive {scores[2]:.4f})")


@app.command("ktc-train")
def ktc_train_command(
    data_dir: Path = typer.Argument(..., help="Directory with ref.mat (the tank to simulate; no target data "
                                    "are read)."),
    out: Path = typer.Option(Path("results/ktc-segmenter"), help="Output directory: network, simulations, "
                             "checkpoint, validation.png."),
    level: int = typer.Option(1, help="Challenge level 1..7 the network is for."),
    grid: int = typer.Option(48, help="Pixels per side of the linear reconstruction grid."),
    n_train: int = typer.Option(12000, help="Simulated training phantoms."),
    n_val: int = typer.Option(300, help="Simulated validation phantoms."),
    epochs: int = typer.Option(20, help="Training epochs."),
    width: int = typer.Option(16, help="Channels of the U-Net's first level."),
    prior_scales: str = typer.Option(
        None, help="Input channels: the linear reconstruction with the prior's standard deviation multiplied by "
        "each of these comma-separated factors (1 = the linear method) [default: 1,10,100]."),
    seed: int = typer.Option(0, help="Random seed (phantoms, noise, initialisation, batch order)."),
    threads: int = typer.Option(1, help="torch CPU threads of the training (the bundled network used 2)."),
) -> None:
    """Train the network of --method learned on simulated phantoms; resumes an interrupted run in OUT."""
    import torch

    from eit_manifold.ktc.data import check_level
    from eit_manifold.pipelines.ktc_segmenter import SegmenterRunConfig, train_ktc_segmenter
    from eit_manifold.validation import check_int

    check_level(level)
    check_int("--threads", threads, 1, 1024)
    options = {}
    if prior_scales is not None:
        try:
            options["prior_scales"] = tuple(float(s) for s in prior_scales.split(","))
        except ValueError:
            raise typer.BadParameter(f"--prior-scales must be comma-separated numbers, got {prior_scales!r}") from None
    config = SegmenterRunConfig(data_dir=str(data_dir), out=str(out), level=level, grid=grid, n_train=n_train,
                                n_val=n_val, epochs=epochs, width=width, seed=seed, **options)
    torch.set_num_threads(threads)
    summary = train_ktc_segmenter(config)
    v = summary["validation"]
    typer.echo(f"validation score (simulated, {n_val} phantoms): learned {v['learned']['mean']:.3f}, "
               f"linear + Otsu {v['linear']['mean']:.3f}")
    typer.echo(f"wrote the network to {out}")
