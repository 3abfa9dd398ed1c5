"""Noise models attached to forward operators (as deepinv's ``Physics`` carries its noise).

A noise model says how noisy data are drawn from clean data and how large the noise of each datum
is; the operators carry one as ``op.noise_model`` (:class:`~eit_manifold.operators.blur.GaussianBlur`,
:class:`~eit_manifold.operators.eit.autograd.EITOperator`), simulations draw from it and
reconstructions read its standard deviation from it, so the two never disagree.

Both models take NumPy arrays (drawn from a ``numpy.random.Generator``) and torch tensors (drawn
from a ``torch.Generator``); the same generator state gives the same noise.

* :class:`GaussianNoise`: additive white noise of a fixed standard deviation ``sigma``.
* :class:`RelativeNoise`: white noise whose standard deviation is ``level`` times the
  root-mean-square of each row of the clean data (a row is one current pattern in EIT), so that
  ``||noise_p|| / ||clean_p||`` is about ``level``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

Array = np.ndarray | Tensor  # the result has the kind of the input
Generator = np.random.Generator | torch.Generator | None


class NoiseModel(Protocol):
    """What an operator's ``noise_model`` provides."""

    def std(self, clean: Array) -> Array:
        """Standard deviation of the noise of every datum (the shape of ``clean``)."""
        ...

    def sample(self, clean: Array, generator: Generator = None) -> Array:
        """Noisy data: ``clean`` plus one draw of the noise."""
        ...


def _standard_normal(clean: Array, generator: Generator) -> Array:
    """``N(0, 1)`` of the shape and kind of ``clean`` from a generator of the matching library."""
    if isinstance(clean, Tensor):
        if isinstance(generator, np.random.Generator):
            raise TypeError("torch data need a torch.Generator (or None), got a numpy Generator")
        return torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=clean.device)
    if isinstance(generator, torch.Generator):
        raise TypeError("numpy data need a numpy.random.Generator (or None), got a torch.Generator")
    rng = np.random.default_rng() if generator is None else generator
    return rng.standard_normal(np.shape(clean))


def _check_level(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class GaussianNoise:
    """Additive white Gaussian noise ``clean + sigma * N(0, I)``.

    Parameters
    ----------
    sigma : float
        Standard deviation (>= 0), the same for every datum.
    """

    sigma: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_level("noise std", self.sigma))

    def std(self, clean: Array) -> Array:
        """``sigma`` for every datum."""
        if isinstance(clean, Tensor):
            return torch.full_like(clean, self.sigma)
        return np.full(np.shape(clean), self.sigma)

    def sample(self, clean: Array, generator: Generator = None) -> Array:
        """``clean + sigma * N(0, I)``."""
        return clean + self.sigma * _standard_normal(clean, generator)


@dataclass(frozen=True)
class RelativeNoise:
    """White Gaussian noise relative to each row's root-mean-square value.

    ``d_pm = clean_pm + level * rms(clean_p) * N(0, 1)`` with ``rms(c_p) = ||c_p|| / sqrt(M)`` over
    the last axis (for EIT data ``(P, M)``: one row per current pattern).

    Parameters
    ----------
    level : float
        Relative noise level (>= 0), e.g. ``0.01`` for 1 %.
    """

    level: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", _check_level("noise level", self.level))

    def std(self, clean: Array) -> Array:
        """``level * rms(clean_p)`` for every datum of row ``p``."""
        if isinstance(clean, Tensor):
            rms = clean.pow(2).mean(dim=-1, keepdim=True).sqrt()
            return (self.level * rms).expand_as(clean)
        c = np.asarray(clean)
        rms = np.sqrt(np.mean(c**2, axis=-1, keepdims=True))
        return np.broadcast_to(self.level * rms, c.shape)

    def sample(self, clean: Array, generator: Generator = None) -> Array:
        """``clean + std(clean) * N(0, I)``."""
        return clean + self.std(clean) * _standard_normal(clean, generator)
