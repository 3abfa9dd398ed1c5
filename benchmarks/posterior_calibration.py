"""Calibration of the atlas posterior: deblurring (bars atlas, noise 0.1) or EIT (balls atlas, 1 %).

* ``--kind sbc``: simulation-based calibration (Talts et al. 2018). Case ``i`` draws a chart
  ``k ~ alpha``, a latent ``w ~ p_k`` and the image ``x = G_k(w)`` from the atlas (seed ``i``),
  blurs it and adds noise, and samples the posterior. Recorded: the coverage of the 90 % pixel
  intervals (all pixels, and the pixels where the truth differs from the background by > 0.05),
  the probability integral transform (PIT) of the true pixel values under the weighted mixture
  draws (histogram over all pixels, and at the 16 pixels of largest posterior std), the PIT and
  90 % interval coverage of the true latent under the true chart's draws (the conditional
  posterior p(w | d, k)), and the posterior probability of the true chart.
* ``--kind heldout``: the same on held-out bar images of the family (not on the atlas: model
  error), beside the Gaussian posterior of Tikhonov deblurring (the linear baseline).
* ``--operator eit --kind sbc``: the atlas image is mapped to a conductivity (the posterior's
  clipped map, sigma in [0.2, 1.8]) and simulated on the reconstruction (coarse) mesh with the
  posterior's relative noise model (in the model on purpose: the same mesh, the same operator);
  the posterior is the ``posterior`` job's (:func:`eit_posterior_problem`, with its Gauss-Newton
  warm start). Pixel statistics are taken inside the tank, in atlas image values.
* ``--operator eit --kind heldout``: held-out phantoms of the paper's balls family (index ``i``,
  use ``--first 300`` to stay clear of the report's test and validation phantoms), simulated as
  ``report`` simulates them (fine ``default`` mesh, relative noise; model error: the manifold's
  gap and the mesh), sampled with the same posterior on the coarse mesh, beside the Gauss-Newton
  Laplace posterior of the same data. Statistics in conductivity inside the tank ("signal":
  pixels more than 0.05 S/m from the background conductivity).

Each case is written to ``OUT/cases/<kind>_<i>.json``; existing cases are skipped (resumable).
``--summary`` aggregates them into ``OUT/<kind>_summary.json`` and ``OUT/<kind>_ranks.png``.

    nice -n 10 python benchmarks/posterior_calibration.py --kind sbc --cases 50 --out results/posterior_cal
    python benchmarks/posterior_calibration.py --operator eit --kind sbc --cases 50 --out results/posterior_eit
    python benchmarks/posterior_calibration.py --operator eit --kind heldout --first 300 --cases 20 --out results/eit_ho
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from eit_manifold.baselines.laplace import gauss_newton_laplace, tikhonov_posterior
from eit_manifold.data.images import BALL_BACKGROUND, BAR_BACKGROUND, heldout_image
from eit_manifold.io import write_json
from eit_manifold.manifold import load_atlas
from eit_manifold.metrics import interval_coverage
from eit_manifold.operators.blur import GaussianBlur, SeparableBlur
from eit_manifold.optim.posterior import AtlasPosterior, gaussian_residual, weighted_summary

BINS = 10
SEED_STRIDE = 1_000_000  # case seeds of different --seed values never meet


def pit(draws: np.ndarray, weights: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Weighted PIT ``sum_i w_i [x_i < x*]`` per entry (draws ``(n, ...)``, truth ``(...)``)."""
    below = draws < truth[None]
    return np.tensordot(weights, below.astype(float), axes=1)


