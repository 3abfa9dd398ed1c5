"""Pixel grid -> DG0 cell map: rows sum to one, constants and cell-wise constant images exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eit_manifold.operators.eit import EITOperator, MeshOptions, Tank
from eit_manifold.operators.eit.cem import p1_discretisation
from eit_manifold.operators.eit.pixels import pixel_centres, pixel_to_cell_matrix


@pytest.fixture(scope="module")
def disc():
    from conftest import cached_mesh

    return p1_discretisation(cached_mesh(0.2))


def test_rows_sum_to_one_and_constants_are_kept(disc):
    P = pixel_to_cell_matrix(disc.coordinates, disc.cells, (32, 32), 1.0)
    assert P.shape == (disc.n_cells, 32 * 32)
    assert np.allclose(np.asarray(P.sum(axis=1)).ravel(), 1.0)
    assert np.allclose(P @ np.full(32 * 32, 0.7), 0.7)


def test_area_weights_integrate_linear_images(disc):
    # The mean of a linear function over a triangle is its value at the centroid; with fine
    # pixels the quadrature-based area weights reproduce it to the pixel size.
    P = pixel_to_cell_matrix(disc.coordinates, disc.cells, (256, 256), 1.0)
    xx, yy = pixel_centres((256, 256), 1.0)
    img = 2 * xx - 3 * yy
    exact = 2 * disc.centroids[:, 0] - 3 * disc.centroids[:, 1]
    assert np.abs(P @ img.ravel() - exact).max() < 2 * 5 * (2 / 256)


def test_exact_for_images_constant_on_each_cell_footprint(disc):
    # Coarse pixels: every cell whose footprint lies in a single pixel gets that pixel's value.
    H = W = 4
    P = pixel_to_cell_matrix(disc.coordinates, disc.cells, (H, W), 1.0)
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (H, W))
    tri = disc.coordinates[disc.cells]
    cols = np.floor((tri[..., 0] + 1) / 2 * W).clip(0, W - 1)
    rows = np.floor((1 - tri[..., 1]) / 2 * H).clip(0, H - 1)
    inside = (cols.min(1) == cols.max(1)) & (rows.min(1) == rows.max(1))
    assert inside.sum() > 100
    expect = img[rows[inside, 0].astype(int), cols[inside, 0].astype(int)]
    assert np.allclose((P @ img.ravel())[inside], expect)


def test_row_zero_is_the_top():
    xx, yy = pixel_centres((4, 4), 1.0)
    assert yy[0, 0] > 0 and xx[0, 0] < 0


def test_wrong_image_shape_is_a_clear_error():
    op = EITOperator(Tank(n_electrodes=8, electrode_width=0.3), mesh=MeshOptions(0.4, 2.0, 2.0), image_shape=(8, 8))
    with pytest.raises(ValueError, match=r"\(B, 8, 8\)"):
        op(torch.ones(1, 7, 8, dtype=torch.float64))
