"""Datasets: toy manifolds (:mod:`.toy`) and image families (:mod:`.images`), seeded."""

from __future__ import annotations

import numpy as np

from eit_manifold.data.images import IMAGE_DATASETS, IMAGE_LATENT_DIMS, heldout_image, make_images
from eit_manifold.data.toy import TOY_DATASETS, TOY_DIMS, distance_to_manifold, make_toy

DATASETS = TOY_DATASETS + IMAGE_DATASETS


def is_image_dataset(name: str) -> bool:
    """Whether ``name`` is an image family."""
    check_dataset(name)
    return name in IMAGE_DATASETS


def check_dataset(name: str) -> None:
    """Raise ``ValueError`` naming the valid choices when ``name`` is unknown."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")


def true_latent_dim(name: str) -> int:
    """Intrinsic dimension of the dataset's manifold."""
    check_dataset(name)
    return IMAGE_LATENT_DIMS[name] if name in IMAGE_DATASETS else TOY_DIMS[name][1]


def make_dataset(
    name: str, n: int, split: str = "train", seed: int = 0, size: int = 64
) -> np.ndarray:
    """``n`` items of dataset ``name`` as float32: ``(n, ambient)`` for toys, ``(n, size, size)``.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    n : int
        Number of items.
    split : {"train", "test"}
        Disjoint random streams.
    seed : int
        Dataset seed.
    size : int
        Image size (ignored for toys).
    """
    check_dataset(name)
    if name in IMAGE_DATASETS:
        return make_images(name, n, split, seed, size)[0]
    return make_toy(name, n, split, seed)


__all__ = [
    "DATASETS",
    "check_dataset",
    "distance_to_manifold",
    "heldout_image",
    "is_image_dataset",
    "make_dataset",
    "make_images",
    "make_toy",
    "true_latent_dim",
]