class EITCase:
    """The EIT side of a case: one coarse-mesh operator, data simulated in the model per case."""

    def __init__(self, atlas, noise: float, sigma_min: float = 0.2, sigma_max: float = 1.8,
                 heldout: bool = False) -> None:
        from mpi4py import MPI

        from eit_manifold.pipelines.reconstruct import reconstruction_operator
        from eit_manifold.pipelines.simulate import SimulateConfig, simulate_data, simulation_model

        sim = SimulateConfig(mesh="coarse", noise=noise)
        # a template file (patterns, electrodes, radius) whose measurements each case replaces
        self.template = simulate_data(sim, simulation_model(sim, MPI.COMM_SELF), np.random.default_rng(0))
        self.operator = reconstruction_operator(self.template, atlas.image_shape, "coarse", comm=MPI.COMM_SELF)
        self.noise, self.lo, self.hi = noise, sigma_min, sigma_max
        self.fine = None
        if heldout:  # the report's simulation: the fine mesh, another discretisation than the posterior's
            fine = SimulateConfig(mesh="default", noise=noise, image_size=atlas.image_shape[0],
                                  sigma_min=sigma_min, sigma_max=sigma_max)
            self.fine = (fine, simulation_model(fine, MPI.COMM_SELF))

    def heldout_problem(self, atlas, i: int, seed: int):
        """The posterior problem of held-out balls phantom ``i``, simulated as ``report`` simulates it."""

        from eit_manifold.pipelines.posterior import eit_posterior_problem
        from eit_manifold.pipelines.reconstruct import make_problem
        from eit_manifold.pipelines.report import simulate_phantom

        data = simulate_phantom(*self.fine, "balls", i, self.noise, seed)
        return eit_posterior_problem(make_problem(data, self.operator), atlas, self.lo, self.hi,
                                     source=f"held-out balls {i}")

    def problem(self, atlas, x_true: torch.Tensor, i: int):
        """The posterior problem of the atlas image ``x_true`` (noise stream ``[1, i]``, ``i`` the case seed)."""
        from dataclasses import replace

        from eit_manifold.operators.eit.conductivity_map import image_to_conductivity
        from eit_manifold.operators.noise import RelativeNoise
        from eit_manifold.pipelines.posterior import eit_posterior_problem
        from eit_manifold.pipelines.reconstruct import make_problem

        model = self.operator.model
        sigma = image_to_conductivity(x_true.numpy(), self.lo, self.hi, clip=True)
        solved = model.solve(model.pixel_map(atlas.image_shape) @ sigma.ravel())
        noisy = RelativeNoise(self.noise).sample(solved.measurements, np.random.default_rng([1, i]))
        data = replace(self.template, measurements=noisy, electrode_potentials=solved.electrode_potentials,
                       extras={})
        return eit_posterior_problem(make_problem(data, self.operator), atlas, self.lo, self.hi,
                                     source=f"sbc case {i}")


def case_seed(i: int, seed: int) -> int:
    """The seed of case ``i`` under ``--seed seed`` (``i`` itself at seed 0, as the recorded studies)."""
    return i + SEED_STRIDE * seed


