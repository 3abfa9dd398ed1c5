"""Helpers shared by the benchmark scripts: timing and pyEIT meshes of a given node count."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# Node count of a pyEIT distmesh unit disk is ~ C / h0^2; C measured (9103 nodes at h0 = 0.02).
PYEIT_NODE_CONSTANT = 9103 * 0.02**2


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time (s) of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pyeit_forward(target_nodes: int, n_electrodes: int = 16):
    """pyEIT's ``EITForward`` (adjacent protocol) on a distmesh disk with about ``target_nodes`` nodes."""
    import pyeit.eit.protocol as pyeit_protocol
    import pyeit.mesh as pyeit_mesh
    from pyeit.eit.fem import EITForward

    h0 = float(np.sqrt(PYEIT_NODE_CONSTANT / target_nodes))
    mesh = pyeit_mesh.create(n_electrodes, h0=h0)
    protocol = pyeit_protocol.create(n_electrodes, dist_exc=1, step_meas=1, parser_meas="std")
    return EITForward(mesh, protocol), mesh
