"""The deblurring experiment (DESIGN section 5): atlas K=2 vs K=1 vs Tikhonov vs TV on bars.

For ``n`` held-out bar images (test split, dataset seed ``seed``) at the atlas' resolution the data
are ``y = k * (x - b) + b + eta N(0, I)`` with the paper's kernel (40 x 40, std 15 px at
128 x 128) scaled to the image size. Methods:

* ``atlas-K2`` / ``atlas-K1``: Riemannian descent of ``F(x) = 0.5 ||A(x) - y||^2`` on the learned
  atlas (multi-start from prior samples, best final misfit kept) -- no regularisation parameter;
* ``tikhonov`` and ``tv``: :mod:`eit_manifold.baselines.image` with the discrepancy principle.

Metrics per image: PSNR (data range = the true image's range, i.e. the bar contrast), SSIM,
relative L2 error, relative data misfit and the bar-angle error modulo pi, where the angle of every
reconstruction is estimated the same way (:func:`bar_angle`, principal axis of the positive
contrast).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from eit_manifold.baselines.image import tikhonov_deblur, tv_deblur
from eit_manifold.data.images import BAR_BACKGROUND, BAR_CONTRAST, make_images, pixel_grid
from eit_manifold.io import check_output_dir, staged_dir, write_bytes_atomic, write_json
from eit_manifold.manifold import load_atlas
from eit_manifold.metrics import angle_error, psnr, relative_data_misfit, relative_l2, ssim
from eit_manifold.operators.blur import GaussianBlur
from eit_manifold.optim import RiemannianDescent
from eit_manifold.optim.riemannian import RETRACTIONS
from eit_manifold.seeding import seed_everything
from eit_manifold.validation import check_choice, check_float, check_int

METRICS = ("psnr", "ssim", "rel_error", "angle_error_deg", "data_misfit")
METRIC_LABELS = {
    "psnr": "PSNR [dB]",
    "ssim": "SSIM",
    "rel_error": "relative error",
    "angle_error_deg": "bar-angle error [deg]",
    "data_misfit": "relative data misfit",
}


@dataclass
class DeblurConfig:
    """Settings of the deblurring experiment.

    Attributes
    ----------
    atlas : str
        Bundled atlas name or directory of the K > 1 atlas.
    atlas_k1 : str, optional
        The K = 1 atlas (default ``f"{atlas}-k1"``); empty string to skip it.
    noise : float
        Noise standard deviation ``eta`` (bar contrast is 0.25).
    n : int
        Number of held-out images.
    seed : int
        Dataset seed of the test split and seed of noise and multi-starts.
    n_starts : int
        Prior samples per atlas reconstruction.
    max_iter : int
        Iteration limit of the descent.
    retraction : str
        ``"projection"`` or ``"chart"``.
    n_figure : int
        Images shown in the figure grid.
    """

    atlas: str = "bars"
    atlas_k1: str | None = None
    noise: float = 0.1
    n: int = 20
    seed: int = 0
    n_starts: int = 8
    max_iter: int = 60
    retraction: str = "projection"
    n_figure: int = 6

    def __post_init__(self) -> None:
        check_float("--noise", self.noise, 0.0, 10.0, lo_open=True)
        check_int("--n", self.n, 1, 10_000)
        check_int("--seed", self.seed, 0, 999)
        check_int("--starts", self.n_starts, 1, 1000)
        check_int("--max-iter", self.max_iter, 0, 100_000)
        check_choice("--retraction", self.retraction, RETRACTIONS)
        check_int("n_figure", self.n_figure, 0, 1000)
        if self.atlas_k1 is None:
            self.atlas_k1 = f"{self.atlas}-k1"


def bar_angle(images: Tensor | np.ndarray, background: float = BAR_BACKGROUND) -> np.ndarray:
    """Orientation in ``[0, pi)`` of the principal axis of ``max(x - b, 0)`` for ``(B, H, W)``.

    Uses the coordinates of :func:`eit_manifold.data.images.pixel_grid` (x right, y up), so for a
    clean bar it recovers the generating angle modulo pi.
    """
    x = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    gx, gy = pixel_grid(x.shape[-1])
    m = np.clip(x - background, 0.0, None)
    mass = m.sum(axis=(1, 2)).clip(min=1e-30)
    cx = (m * gx).sum(axis=(1, 2)) / mass
    cy = (m * gy).sum(axis=(1, 2)) / mass
    dx, dy = gx[None] - cx[:, None, None], gy[None] - cy[:, None, None]
    sxx, syy, sxy = ((m * a * b).sum(axis=(1, 2)) for a, b in ((dx, dx), (dy, dy), (dx, dy)))
    return np.mod(0.5 * np.arctan2(2 * sxy, sxx - syy), np.pi)


def misfit_objective(op: GaussianBlur, y: Tensor) -> Callable[[Tensor], Tensor]:
    """``F(x) = 0.5 ||A(x) - y||^2`` per item, evaluated in float64."""

    def objective(x: Tensor) -> Tensor:
        r = op(x.to(torch.float64)) - y
        return 0.5 * (r**2).flatten(1).sum(dim=1)

    return objective


def reconstruct_atlas(
    atlas_name: str, y: Tensor, op: GaussianBlur, cfg: DeblurConfig, label: str
) -> tuple[Tensor, list[dict]]:
    """Riemannian descent on ``atlas_name`` for every image of ``y`` ``(N, H, W)``."""
    atlas = load_atlas(atlas_name)
    atlas.eval()
    if atlas.image_shape != tuple(y.shape[-2:]):
        raise ValueError(
            f"atlas {atlas_name!r} has image shape {atlas.image_shape}, data {tuple(y.shape[-2:])}"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    out, info = [], []
    for yi in tqdm(y, desc=label, leave=False):
        opt = RiemannianDescent(
            atlas, misfit_objective(op, yi[None]), retraction=cfg.retraction, max_iter=cfg.max_iter
        )
        res = opt.run(n_starts=cfg.n_starts, generator=gen)
        out.append(res.x.to(torch.float64))
        info.append(
            {
                "objective": res.objective,
                "chart": res.chart,
                "n_iter": res.n_iter,
                "n_switches": int(res.history.switched.sum()),
            }
        )
    return torch.stack(out), info


def evaluate(
    x_hat: Tensor, x_true: Tensor, y: Tensor, op: GaussianBlur, angles: np.ndarray
) -> dict:
    """Per-image metrics of reconstructions ``x_hat`` ``(N, H, W)``."""
    x_hat = x_hat.to(torch.float64)
    return {
        "psnr": psnr(x_hat, x_true, batch=True),
        "ssim": ssim(x_hat, x_true, batch=True),
        "rel_error": relative_l2(x_hat, x_true, batch=True),
        "angle_error_deg": np.degrees(angle_error(bar_angle(x_hat), angles)),
        "data_misfit": relative_data_misfit(op(x_hat), y, batch=True),
    }


def summarise(values: dict[str, np.ndarray]) -> dict:
    """Mean, standard deviation and per-image values of each metric."""
    return {
        k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": np.asarray(v).tolist()}
        for k, v in values.items()
    }


def markdown_table(methods: dict[str, dict], cfg: DeblurConfig) -> str:
    """The results table (mean +- std over the images) as markdown."""
    cols = ("psnr", "ssim", "rel_error", "angle_error_deg")
    lines = [
        f"# Deblurring bars: {cfg.n} held-out images, noise std {cfg.noise:g} "
        f"(contrast {BAR_CONTRAST:g}), seed {cfg.seed}",
        "",
        "| method | " + " | ".join(METRIC_LABELS[c] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, m in methods.items():
        cells = [f"{m[c]['mean']:.3f} ± {m[c]['std']:.3f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_deblur(cfg: DeblurConfig, out: str | Path) -> dict:
    """Run the experiment and write ``results.json``, ``results.md`` and ``reconstructions.png``.

    Parameters
    ----------
    cfg : DeblurConfig
        Settings.
    out : path-like
        Output directory (created).

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    out = check_output_dir(out, "--out")
    seed_everything(cfg.seed)
    atlas_main = load_atlas(cfg.atlas)
    if atlas_main.image_shape is None:
        raise ValueError(f"atlas {cfg.atlas!r} is not an image atlas")
    size = atlas_main.image_shape[0]
    if cfg.atlas_k1:
        k1 = load_atlas(cfg.atlas_k1)  # checked now, not after the first atlas's reconstructions
        if k1.image_shape is None or tuple(k1.image_shape) != tuple(atlas_main.image_shape):
            raise ValueError(f"atlas {cfg.atlas_k1!r} makes images of shape {k1.image_shape}, {cfg.atlas!r} of "
                             f"{atlas_main.image_shape}: they must agree")
    with staged_dir(out) as stage:
        return _run_deblur(cfg, atlas_main, size, stage)


