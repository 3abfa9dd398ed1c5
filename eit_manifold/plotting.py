"""Figures (PNG) for people to look at: loss curves, atlases, image grids.

Functions take data and a path, write the figure atomically and close it; nothing is shown.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from eit_manifold.io import atomic_path  # noqa: E402


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save ``fig`` as PNG atomically and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_loss_curve(history: Sequence[dict], path: str | os.PathLike) -> None:
    """Loss per epoch (symlog scale), phases shaded.

    Parameters
    ----------
    history : sequence of dict
        Records with ``epoch``, ``loss`` and optionally ``phase``.
    path : path-like
        Output PNG.
    """
    epochs = [h["epoch"] for h in history]
    losses = [h["loss"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, losses, marker=".")
    colours = {"seed": "tab:orange", "mixture": "white", "overlap": "tab:green"}
    for h in history:
        phase = h.get("phase", "mixture")
        if phase != "mixture":
            ax.axvspan(
                h["epoch"] - 0.5,
                h["epoch"] + 0.5,
                color=colours.get(phase, "grey"),
                alpha=0.15,
                lw=0,
            )
    ax.set_yscale("symlog")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("training loss (orange: seeding, green: overlap)")
    save_figure(fig, path)


def image_grid(
    images: np.ndarray,
    rows: int,
    cols: int,
    path: str | os.PathLike,
    row_labels: Sequence[str] | None = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> None:
    """A ``rows x cols`` grid of grey images ``(rows*cols, H, W)``."""
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            ax.imshow(images[i], cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
    for r, label in enumerate(row_labels or []):
        axes[r, 0].set_ylabel(label)
    save_figure(fig, path)


def plot_atlas(
    atlas: torch.nn.Module,
    path: str | os.PathLike,
    dataset: str | None = None,
    n: int = 2000,
    per_chart: int = 8,
    seed: int = 0,
) -> None:
    """Points coloured by chart (point data) or a grid of samples per chart (images).

    Parameters
    ----------
    atlas : Atlas
        Trained atlas.
    path : path-like
        Output PNG.
    dataset : str, optional
        For point data: also scatter held-out points of this dataset, coloured by best chart.
        For images: ``"ktc"`` shows values in [-1, 1] (others in [0, 1]).
    n : int
        Number of samples (point data).
    per_chart : int
        Samples per chart (images).
    seed : int
        Sampling seed.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if atlas.image_shape is not None:
            lo, hi = (-1.0, 1.0) if dataset == "ktc" else (0.0, 1.0)  # ktc: resistive -1, conductive +1
            rows = [
                atlas.charts[k].sample(per_chart, gen).clamp(lo, hi).numpy()
                for k in range(atlas.n_charts)
            ]
            labels = [f"chart {k}" for k in range(atlas.n_charts)]
            image_grid(np.concatenate(rows), atlas.n_charts, per_chart, path, labels, vmin=lo, vmax=hi)
            return
        samples, charts = atlas.sample(n, gen, return_charts=True)
        panels = [("samples (colour = chart)", samples.numpy(), charts.numpy())]
        if dataset is not None:
            from eit_manifold.data import make_dataset

            test = torch.from_numpy(make_dataset(dataset, n, "test"))
            panels.append(
                (
                    "held-out points (colour = best chart)",
                    test.numpy(),
                    atlas.best_chart(test).numpy(),
                )
            )
    three_d = samples.shape[1] == 3
    fig = plt.figure(figsize=(5 * len(panels), 4.5))
    for i, (title, pts, col) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1, projection="3d" if three_d else None)
        ax.scatter(*pts.T, c=col, cmap="tab10", vmin=0, vmax=9, s=3)
        ax.set_title(title)
        if not three_d:
            ax.set_aspect("equal")
    save_figure(fig, path)


# --- Riemannian descent and deblurring figures (issue 5) -------------------------------------


