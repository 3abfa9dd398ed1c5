"""``eit-manifold posterior``: posterior sampling on a learned atlas (EIT or deblurring)."""

from __future__ import annotations

from pathlib import Path

import typer

from eit_manifold.cli._app import app, echo, is_root


@app.command("posterior")
def posterior_command(
    data: Path = typer.Option(None, "--data", help="Measurement file (.npz): EIT from simulate, or a deblurring file."),
    operator: str = typer.Option("eit", help="eit (complete electrode model) or blur (the paper's Gaussian blur)."),
    heldout: int = typer.Option(None, help="blur: the held-out bars image with this index instead of --data."),
    atlas: str = typer.Option(None, help="Bundled atlas name or directory (default: balls for eit, bars for blur)."),
    samples: int = typer.Option(300, help="Post-burn-in draws per chain."),
    chains: int = typer.Option(4, help="Chains per chart (spread over MPI processes)."),
    burn_in: int = typer.Option(250, help="Adaptation steps per chain (step size, preconditioner), discarded."),
    thin: int = typer.Option(None, help="Keep every THIN-th draw (default: automatic, about 2 x ESS draws kept)."),
    noise_level: float = typer.Option(
        None, help="Noise: EIT relative level (default: the file's), blur std (default: the file's, or 0.1)."),
    mesh: str = typer.Option(None, help="EIT reconstruction mesh: preset (coarse, default, fine) or .msh file."),
    mesh_size: float = typer.Option(None, help="EIT: element size of the reconstruction mesh (instead of --mesh)."),
    sigma_min: float = typer.Option(0.2, help="EIT: conductivity of image value 0."),
    sigma_max: float = typer.Option(1.8, help="EIT: conductivity of image value 1."),
    image_size: int = typer.Option(64, help="Image size (must match the atlas)."),
    warm_start: bool = typer.Option(True, help="EIT: one more candidate start per chart at its projection of a "
                                               "3-step Gauss-Newton image."),
    starts: int = typer.Option(8, help="Candidate starts per chart (prior samples); chains start at the best."),
    descent_iter: int = typer.Option(20, help="Riemannian descent steps that move the candidate starts."),
    independence: int = typer.Option(4, help="Independence Metropolis-Hastings steps (t mixture fitted in burn-in) "
                                             "per draw; their proposals give the chart probabilities. 0: off."),
    local_steps: int = typer.Option(0, help="MALA steps per draw after burn-in (0: only the independence steps "
                                            "move the chains after burn-in)."),
    init: str = typer.Option("descent", help="Chain starts and proposal: descent (descent starts, MALA burn-in) "
                                             "or smc (tempered SMC from the chart prior, no burn-in)."),
    particles: int = typer.Option(64, help="SMC particles per chart (--init smc)."),
    importance_samples: int = typer.Option(256, help="Importance samples per chart (chart probabilities) with "
                                                     "--independence 0."),
    save_samples: int = typer.Option(200, help="Images of this many posterior draws in samples.npz."),
    seed: int = typer.Option(0, help="Random seed (chains, importance sample; blur --heldout: the noise)."),
    out: Path = typer.Option(Path("posterior"), help="Output directory."),
) -> None:
    """Sample the posterior on the atlas: writes mean/std/q05/q95 .npy, samples.npz, diagnostics.json, PNG."""
    from eit_manifold.pipelines.posterior import PosteriorConfig, run_posterior

    config = PosteriorConfig(
        data=None if data is None else str(data), out=str(out), operator=operator, atlas=atlas, samples=samples,
        chains=chains, burn_in=burn_in, thin=thin, noise_level=noise_level, heldout=heldout, mesh=mesh,
        mesh_size=mesh_size, sigma_min=sigma_min, sigma_max=sigma_max, image_size=image_size,
        warm_start=warm_start, starts=starts, descent_iter=descent_iter, importance_samples=importance_samples,
        independence=independence, local_steps=local_steps, init=init, particles=particles,
        save_samples=save_samples, seed=seed, progress=is_root(),
    )
    diag = run_posterior(config)
    for c in diag["charts"]:
        echo(f"chart {c['chart']}: probability {c['probability']:.3g}, ESS {c['ess_min']:.0f}, "
             f"R-hat {c['rhat_max']:.3f}, acceptance {_rate(c['acceptance_rate'])}, "
             f"independence acceptance {_rate(c['independence_acceptance'])}")
    if "truth" in diag:
        echo(f"90% interval coverage of the truth: {diag['truth']['coverage_90']:.3f}")
    for w in diag["warnings"]:
        echo(f"warning: {w}")
    echo(f"{diag['seconds']:.1f} s; wrote {out}/")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