def _run_deblur(cfg: DeblurConfig, atlas_main, size: int, out: Path) -> dict:
    images, params = make_images("bars", cfg.n, split="test", seed=cfg.seed, size=size)
    x_true = torch.from_numpy(images).to(torch.float64)
    angles = np.array([p["angle"] for p in params])
    op = GaussianBlur.paper(size, background=BAR_BACKGROUND, noise_std=cfg.noise)
    y = op.measure(x_true, torch.Generator().manual_seed(cfg.seed))

    recon: dict[str, Tensor] = {}
    extra: dict[str, object] = {}
    timing: dict[str, float] = {}
    atlases = [(f"atlas K={atlas_main.n_charts}", cfg.atlas)]
    if cfg.atlas_k1:
        atlases.append(("atlas K=1", cfg.atlas_k1))
    for label, name in tqdm(atlases, desc="atlases"):
        t0 = time.perf_counter()
        recon[label], extra[label] = reconstruct_atlas(name, y, op, cfg, label)
        timing[label] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tik = tikhonov_deblur(y, op, cfg.noise)
    timing["Tikhonov"] = time.perf_counter() - t0
    recon["Tikhonov"], extra["Tikhonov"] = tik.x, {"alpha": tik.parameter.tolist()}
    t0 = time.perf_counter()
    tv = tv_deblur(y, op, cfg.noise)
    timing["TV"] = time.perf_counter() - t0
    recon["TV"], extra["TV"] = tv.x, {"lambda": tv.parameter.tolist()}

    methods = {k: summarise(evaluate(v, x_true, y, op, angles)) for k, v in recon.items()}
    results = {
        "config": asdict(cfg),
        "image_size": size,
        "kernel": {"size": op.kernel_size, "std": op.std},
        "true_angles": angles.tolist(),
        "methods": methods,
        "details": extra,
        "seconds": timing,
    }
    write_json(out / "results.json", results)
    write_bytes_atomic(out / "results.md", markdown_table(methods, cfg).encode())
    from eit_manifold.plotting import reconstruction_grid

    k = min(cfg.n_figure, cfg.n)
    columns = {"truth": x_true[:k], "data": y[:k], **{m: v[:k] for m, v in recon.items()}}
    reconstruction_grid(
        {name: v.detach().numpy() for name, v in columns.items()},
        out / "reconstructions.png",
        vmin=BAR_BACKGROUND - 0.1,
        vmax=BAR_BACKGROUND + BAR_CONTRAST + 0.1,
    )
    return results
