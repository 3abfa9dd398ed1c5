"""Toy validation of the Riemannian descent on learned atlases (issue 5).

For each toy manifold an atlas is trained (small, CPU) and ``F(x) = ||x - a||^2`` is minimised from
several prior samples. Checks, printed and written to ``OUT/toy_results.json``:

* monotone: the recorded objective never increases;
* on-manifold: every iterate ``x`` satisfies ``||x - atlas.project(x)|| <= 1e-4``;
* limit: the distance of the best limit to the true closest point, next to the atlas' own
  projection error at that point (``||c - atlas.project(c)||``) and to the true manifold.

A trajectory figure ``OUT/trajectory_<name>.png`` per manifold.

Usage: ``python benchmarks/riemannian_toy.py --out results/toy [--epochs 60] [--only sphere]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from eit_manifold.data import distance_to_manifold, make_toy
from eit_manifold.io import write_json
from eit_manifold.manifold import Atlas, ChartConfig, load_atlas, save_atlas
from eit_manifold.manifold.training import AtlasTrainConfig, relative_projection_error, train_atlas
from eit_manifold.optim import RiemannianDescent
from eit_manifold.plotting import plot_trajectories
from eit_manifold.seeding import seed_everything

_T = (1.0, 0.0, 0.5)
_SPHERE_A = np.array([0.3, 0.2, 2.0])
_TC = np.array([1.0, 0.0, 0.0]) + 0.4 * np.array(_T) / np.linalg.norm(_T)
# name: (charts, latent dim, target a, true closest points)
CASES = {
    "two-circles": (4, 1, np.array([0.0, 0.0]), np.array([[0.5, 0.0], [-0.5, 0.0]])),
    "sphere": (2, 2, _SPHERE_A, (_SPHERE_A / np.linalg.norm(_SPHERE_A))[None]),
    "torus": (6, 2, np.array([2.0, 0.0, 0.5]), _TC[None]),
}


def train_or_load(name: str, k: int, d: int, epochs: int, cache: Path) -> Atlas:
    """Train a small atlas on ``name`` (or load it from ``cache/name``)."""
    path = cache / name
    if (path / "config.json").is_file():
        try:
            return load_atlas(path)
        except (ValueError, FileNotFoundError):
            pass
    data = torch.from_numpy(make_toy(name, 4000, "train", 0))
    atlas = Atlas(ChartConfig(data_shape=(data.shape[1],), latent_dim=d, sigma_hd=0.01), k)
    atlas.set_normalization(data.mean(0), float(data.std()))
    cfg = AtlasTrainConfig(
        epochs=epochs,
        pretrain_epochs=max(2, epochs // 10),
        lipschitz_epochs=epochs // 5,
        overlap_epochs=max(2, epochs // 10),
    )
    train_atlas(atlas, data, cfg, progress=False)
    save_atlas(atlas, path)
    return atlas


def validate(name: str, atlas: Atlas, n_starts: int, out: Path) -> dict:
    """Run the descent on ``||x - a||^2`` and check monotonicity, manifold and limit."""
    _, _, a, closest = CASES[name]
    target = torch.tensor(a, dtype=torch.float32)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return ((x - target) ** 2).sum(dim=1)

    t0 = time.perf_counter()
    opt = RiemannianDescent(atlas, objective, max_iter=200, record_iterates=True)
    res = opt.run(n_starts=n_starts, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - t0
    it = torch.from_numpy(res.history.iterates).float()  # (T+1, B, D)
    with torch.no_grad():
        flat = it.reshape(-1, it.shape[-1])
        off = (flat - atlas.project(flat)).norm(dim=1).reshape(it.shape[:2])
        c = torch.from_numpy(closest).float()
        proj_err_c = (c - atlas.project(c)).norm(dim=1).numpy()
    x_best = res.x.numpy()
    dist_closest = np.linalg.norm(closest - x_best, axis=1)
    j = int(dist_closest.argmin())
    test = torch.from_numpy(make_toy(name, 1000, "test", 0))
    summary = {
        "n_iter": res.n_iter,
        "seconds": seconds,
        "objective": res.objective,
        "true_min_objective": float(((closest[j] - a) ** 2).sum()),
        "monotone": bool(np.all(np.diff(res.history.objective, axis=0) <= 0)),
        "max_off_manifold": float(off.max()),
        "limit_to_true_closest": float(dist_closest[j]),
        "projection_error_at_closest": float(proj_err_c[j]),
        "limit_to_true_manifold": float(distance_to_manifold(name, x_best[None])[0]),
        "median_rel_projection_error_test": float(
            np.median(relative_projection_error(atlas, test))
        ),
        "n_switches": int(res.history.switched.sum()),
        "converged": int(res.converged.sum()),
    }
    summary["limit_within_projection_error"] = bool(
        summary["limit_to_true_closest"] <= 2 * summary["projection_error_at_closest"] + 1e-2
    )
    samples = atlas.sample(1500, torch.Generator().manual_seed(1)).detach().numpy()
    plot_trajectories(
        samples,
        res.history.iterates,
        a,
        out / f"trajectory_{name}.png",
        title=f"{name}: min ||x - a||^2 ({n_starts} starts)",
        closest=closest,
    )
    return summary


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/toy"))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--starts", type=int, default=6)
    parser.add_argument("--only", choices=list(CASES), default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed_everything(0)
    results = {}
    for name in [args.only] if args.only else list(CASES):
        k, d, _, _ = CASES[name]
        t0 = time.perf_counter()
        atlas = train_or_load(name, k, d, args.epochs, args.out / "atlases")
        print(f"[{name}] atlas ready in {time.perf_counter() - t0:.0f} s", flush=True)
        results[name] = validate(name, atlas, args.starts, args.out)
        print(name, results[name], flush=True)
        write_json(args.out / "toy_results.json", results)


if __name__ == "__main__":
    main()