def run_case(kind: str, i: int, args: argparse.Namespace, atlas, op) -> dict:
    s = case_seed(i, args.seed)
    gen = torch.Generator().manual_seed(10_000 + s)
    t0, c0 = time.perf_counter(), time.process_time()
    rec: dict = {"kind": kind, "case": i, "seed": args.seed}
    transform, baseline = None, None
    if kind == "sbc":
        k = int(torch.multinomial(atlas.weights, 1, generator=gen))
        w_true = atlas.sample_latent(k, 1, generator=gen).to(torch.float64)
        with torch.no_grad():
            x_true = atlas.charts[k].decode(w_true)[0].to(torch.float64).numpy()
        rec.update(true_chart=k, true_latent=w_true[0].tolist())
    elif not isinstance(op, EITCase):
        img, params = heldout_image("bars", i, atlas.image_shape[0])
        x_true = img.astype(np.float64)
        rec.update(angle=params["angle"])
    if isinstance(op, EITCase) and kind == "sbc":
        prob = op.problem(atlas, torch.as_tensor(x_true), s)
        residual, warm, inside, background = prob.residual, prob.warm, prob.mask, BALL_BACKGROUND
    elif isinstance(op, EITCase):
        # held-out phantom: statistics in conductivity (the truth is a conductivity image, not an
        # atlas image), the baseline is the Gauss-Newton Laplace posterior of the same data
        prob = op.heldout_problem(atlas, i, args.seed)
        residual, warm, transform, x_true = prob.residual, prob.warm, prob.transform, prob.truth
        inside = prob.mask & np.isfinite(x_true)
        background = float(transform(torch.tensor(BALL_BACKGROUND)))
        baseline = gauss_newton_laplace(prob.info["eit_problem"], op.lo, op.hi)
    else:
        y = op.measure(torch.as_tensor(x_true)[None], gen)[0]
        fast = SeparableBlur(op, tuple(y.shape))  # the same operator, 100x faster
        residual, warm, background = gaussian_residual(fast, y, args.noise), None, BAR_BACKGROUND
        inside = np.ones(atlas.image_shape, dtype=bool)
        if kind == "heldout":
            baseline = tikhonov_posterior(y, op, args.noise)
    sampler = AtlasPosterior(atlas, residual, chains=args.chains, draws=args.draws,
                             burn_in=args.burn_in, importance_samples=args.importance, starts=args.starts,
                             descent_iter=args.descent_iter, init=args.init, particles=args.particles)
    res = sampler.run(seed=s, warm=warm)
    images, charts, weights = res.decode(atlas, transform)
    images = images[:, inside]  # the pixels the data can see (all of them for deblurring)
    stats = weighted_summary(images, weights)
    xt = x_true[inside]
    signal = np.abs(xt - background) > 0.05
    p = pit(images, weights, xt)
    top = np.argsort(stats["std"].ravel())[-16:]
    rec.update(
        coverage_pixels=interval_coverage(xt, stats["q05"], stats["q95"]),
        coverage_signal=interval_coverage(xt[signal], stats["q05"][signal], stats["q95"][signal]),
        pit_hist=np.histogram(p.ravel(), bins=BINS, range=(0, 1))[0].tolist(),
        pit_top=p.ravel()[top].tolist(),
        rel_error_mean=float(np.linalg.norm(stats["mean"] - xt) / np.linalg.norm(xt)),
        chart_probabilities=res.probabilities.tolist(),
        ess_min=[float(c.ess.min()) for c in res.charts],
        rhat_max=[float(c.rhat.max()) for c in res.charts],
        # local (MALA) acceptance, None when only independence steps ran after burn-in
        acceptance=[d["acceptance_rate"] for d in res.diagnostics()["charts"]],
        independence_acceptance=[d["independence_acceptance"] for d in res.diagnostics()["charts"]],
        warnings=res.warnings,
        mean_band_width=float(np.mean(stats["q95"] - stats["q05"])),
    )
    if kind == "sbc":
        c = res.charts[rec["true_chart"]]
        d = c.kept()
        wt = np.array(rec["true_latent"])
        lo, hi = np.quantile(d, 0.05, axis=0), np.quantile(d, 0.95, axis=0)
        rec.update(latent_pit=np.mean(d < wt[None], axis=0).tolist(),
                   latent_covered=((wt >= lo) & (wt <= hi)).tolist(),
                   true_chart_probability=float(res.probabilities[rec["true_chart"]]))
    else:
        base = {key: np.asarray(baseline[key])[inside] for key in ("mean", "q05", "q95")}
        rec.update(baseline_coverage_pixels=interval_coverage(xt, base["q05"], base["q95"]),
                   baseline_coverage_signal=interval_coverage(xt[signal], base["q05"][signal],
                                                              base["q95"][signal]),
                   baseline_rel_error=float(np.linalg.norm(base["mean"] - xt) / np.linalg.norm(xt)),
                   baseline_mean_band_width=float(np.mean(base["q95"] - base["q05"])))
        rec["baseline_weight"] = baseline["alpha"] if "alpha" in baseline else baseline["details"]["weight"]
    rec["seconds"] = time.perf_counter() - t0
    rec["cpu_seconds"] = time.process_time() - c0
    return rec


