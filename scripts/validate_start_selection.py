"""How the atlas descent should pick among its starts' end points, on phantoms no report uses.

For held-out balls phantoms 100.. (1 % noise, simulated on the ``default`` mesh, reconstructed on
``coarse``, as in the report) runs the default descent once and records for every start's end
point the relative L2 error, the objective, the whitened negative log-likelihood under the file's
noise level and the atlas' latent log-prior (``log alpha_k + log p_k(w)``). From these it compares
the rules: the lowest objective (``--select objective``), the highest posterior density
(``--select posterior``, the default) and the oracle (the end point closest to the truth, a
bound on what any rule can reach). Writes the JSON after every phantom.

    python scripts/validate_start_selection.py --first 100 --n 20 --out docs/figures/start_selection.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from eit_manifold.baselines.eit_absolute import gauss_newton_warm_start
from eit_manifold.io import write_json
from eit_manifold.manifold import load_atlas
from eit_manifold.metrics import relative_l2
from eit_manifold.operators.eit.conductivity_map import image_to_conductivity
from eit_manifold.optim import multistart_descent
from eit_manifold.pipelines.reconstruct import (
    PRUNE_AT,
    ReconstructConfig,
    heldout_problems,
    misfit_objective,
    neg_log_likelihood,
)


def end_points(problem, atlas, config: ReconstructConfig) -> dict:
    """The default descent (objective selection) and every start's error, misfit and log-prior."""
    t0 = time.perf_counter()
    warm = torch.as_tensor(gauss_newton_warm_start(problem, config.sigma_min, config.sigma_max))[None]
    found = multistart_descent(atlas, misfit_objective(problem, config.sigma_min, config.sigma_max), warm,
                               prior_starts=config.starts, seed=config.seed, max_iter=config.iterations, ftol=1e-5,
                               prune_at=PRUNE_AT)
    r = found.result
    nll_fn = neg_log_likelihood(problem, config.sigma_min, config.sigma_max)
    with torch.no_grad():
        x = r.x_all.detach().double()
        nll = nll_fn(x)
        log_prior = atlas.log_prior_latent(torch.as_tensor(r.chart_all), r.w_all.double())
        sigma = image_to_conductivity(x, config.sigma_min, config.sigma_max, clip=True).numpy()
    starts = [{"err": float(relative_l2(s[problem.inside], problem.truth[problem.inside])),
               "obj": float(o), "nll": float(n), "logprior": float(lp), "chart": int(k), "pruned": int(p)}
              for s, o, n, lp, k, p in zip(sigma, r.objective_all, nll, log_prior, r.chart_all, r.pruned,
                                           strict=True)]
    return {"best": int(r.best_start), "starts": starts, "s": time.perf_counter() - t0}


def summary(rows: list[dict]) -> dict:
    """Mean error of each rule over the phantoms so far."""
    objective = [r["starts"][r["best"]]["err"] for r in rows]
    posterior = [min(r["starts"], key=lambda p: p["nll"] - p["logprior"])["err"] for r in rows]
    oracle = [min(p["err"] for p in r["starts"]) for r in rows]
    return {"n": len(rows), "objective": float(np.mean(objective)), "posterior": float(np.mean(posterior)),
            "oracle": float(np.mean(oracle))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--first", type=int, default=100)
    parser.add_argument("--atlas", default="balls")
    parser.add_argument("--out", default="docs/figures/start_selection.json")
    args = parser.parse_args()
    config = ReconstructConfig(data="-", atlas=args.atlas)
    atlas = load_atlas(args.atlas)
    atlas.eval()
    rows = []
    for i, problem in heldout_problems(range(args.first, args.first + args.n)):
        rows.append({"index": i, **end_points(problem, atlas, config)})
        s = summary(rows[-1:])
        print(i, f"objective {s['objective']:.4f} posterior {s['posterior']:.4f} oracle {s['oracle']:.4f}",
              f"{rows[-1]['s']:.1f}s", flush=True)
        write_json(args.out, {"atlas": args.atlas, "noise": 0.01, "summary": summary(rows), "rows": rows})
    print(summary(rows))


if __name__ == "__main__":
    main()
