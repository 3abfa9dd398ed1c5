"""``eit-manifold ktc`` and ``ktc-score``: the KTC2023 water-tank data."""

from __future__ import annotations

from pathlib import Path

import typer

from eit_manifold.cli._app import app


@app.command("ktc")
def ktc_command(
    data_dir: Path = typer.Argument(..., help="Directory with ref.mat and data*.mat (KTC2023 format)."),
    method: str = typer.Option(
        "learned", help="Reconstruction method(s), comma-separated (the table's columns): learned (linear "
        "reconstructions segmented by the bundled U-Net for all levels, see ktc-train), linear (organisers' "
        "baseline), tv, absolute (Gauss-Newton on the case's own data), atlas (Riemannian descent on the bundled "
        "ktc atlas from the linear, tv and learned segmentations)."),
    out: Path = typer.Option(Path("results/ktc"), help="Output directory: segmentations, figures, scores."),
    truth: Path = typer.Option(None, help="Directory with trueK.mat ground truths (writes a score table)."),
    level: str = typer.Option("1", help="Challenge level 1..7 (level N removes electrodes 1..2(N-1)), a "
                              "comma-separated list, or 'all'."),
    seed: int = typer.Option(0, help="Random seed (for stochastic methods)."),
    grid: int = typer.Option(48, help="Pixels per side of the reconstruction grid."),
    shared_impedance: bool = typer.Option(False, help="Calibrate one contact impedance for all electrodes."),
    segmenter: Path = typer.Option(None, help="Network for --method learned (a ktc-train output directory; "
                                   "default: the bundled network for levels 1-7)."),
    cache_dir: Path = typer.Option(None, help="Calibration cache directory (default: $EIT_MANIFOLD_CACHE or "
                                   "$XDG_CACHE_HOME/eit-manifold, subdirectory ktc-calibration)."),
    cache: bool = typer.Option(True, help="Reuse (and store) the calibration of ref.mat."),
) -> None:
    """Reconstruct every data*.mat in DATA_DIR and segment it into water / resistive / conductive."""
    from eit_manifold.pipelines.ktc import KTCConfig, markdown_table, parse_levels, parse_methods, run_ktc

    try:
        levels, methods = parse_levels(level), parse_methods(method)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    cfg = KTCConfig(data_dir=str(data_dir), out=str(out), methods=methods, truth_dir=str(truth) if truth else None,
                    levels=levels, seed=seed, grid=grid, per_electrode=not shared_impedance,
                    segmenter=str(segmenter) if segmenter else None, cache_dir=str(cache_dir) if cache_dir else None,
                    use_cache=cache)
    summary = run_ktc(cfg)
    cal = summary["calibration"]
    how = "cached" if summary["setup"]["calibration_cached"] else "computed"
    typer.echo(f"calibration ({how}): sigma {cal['sigma']:.4g}, residual {100 * cal['residual']:.2f}%")
    if "mean_scores" in summary:
        typer.echo(markdown_table(summary["cases"], methods, levels))
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
    out: Path = typer.Option(Path("results/ktc-segmenter"), help="Output directory: network, simulation chunks, "
                             "checkpoint, validation.png."),
    level: str = typer.Option("all", help="Levels the one network is trained for: 'all' (1..7) or a "
                              "comma-separated list; each sample gets one of them at random."),
    grid: int = typer.Option(48, help="Pixels per side of the linear reconstruction grid."),
    n_train: int = typer.Option(10000, help="Simulated training phantoms (each serves every level)."),
    n_val: int = typer.Option(300, help="Simulated validation phantoms (scored at every level)."),
    epochs: int = typer.Option(6, help="Training epochs."),
    width: int = typer.Option(16, help="Channels of the U-Net's first level."),
    lr: float = typer.Option(1e-3, help="Adam learning rate (cosine decay)."),
    prior_scales: str = typer.Option(
        None, help="Image channels: the linear reconstruction with the prior's standard deviation multiplied by "
        "each of these comma-separated factors (1 = the linear method) [default: 1,10,100]."),
    init: str = typer.Option("bundled", help="Network to start from: 'bundled', a ktc-train output directory, or "
                             "'none' (random initialisation)."),
    seed: int = typer.Option(0, help="Random seed (phantoms, noise, levels, initialisation, batch order)."),
    threads: int = typer.Option(1, help="torch CPU threads of the training (a GPU is used when available)."),
) -> None:
    """Train the network of --method learned on simulated phantoms; resumes an interrupted run in OUT."""
    import torch

    from eit_manifold.pipelines.ktc import parse_levels
    from eit_manifold.pipelines.ktc_segmenter import SegmenterRunConfig, train_ktc_segmenter
    from eit_manifold.validation import check_int

    check_int("--threads", threads, 1, 1024)
    try:
        levels = parse_levels(level)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    options = {}
    if prior_scales is not None:
        try:
            options["prior_scales"] = tuple(float(s) for s in prior_scales.split(","))
        except ValueError:
            raise typer.BadParameter(f"--prior-scales must be comma-separated numbers, got {prior_scales!r}") from None
    config = SegmenterRunConfig(data_dir=str(data_dir), out=str(out), levels=levels, grid=grid, n_train=n_train,
                                n_val=n_val, epochs=epochs, width=width, lr=lr, seed=seed,
                                init=None if init == "none" else init, **options)
    torch.set_num_threads(threads)
    summary = train_ktc_segmenter(config)
    for v, scores in summary["validation"].items():
        typer.echo(f"level {v}: validation score (simulated, {n_val} phantoms): learned "
                   f"{scores['learned']['mean']:.3f}, linear + Otsu {scores['linear']['mean']:.3f}")
    p = summary["presence"]
    typer.echo(f"class presence rule: thresholds {p['thresholds']} pixels, held-out errors {p['heldout']['errors']} "
               f"of {p['heldout']['n']} (without the rule {p['heldout']['errors_before']})")
    typer.echo(f"wrote the network to {out}")