def reconstruction_grid(
    columns: dict[str, np.ndarray], path: str | os.PathLike, vmin: float = 0.0, vmax: float = 1.0
) -> None:
    """Images in rows, methods in columns (titled); ``columns[name]`` has shape ``(N, H, W)``.

    Parameters
    ----------
    columns : dict
        Column title -> images; all entries have the same ``N``.
    path : path-like
        Output PNG.
    vmin, vmax : float
        Grey-scale limits shared by all panels.
    """
    names = list(columns)
    n = len(columns[names[0]])
    fig, axes = plt.subplots(n, len(names), figsize=(1.6 * len(names), 1.6 * n), squeeze=False)
    for c, name in enumerate(names):
        axes[0, c].set_title(name, fontsize=8)
        for r in range(n):
            axes[r, c].imshow(columns[name][r], cmap="gray", vmin=vmin, vmax=vmax)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    save_figure(fig, path)


def plot_trajectories(
    manifold_points: np.ndarray,
    iterates: np.ndarray,
    target: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    closest: np.ndarray | None = None,
) -> None:
    """Descent trajectories over a cloud of manifold points (2-D or 3-D).

    Parameters
    ----------
    manifold_points : np.ndarray
        ``(M, D)`` points of the manifold (e.g. atlas samples), drawn light grey.
    iterates : np.ndarray
        ``(T + 1, B, D)`` iterates of ``B`` starts.
    target : np.ndarray
        ``(D,)`` the point whose distance is minimised.
    path : path-like
        Output PNG.
    title : str
        Figure title.
    closest : np.ndarray, optional
        ``(C, D)`` true closest points, drawn as stars.
    """
    dim = manifold_points.shape[1]
    fig = plt.figure(figsize=(5, 4.5))
    ax = fig.add_subplot(111, projection="3d" if dim == 3 else None)
    ax.scatter(*manifold_points.T, s=2, c="0.8")
    for b in range(iterates.shape[1]):
        ax.plot(*iterates[:, b].T, "-o", ms=2, lw=1)
        ax.scatter(*iterates[-1, b][:, None], marker="x", c="k", s=30)
    ax.scatter(*np.asarray(target)[:, None], marker="+", c="r", s=80, label="target")
    if closest is not None:
        ax.scatter(
            *np.asarray(closest).T,
            marker="*",
            c="gold",
            edgecolors="k",
            s=120,
            label="true closest point",
        )
    ax.legend(loc="best", fontsize=7)
    if dim == 2:
        ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def plot_posterior(
    path: str | os.PathLike,
    stats: dict[str, np.ndarray],
    samples: np.ndarray,
    truth: np.ndarray | None,
    extent: float = 1.0,
    unit: str = "value",
    title: str = "posterior",
) -> None:
    """Truth (if known), posterior mean, std, 90 % band width ``q95 - q05`` and a few samples.

    Parameters
    ----------
    path : path-like
        Output PNG.
    stats : dict
        ``mean``, ``std``, ``q05``, ``q95`` images ``(H, W)`` (NaN outside the domain).
    samples : np.ndarray
        ``(n, H, W)`` posterior samples shown after the summaries.
    truth : np.ndarray, optional
        True image, same scale as the mean.
    extent : float
        Images cover ``[-extent, extent]^2``.
    unit : str
        Name of the image quantity (colour bar labels).
    title : str
        Figure title.
    """
    value_panels = ([("truth", truth)] if truth is not None else []) + [("posterior mean", stats["mean"])]
    value_panels += [(f"sample {i + 1}", s) for i, s in enumerate(samples)]
    spread = [("std", stats["std"]), ("90% band width", stats["q95"] - stats["q05"])]
    finite = [p for _, p in value_panels if np.isfinite(p).any()]
    vmin = min(float(np.nanmin(p)) for p in finite)
    vmax = max(float(np.nanmax(p)) for p in finite)
    smax = max(float(np.nanmax(p)) for _, p in spread) or 1.0
    n = len(value_panels) + len(spread)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False, layout="constrained")
    order = value_panels[: 1 + (truth is not None)] + spread + value_panels[1 + (truth is not None):]
    box = (-extent, extent, -extent, extent)
    for ax, (label, img) in zip(axes[0], order, strict=True):
        is_spread = label in ("std", "90% band width")
        im = ax.imshow(img, extent=box, cmap="magma" if is_spread else "viridis",
                       vmin=0.0 if is_spread else vmin, vmax=smax if is_spread else vmax)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if label in ("posterior mean", "90% band width"):
            fig.colorbar(im, ax=ax, shrink=0.8, label=unit if label == "posterior mean" else f"{unit} spread")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
