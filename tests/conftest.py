"""Shared fixtures: small meshes are cached per session (meshing is the slow part of setup)."""

from __future__ import annotations

import functools

import pytest
import torch

from eit_manifold.operators.eit.geometry import Tank
from eit_manifold.operators.eit.mesh import MeshOptions, create_tank_mesh, tank_mesh

torch.set_num_threads(1)  # as the CLI does: intra-op threads oversubscribe the 2 cores


@functools.cache
def cached_mesh(name_or_size: str | float, n_electrodes: int = 16):
    tank = Tank(n_electrodes=n_electrodes)
    if isinstance(name_or_size, str):
        return tank_mesh(tank, name_or_size)
    return create_tank_mesh(tank, MeshOptions(name_or_size, 5.0, 3.0))


@pytest.fixture
def tiny_mesh():
    """A very coarse mesh (~1 000 cells) for fast structural tests."""
    return cached_mesh(0.2)


@pytest.fixture
def coarse_mesh():
    return cached_mesh("coarse")


@pytest.fixture
def default_mesh():
    return cached_mesh("default")


@pytest.fixture(autouse=True, scope="session")
def _private_calibration_cache(tmp_path_factory):
    """Tests never read or write the user's KTC calibration cache (``~/.cache/eit-manifold``)."""
    import os

    old = os.environ.get("EIT_MANIFOLD_CACHE")
    os.environ["EIT_MANIFOLD_CACHE"] = str(tmp_path_factory.mktemp("eit-manifold-cache"))
    yield
    if old is None:
        os.environ.pop("EIT_MANIFOLD_CACHE", None)
    else:
        os.environ["EIT_MANIFOLD_CACHE"] = old
