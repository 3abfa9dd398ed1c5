"""The one-command demo: simulate a held-out balls phantom, reconstruct it with the bundled atlas.

Simulation on the ``default`` mesh (58k cells), 1 % noise; reconstruction on the ``coarse`` mesh
(11k cells, no inverse crime) by Riemannian descent on the bundled ``balls`` atlas (K = 2).
"""

from __future__ import annotations

from pathlib import Path

from eit_manifold.pipelines.reconstruct import ReconstructConfig, reconstruct
from eit_manifold.pipelines.simulate import SimulateConfig, simulate


def run_demo(out: str | Path = "results/demo", seed: int = 0, progress: bool = True) -> dict:
    """Simulate held-out phantom ``seed`` and reconstruct it; returns the reconstruction's metrics."""
    out = Path(out)
    simulate(SimulateConfig(phantom="balls", seed=seed, noise=0.01, out=str(out / "data.npz"),
                            plot=str(out / "data.png")))
    result = reconstruct(ReconstructConfig(data=str(out / "data.npz"), out=str(out), seed=seed, progress=progress))
    return result["metrics"]
