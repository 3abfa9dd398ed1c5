"""Figures for the KTC cases: conductivity change, segmentation and (if known) the ground truth."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from eit_manifold.ktc.data import RADIUS
from eit_manifold.plotting import save_figure

CLASS_COLOURS = ListedColormap(["#d8e6f0", "#3b4cc0", "#b40426"])  # water, resistive, conductive


def plot_case(path: str | os.PathLike, image: np.ndarray, segmentation: np.ndarray,
              truth: np.ndarray | None = None, title: str = "") -> None:
    """Change image, segmentation and truth side by side (classes: 0 water, 1 resistive, 2 conductive)."""
    panels = 3 if truth is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4), layout="constrained")
    ext = (-RADIUS, RADIUS, -RADIUS, RADIUS)
    vmax = float(np.max(np.abs(image))) or 1.0
    im = axes[0].imshow(image, extent=ext, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    plt.colorbar(im, ax=axes[0], fraction=0.046, label="Δσ")
    axes[0].set_title("conductivity change")
    axes[1].imshow(segmentation, extent=ext, cmap=CLASS_COLOURS, vmin=0, vmax=2, interpolation="nearest")
    axes[1].set_title("segmentation")
    if truth is not None:
        axes[2].imshow(truth, extent=ext, cmap=CLASS_COLOURS, vmin=0, vmax=2, interpolation="nearest")
        axes[2].set_title("ground truth")
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_segmenter_validation(path: str | os.PathLike, net, data: dict, scores: dict, history: list[float],
                              n: int = 6) -> None:
    """Training loss, score histograms (network vs ``linear`` + Otsu) and ``n`` validation cases
    (input reconstruction, network's classes, truth)."""
    from eit_manifold.ktc.segmentation import MIN_COMPONENT_PIXELS
    from eit_manifold.ktc.segmenter import predict

    n = min(n, len(data["val_inputs"]))
    fig = plt.figure(figsize=(2.2 * max(n, 4), 9.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 3])
    ax_loss, ax_hist = top.subplots(1, 2)
    ax_loss.semilogy(np.arange(1, len(history) + 1), history)
    ax_loss.set(xlabel="epoch", ylabel="training loss")
    bins = np.linspace(0, 1, 26)
    for name, values in scores.items():
        ax_hist.hist(values, bins=bins, alpha=0.6, label=f"{name} (mean {np.mean(values):.3f})")
    ax_hist.set(xlabel="challenge score (simulated validation)", ylabel="cases")
    ax_hist.legend(fontsize=8)
    axes = bottom.subplots(3, n, squeeze=False)
    ext = (-RADIUS, RADIUS, -RADIUS, RADIUS)
    labels, _ = predict(net, data["val_inputs"][:n], min_pixels=MIN_COMPONENT_PIXELS)
    for j in range(n):
        image = data["val_linear"][j]
        vmax = float(np.max(np.abs(image))) or 1.0
        axes[0, j].imshow(image, extent=ext, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        axes[1, j].imshow(labels[j], extent=ext, cmap=CLASS_COLOURS, vmin=0, vmax=2, interpolation="nearest")
        axes[2, j].imshow(data["val_truths"][j], extent=ext, cmap=CLASS_COLOURS, vmin=0, vmax=2,
                          interpolation="nearest")
        for ax in axes[:, j]:
            ax.set_axis_off()
    for ax, title in zip(axes[:, 0], ("linear reconstruction", "network", "truth"), strict=True):
        ax.set_title(title, loc="left", fontsize=9)
    save_figure(fig, path)
