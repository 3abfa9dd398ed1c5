"""Deterministic seeding of every random number generator the project uses."""

from __future__ import annotations

import random

import numpy as np


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch (if importable); return a fresh NumPy ``Generator``.

    Parameters
    ----------
    seed : int
        Non-negative seed.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (legacy global state that third-party code may use)
    try:
        import torch
    except ImportError:  # torch is a dependency, but the EIT layer must not need it
        pass
    else:
        torch.manual_seed(seed)
    return np.random.default_rng(seed)
