"""Pixel grid on the square [-R, R]^2  <->  DG0 cell values on the tank mesh.

``P`` (cells x pixels) gives each cell the area-weighted mean of the pixels it overlaps, so its
rows sum to 1; gradients go back to pixels through ``P^T``. Area weights are computed by
quadrature: every triangle is split into m^2 congruent sub-triangles whose centroids carry equal
weight, with m chosen so that sub-triangles are at most a third of a pixel wide. Only pixels that
truly overlap a cell receive weight, so an image that is constant on a cell's footprint is
reproduced exactly. Image convention: row 0 is the top (y = +R), column 0 the left (x = -R).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp


def _subtriangle_barycentrics(m: int) -> np.ndarray:
    """Barycentric coordinates (k, 3) of the centroids of the m^2 sub-triangles of a triangle."""
    pts = []
    for i in range(m):
        for j in range(m - i):
            pts.append(((i + 1 / 3) / m, (j + 1 / 3) / m))  # upward sub-triangles
            if i + j <= m - 2:
                pts.append(((i + 2 / 3) / m, (j + 2 / 3) / m))  # downward sub-triangles
    lam = np.array(pts)
    return np.column_stack([1 - lam.sum(axis=1), lam])


def pixel_centres(image_shape: tuple[int, int], radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (x, y) of the pixel centres, each of shape (H, W)."""
    H, W = image_shape
    x = -radius + (np.arange(W) + 0.5) * (2 * radius / W)
    y = radius - (np.arange(H) + 0.5) * (2 * radius / H)
    return np.meshgrid(x, y)


def pixel_to_cell_matrix(
    coordinates: np.ndarray, cells: np.ndarray, image_shape: tuple[int, int], radius: float
) -> sp.csr_matrix:
    """Sparse map (n_cells, H*W) from a row-major flattened image to cell means.

    Parameters
    ----------
    coordinates : array (n_nodes, 2)
        Node coordinates.
    cells : array (n_cells, 3)
        Triangles as node indices.
    image_shape : (H, W)
        Pixel grid covering [-radius, radius]^2.
    radius : float
        Half the side of the square.
    """
    H, W = (int(v) for v in image_shape)
    if H < 1 or W < 1:
        raise ValueError(f"image_shape must be two positive integers, got {image_shape}")
    tri = coordinates[cells]  # (n_cells, 3, 2)
    diam = np.max(np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2))
    pixel = 2 * radius / max(H, W)
    m = int(min(32, max(1, math.ceil(3 * diam / pixel))))
    lam = _subtriangle_barycentrics(m)  # (k, 3)
    pts = np.einsum("kv,cvd->ckd", lam, tri)  # (n_cells, k, 2)
    col = np.clip(np.floor((pts[..., 0] + radius) / (2 * radius) * W), 0, W - 1).astype(np.int64)
    row = np.clip(np.floor((radius - pts[..., 1]) / (2 * radius) * H), 0, H - 1).astype(np.int64)
    n_cells, k = pts.shape[:2]
    cell_idx = np.repeat(np.arange(n_cells), k)
    P = sp.csr_matrix((np.full(cell_idx.size, 1.0 / k), (cell_idx, (row * W + col).ravel())), shape=(n_cells, H * W))
    P.sum_duplicates()
    return P



def _subtetrahedron_barycentrics(m: int) -> np.ndarray:
    """Barycentric points (k, 4) on a regular lattice inside a tetrahedron, equal weights.

    The centroids of the m^3-subdivision's corner sub-tetrahedra: (n + 1/4) / m with n >= 0 and
    sum(n) = m - 1. Not exactly equal volumes (the octahedra are left out) but symmetric, inside
    the cell and exact for constants: the quadrature of the area-weighted mean.
    """
    pts = [(a, b, c, m - 1 - a - b - c) for a in range(m) for b in range(m - a) for c in range(m - a - b)]
    return (np.array(pts, dtype=float) + 0.25) / m


def voxel_to_cell_matrix(
    coordinates: np.ndarray,
    cells: np.ndarray,
    grid_shape: tuple[int, int, int],
    radius: float,
    z_range: tuple[float, float],
) -> sp.csr_matrix:
    """Sparse map (n_cells, D*H*W) from a voxel grid to tetrahedron means (the 3-D pixel map).

    The grid covers [-radius, radius]^2 x [z_min, z_max]; voxel (k, i, j) is layer k from the
    bottom, and in each layer row 0 is the top (y = +R), column 0 the left (x = -R), as in 2-D.
    Rows sum to 1.
    """
    D, H, W = (int(v) for v in grid_shape)
    if min(D, H, W) < 1:
        raise ValueError(f"voxel grid shape must be three positive integers, got {grid_shape}")
    z0, z1 = (float(v) for v in z_range)
    if not z1 > z0:
        raise ValueError(f"voxel grid needs z_max > z_min, got {z_range}")
    tet = coordinates[cells]  # (n_cells, 4, 3)
    diam = np.max(np.linalg.norm(tet[:, :, None] - tet[:, None], axis=3))
    voxel = min(2 * radius / max(H, W), (z1 - z0) / D)
    m = int(min(4, max(1, math.ceil(2 * diam / voxel))))  # at most 20 points per cell: memory
    lam = _subtetrahedron_barycentrics(m)
    pts = np.einsum("kv,cvd->ckd", lam, tet)
    col = np.clip(np.floor((pts[..., 0] + radius) / (2 * radius) * W), 0, W - 1).astype(np.int64)
    row = np.clip(np.floor((radius - pts[..., 1]) / (2 * radius) * H), 0, H - 1).astype(np.int64)
    lay = np.clip(np.floor((pts[..., 2] - z0) / (z1 - z0) * D), 0, D - 1).astype(np.int64)
    n_cells, k = pts.shape[:2]
    cell_idx = np.repeat(np.arange(n_cells), k)
    P = sp.csr_matrix((np.full(cell_idx.size, 1.0 / k), (cell_idx, ((lay * H + row) * W + col).ravel())),
                      shape=(n_cells, D * H * W))
    P.sum_duplicates()
    return P


def voxel_centres(grid_shape: tuple[int, int, int], radius: float, z_range: tuple[float, float]) -> np.ndarray:
    """Centres (D*H*W, 3) of the voxels of :func:`voxel_to_cell_matrix`, in its flattening order."""
    D, H, W = grid_shape
    xx, yy = pixel_centres((H, W), radius)
    z = z_range[0] + (np.arange(D) + 0.5) * (z_range[1] - z_range[0]) / D
    return np.column_stack([np.tile(xx.ravel(), D), np.tile(yy.ravel(), D), np.repeat(z, H * W)])