def summarise(kind: str, out: Path) -> dict:
    from scipy import stats as st

    from eit_manifold.plotting import plt, save_figure

    recs = [json.loads(p.read_text()) for p in sorted((out / "cases").glob(f"{kind}_*.json"))]
    if not recs:
        raise SystemExit(f"no {kind} cases in {out / 'cases'}")

    def agg(key: str) -> dict:
        v = np.array([r[key] for r in recs], dtype=float)
        return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
                "values": v.tolist()}

    summ: dict = {"kind": kind, "cases": len(recs), "coverage_pixels": agg("coverage_pixels"),
                  "coverage_signal": agg("coverage_signal"), "rel_error_mean": agg("rel_error_mean"),
                  "mean_band_width": agg("mean_band_width"), "seconds": agg("seconds"),
                  "cases_with_warnings_on_main_chart": int(sum(
                      any(f"chart {int(np.argmax(r['chart_probabilities']))} " in w for w in r["warnings"])
                      for r in recs))}
    hist = np.sum([r["pit_hist"] for r in recs], axis=0)
    # the pixels of one case are functions of the same latent draw: only one value per case is
    # independent of the others, so the uniformity test uses the pixel of largest posterior std
    top = np.array([r["pit_top"][-1] for r in recs])
    top_hist = np.histogram(top, bins=BINS, range=(0, 1))[0]
    summ["pit_hist_all_pixels"] = hist.tolist()
    summ["pit_hist_top_pixel"] = top_hist.tolist()
    summ["pit_top_ks_p"] = float(st.kstest(top, "uniform").pvalue)
    panels = [("pixel of largest std (one per case)", top_hist), ("all pixels (dependent)", hist)]
    if kind == "sbc":
        lp = np.concatenate([r["latent_pit"] for r in recs])
        lh = np.histogram(lp, bins=BINS, range=(0, 1))[0]
        summ["latent_coverage"] = float(np.mean(np.concatenate([r["latent_covered"] for r in recs])))
        summ["latent_pit_hist"] = lh.tolist()
        summ["latent_pit_chi2_p"] = float(st.chisquare(lh).pvalue)
        summ["latent_pit_ks_p"] = float(st.kstest(lp, "uniform").pvalue)
        summ["true_chart_probability"] = agg("true_chart_probability")
        panels.insert(0, ("latent (true chart)", lh))
    else:
        for key in ("baseline_coverage_pixels", "baseline_coverage_signal", "baseline_rel_error",
                    "baseline_mean_band_width"):
            summ[key] = agg(key)
    write_json(out / f"{kind}_summary.json", summ)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.8), layout="constrained")
    for ax, (label, h) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.bar((np.arange(BINS) + 0.5) / BINS, h, width=1 / BINS, edgecolor="k", color="tab:blue")
        ax.axhline(h.sum() / BINS, color="k", ls="--", lw=1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("rank / PIT")
    fig.suptitle(f"{kind}: {len(recs)} cases, 90% coverage pixels {summ['coverage_pixels']['mean']:.3f}"
                 + (f", latent {summ['latent_coverage']:.3f}" if kind == "sbc" else ""), fontsize=9)
    save_figure(fig, out / f"{kind}_ranks.png")
    return summ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("sbc", "heldout"), required=True)
    ap.add_argument("--operator", choices=("blur", "eit"), default="blur")
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--atlas", default=None, help="default: bars (blur), balls (eit)")
    ap.add_argument("--noise", type=float, default=None, help="default: 0.1 (blur), 0.01 relative (eit)")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--burn-in", type=int, default=60)
    ap.add_argument("--importance", type=int, default=64)
    ap.add_argument("--starts", type=int, default=4)
    ap.add_argument("--descent-iter", type=int, default=10)
    ap.add_argument("--init", choices=("descent", "smc"), default="descent",
                    help="chain starts and proposal: descent + MALA burn-in, or tempered SMC")
    ap.add_argument("--particles", type=int, default=64, help="SMC particles (--init smc)")
    ap.add_argument("--out", type=Path, default=Path("results/posterior_calibration"))
    ap.add_argument("--summary", action="store_true", help="only aggregate the cases written so far")
    ap.add_argument("--seed", type=int, default=0, help="offsets every case's seed (0: the recorded studies)")
    ap.add_argument("--reverse", action="store_true", help="run the cases last to first (a second worker)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    eit = args.operator == "eit"
    args.atlas = args.atlas or ("balls" if eit else "bars")
    args.noise = args.noise if args.noise is not None else (0.01 if eit else 0.1)
    if not args.summary:
        atlas = load_atlas(args.atlas)
        op = (EITCase(atlas, args.noise, heldout=args.kind == "heldout") if eit
              else GaussianBlur.paper(atlas.image_shape[0], background=BAR_BACKGROUND, noise_std=args.noise))
        (args.out / "cases").mkdir(parents=True, exist_ok=True)
        from tqdm import tqdm

        order = range(args.first, args.first + args.cases)
        for i in tqdm(reversed(order) if args.reverse else order, desc=args.kind, total=args.cases):
            path = args.out / "cases" / f"{args.kind}_{i:03d}.json"
            if path.exists():
                done = json.loads(path.read_text()).get("seed", 0)
                if done != args.seed:
                    raise SystemExit(f"{path}: key 'seed' is {done}, not --seed {args.seed}: use another --out")
                continue
            write_json(path, run_case(args.kind, i, args, atlas, op))
    print(json.dumps({k: v for k, v in summarise(args.kind, args.out).items() if not isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main()
