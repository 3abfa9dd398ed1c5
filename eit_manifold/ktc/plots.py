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


def plot_segmenter_validation(path: str | os.PathLike, scored: dict, truths: np.ndarray, history: list[float],
                              n: int = 6) -> None:
    """Training loss, mean simulated validation score per level (network vs ``linear`` + Otsu) and
    ``n`` validation cases at the lowest and the highest level (input reconstruction, network's
    classes), with their truths."""
    levels = sorted(scored)
    n = min(n, len(truths), len(scored[levels[0]]["inputs"]))
    fig = plt.figure(figsize=(2.2 * max(n, 4), 11), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 4])
    ax_loss, ax_lev = top.subplots(1, 2)
    ax_loss.semilogy(np.arange(1, len(history) + 1), history)
    ax_loss.set(xlabel="epoch", ylabel="training loss")
    for name in ("learned", "linear"):
        ax_lev.plot(levels, [scored[v][name].mean() for v in levels], "o-", label=name)
    ax_lev.set(xlabel="level", ylabel="mean score (simulated validation)", ylim=(0, 1))
    ax_lev.legend(fontsize=8)
    shown = [levels[0], levels[-1]] if len(levels) > 1 else levels
    axes = bottom.subplots(2 * len(shown) + 1, n, squeeze=False)
    ext = (-RADIUS, RADIUS, -RADIUS, RADIUS)
    for i, v in enumerate(shown):
        for j in range(n):
            image = scored[v]["inputs"][j, 0]
            vmax = float(np.max(np.abs(image))) or 1.0
            axes[2 * i, j].imshow(image, extent=ext, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            axes[2 * i + 1, j].imshow(scored[v]["final"][j], extent=ext, cmap=CLASS_COLOURS, vmin=0, vmax=2,
                                      interpolation="nearest")
        axes[2 * i, 0].set_title(f"level {v}: linear reconstruction", loc="left", fontsize=9)
        axes[2 * i + 1, 0].set_title(f"level {v}: network", loc="left", fontsize=9)
    for j in range(n):
        axes[-1, j].imshow(truths[j], extent=ext, cmap=CLASS_COLOURS, vmin=0, vmax=2, interpolation="nearest")
    axes[-1, 0].set_title("truth", loc="left", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    save_figure(fig, path)


def plot_level(path: str | os.PathLike, segmentations: dict[str, dict[str, np.ndarray]],
               truths: dict[str, np.ndarray], title: str = "") -> None:
    """One level at a glance: a row per case (truth if known, then each method's segmentation)."""
    cases = list(segmentations)
    methods = list(dict.fromkeys(m for per in segmentations.values() for m in per))
    cols = len(methods) + (1 if truths else 0)
    fig, axes = plt.subplots(len(cases), cols, figsize=(2.4 * cols, 2.4 * len(cases)), squeeze=False,
                             layout="constrained")
    ext = (-RADIUS, RADIUS, -RADIUS, RADIUS)
    for i, case in enumerate(cases):
        panels = ([("truth", truths.get(case))] if truths else []) + [(m, segmentations[case].get(m)) for m in methods]
        for j, (name, seg) in enumerate(panels):
            ax = axes[i, j]
            if seg is not None:
                ax.imshow(seg, extent=ext, cmap=CLASS_COLOURS, vmin=0, vmax=2, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(name, fontsize=9)
        axes[i, 0].text(-0.08, 0.5, case, transform=axes[i, 0].transAxes, rotation=90, va="center", ha="right")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
