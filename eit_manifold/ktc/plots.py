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
