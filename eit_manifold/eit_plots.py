"""Figures (PNG) for EIT: conductivities on the mesh or as images, and electrode data."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import matplotlib.tri as mtri
import numpy as np

from eit_manifold.plotting import save_figure


def _draw_cells(ax: plt.Axes, vertices: np.ndarray, values: np.ndarray, title: str,
                vmin: float | None = None, vmax: float | None = None) -> None:
    points = vertices.reshape(-1, 2)
    tri = mtri.Triangulation(points[:, 0], points[:, 1], np.arange(points.shape[0]).reshape(-1, 3))
    im = ax.tripcolor(tri, facecolors=values, cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.axis("off")
    plt.colorbar(im, ax=ax, fraction=0.046, label="σ (S/m)")


def _draw_image(ax: plt.Axes, image: np.ndarray, radius: float, title: str,
                vmin: float | None = None, vmax: float | None = None) -> None:
    im = ax.imshow(image, extent=(-radius, radius, -radius, radius), cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_title(title)
    ax.axis("off")
    plt.colorbar(im, ax=ax, fraction=0.046, label="σ (S/m)")


def _draw_data(ax: plt.Axes, series: dict[str, np.ndarray]) -> None:
    for (label, data), style in zip(series.items(), ("-", "--", ":"), strict=False):
        ax.plot(np.ravel(data), style, lw=1, label=label)
    ax.set_xlabel("measurement index (pattern-major)")
    ax.set_ylabel("voltage (V)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("electrode data")


def plot_simulation(
    path: str | os.PathLike,
    vertices: np.ndarray,
    sigma: np.ndarray,
    measurements: np.ndarray,
    clean: np.ndarray | None = None,
    electrode_angles: np.ndarray | None = None,
    radius: float = 1.0,
) -> None:
    """Phantom on the mesh (with electrode positions) beside the simulated data.

    ``vertices`` (n_cells, 3, 2) holds the corners of each cell, ``sigma`` (n_cells,) its value.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1, 1.6]}, layout="constrained")
    _draw_cells(axes[0], vertices, sigma, "phantom")
    if electrode_angles is not None:
        xy = 1.04 * radius * np.stack([np.cos(electrode_angles), np.sin(electrode_angles)], axis=1)
        axes[0].plot(xy[:, 0], xy[:, 1], "rs", ms=3)
        axes[0].annotate("1", xy[0], color="r", fontsize=8)
    series = {"measured": measurements}
    if clean is not None:
        series["noise-free"] = clean
    _draw_data(axes[1], series)
    save_figure(fig, path)


def plot_reconstruction(
    path: str | os.PathLike,
    reconstruction: np.ndarray,
    radius: float,
    measured: np.ndarray,
    predicted: np.ndarray,
    truth: np.ndarray | None = None,
    title: str = "reconstruction",
) -> None:
    """Truth (if known) and reconstruction as images on [-R, R]^2, and measured vs predicted data."""
    panels = 3 if truth is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.3), layout="constrained")
    finite = [a for a in (truth, reconstruction) if a is not None]
    vmin = min(float(np.nanmin(a)) for a in finite)
    vmax = max(float(np.nanmax(a)) for a in finite)
    i = 0
    if truth is not None:
        _draw_image(axes[0], truth, radius, "truth", vmin, vmax)
        i = 1
    _draw_image(axes[i], reconstruction, radius, title, vmin, vmax)
    _draw_data(axes[i + 1], {"measured": measured, "predicted": predicted})
    save_figure(fig, path)
