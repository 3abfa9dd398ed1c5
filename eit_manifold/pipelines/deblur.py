"""The deblurring experiment (DESIGN section 5): atlas K=2 vs K=1 vs Tikhonov vs TV on bars.

For ``n`` held-out bars of the paper (test split, dataset seed ``seed``) at the atlas' resolution
the data are ``y = k * (x - b) + b + eta N(0, I)`` with the paper's kernel (40 x 40, std 15 px at
128 x 128) scaled to the image size and the operator's noise model (std ``eta = 0.1``). The same
is done for :data:`OUT_OF_FAMILY` images (rectangles no bar image is: a long thin bar, an
off-centre bar, a cross, a square, a dark bar). Methods:

* ``atlas K=2`` / ``atlas K=1``: Riemannian descent of ``F(x) = 0.5 ||A(x) - y||^2`` on the learned
  atlas (multi-start from prior samples, best final misfit kept) -- no regularisation parameter;
* ``Tikhonov`` and ``TV``: :mod:`eit_manifold.baselines.image`, each with one parameter chosen on
  a validation split of training bars (:func:`~eit_manifold.baselines.image.select_parameter`);
* ``constant``: the background ``b`` everywhere, the trivial estimate every method must beat.

Metrics per image: PSNR (data range = the true image's range, i.e. the bar contrast), SSIM,
relative L2 error, relative data misfit and, for the bars, the bar-angle error modulo pi, where
the angle of every reconstruction is estimated the same way (:func:`bar_angle`, principal axis of
the positive contrast).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from eit_manifold.baselines.image import (
    N_VALIDATION,
    ParameterChoice,
    select_parameter,
    tikhonov_deblur,
    tv_deblur,
)
from eit_manifold.data.images import (
    BAR_BACKGROUND,
    BAR_CONTRAST,
    BAR_LENGTH,
    BAR_WIDTH,
    make_images,
    pixel_grid,
    rectangle_coverage,
)
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
    n_val : int
        Validation bars (training split) that choose the baselines' parameters.
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
    n_val: int = N_VALIDATION

    def __post_init__(self) -> None:
        check_float("--noise", self.noise, 0.0, 10.0, lo_open=True)
        check_int("--n", self.n, 1, 10_000)
        check_int("--seed", self.seed, 0, 999)
        check_int("--starts", self.n_starts, 1, 1000)
        check_int("--max-iter", self.max_iter, 0, 100_000)
        check_choice("--retraction", self.retraction, RETRACTIONS)
        check_int("n_figure", self.n_figure, 0, 1000)
        check_int("--n-val", self.n_val, 1, 10_000)
        if self.atlas_k1 is None:
            self.atlas_k1 = f"{self.atlas}-k1"


#: Out-of-family test images: (name, [(angle, length, width, centre, contrast), ...]) in units of
#: ``[-1, 1]^2`` (the paper's bar is ``BAR_LENGTH x BAR_WIDTH`` = 50 x 10 px of 128).
OUT_OF_FAMILY: dict[str, list[tuple[float, float, float, tuple[float, float], float]]] = {
    "long thin bar": [(0.7, 2 * 80 / 128, 2 * 6 / 128, (0.0, 0.0), BAR_CONTRAST)],
    "off-centre bar": [(2.0, BAR_LENGTH, BAR_WIDTH, (0.25, -0.15), BAR_CONTRAST)],
    "cross": [(0.3, BAR_LENGTH, BAR_WIDTH, (0.0, 0.0), BAR_CONTRAST),
              (0.3 + math.pi / 2, BAR_LENGTH, BAR_WIDTH, (0.0, 0.0), BAR_CONTRAST)],
    "square": [(0.0, 2 * 24 / 128, 2 * 24 / 128, (-0.1, 0.1), BAR_CONTRAST)],
    "dark bar": [(1.0, BAR_LENGTH, BAR_WIDTH, (0.0, 0.0), -BAR_CONTRAST)],
}
OUT_OF_FAMILY_NOISE_OFFSET = 104729  # noise seed offset, apart from the test images' noise


def out_of_family_images(size: int) -> Tensor:
    """The :data:`OUT_OF_FAMILY` images, float64 ``(len(OUT_OF_FAMILY), size, size)``.

    Overlapping rectangles (the cross) take the largest contrast, not the sum, so every image
    keeps the bars' two values.
    """
    out = []
    for parts in OUT_OF_FAMILY.values():
        img = np.zeros((size, size))
        for angle, length, width, centre, contrast in parts:
            cover = contrast * rectangle_coverage(angle, length, width, size, centre)
            img = np.where(np.abs(cover) > np.abs(img), cover, img)
        out.append(BAR_BACKGROUND + img)
    return torch.from_numpy(np.stack(out))


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
    atlas = load_atlas(atlas_name, tuple(y.shape[-2:]))
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
    x_hat: Tensor, x_true: Tensor, y: Tensor, op: GaussianBlur, angles: np.ndarray | None = None
) -> dict:
    """Per-image metrics of reconstructions ``x_hat`` ``(N, H, W)`` (bar angles when given)."""
    x_hat = x_hat.to(torch.float64)
    out = {
        "psnr": psnr(x_hat, x_true, batch=True),
        "ssim": ssim(x_hat, x_true, batch=True),
        "rel_error": relative_l2(x_hat, x_true, batch=True),
        "data_misfit": relative_data_misfit(op(x_hat), y, batch=True),
    }
    if angles is not None:
        out["angle_error_deg"] = np.degrees(angle_error(bar_angle(x_hat), angles))
    return out


def summarise(values: dict[str, np.ndarray]) -> dict:
    """Mean, standard deviation, range and per-image values of each metric."""
    return {
        k: {
            "mean": float(np.mean(v)),
            "std": float(np.std(v)),
            "min": float(np.min(v)),
            "max": float(np.max(v)),
            "values": np.asarray(v).tolist(),
        }
        for k, v in values.items()
    }


def beats_constant(methods: dict[str, dict]) -> dict[str, int]:
    """Per method, on how many images its PSNR is above the constant image's."""
    ref = np.asarray(methods["constant"]["psnr"]["values"])
    return {
        name: int(np.sum(np.asarray(m["psnr"]["values"]) > ref))
        for name, m in methods.items()
        if name != "constant"
    }


def markdown_table(methods: dict[str, dict], cfg: DeblurConfig, title: str | None = None) -> str:
    """The results table (mean +- std, PSNR range and wins over the constant image) as markdown."""
    cols = [c for c in ("psnr", "ssim", "rel_error", "angle_error_deg")
            if c in next(iter(methods.values()))]
    n = len(next(iter(methods.values()))["psnr"]["values"])
    wins = beats_constant(methods) if "constant" in methods else {}
    title = title or (
        f"Deblurring the paper's bars: {n} held-out images, noise std {cfg.noise:g} "
        f"(contrast {BAR_CONTRAST:g}), seed {cfg.seed}"
    )
    lines = [
        f"# {title}",
        "",
        "| method | " + " | ".join(METRIC_LABELS[c] for c in cols)
        + " | PSNR min / max | PSNR > constant |",
        "|---|" + "---|" * (len(cols) + 2),
    ]
    for name, m in methods.items():
        cells = [f"{m[c]['mean']:.3f} ± {m[c]['std']:.3f}" for c in cols]
        cells.append(f"{m['psnr']['min']:.2f} / {m['psnr']['max']:.2f}")
        cells.append(f"{wins[name]}/{n}" if name in wins else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_image_table(methods: dict[str, dict], names: list[str]) -> str:
    """PSNR of every method on every named image, as markdown."""
    header = "| image | " + " | ".join(methods) + " |"
    lines = [header, "|---|" + "---|" * len(methods)]
    for i, name in enumerate(names):
        cells = [f"{m['psnr']['values'][i]:.2f}" for m in methods.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reconstruct_all(
    y: Tensor, op: GaussianBlur, cfg: DeblurConfig, atlases: list[tuple[str, str]],
    choices: dict[str, ParameterChoice], tag: str,
) -> tuple[dict[str, Tensor], dict[str, object], dict[str, float]]:
    """Every method on data ``y`` ``(N, H, W)``: reconstructions, details and seconds per method."""
    recon: dict[str, Tensor] = {}
    extra: dict[str, object] = {}
    timing: dict[str, float] = {}
    for label, name in tqdm(atlases, desc=f"atlases ({tag})"):
        t0 = time.perf_counter()
        recon[label], extra[label] = reconstruct_atlas(name, y, op, cfg, f"{label} ({tag})")
        timing[label] = time.perf_counter() - t0
    t0 = time.perf_counter()
    recon["Tikhonov"] = tikhonov_deblur(y, op, choices["tikhonov"].value).x
    timing["Tikhonov"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    recon["TV"] = tv_deblur(y, op, choices["tv"].value).x
    timing["TV"] = time.perf_counter() - t0
    recon["constant"] = torch.full_like(y, op.background)
    return recon, extra, timing


def run_deblur(cfg: DeblurConfig, out: str | Path) -> dict:
    """Run the experiment and write ``results.json``, ``results.md`` and the figures.

    Parameters
    ----------
    cfg : DeblurConfig
        Settings.
    out : path-like
        Output directory (created).

    Returns
    -------
    dict
        The content of ``results.json``: ``methods`` (bars) and ``out_of_family`` hold, per
        method and metric, mean, std, min, max and the per-image values.
    """
    out = check_output_dir(out, "--out")
    seed_everything(cfg.seed)
    atlas_main = load_atlas(cfg.atlas)
    if atlas_main.image_shape is None:
        raise ValueError(f"atlas {cfg.atlas!r} is not an image atlas")
    size = atlas_main.image_shape[0]
    if cfg.atlas_k1:
        # checked now, not after the first atlas's reconstructions
        load_atlas(cfg.atlas_k1, atlas_main.image_shape, f" (those of {cfg.atlas!r})")
    with staged_dir(out) as stage:
        return _run_deblur(cfg, atlas_main, size, stage)


def _run_deblur(cfg: DeblurConfig, atlas_main, size: int, out: Path) -> dict:
    op = GaussianBlur.paper(size, background=BAR_BACKGROUND, noise_std=cfg.noise)
    t0 = time.perf_counter()
    choices = {m: select_parameter(m, op, size, cfg.n_val, cfg.seed) for m in ("tikhonov", "tv")}
    selection_seconds = time.perf_counter() - t0

    images, params = make_images("bars", cfg.n, split="test", seed=cfg.seed, size=size)
    x_true = torch.from_numpy(images).to(torch.float64)
    angles = np.array([p["angle"] for p in params])
    y = op.measure(x_true, torch.Generator().manual_seed(cfg.seed))
    x_oof = out_of_family_images(size)
    y_oof = op.measure(x_oof, torch.Generator().manual_seed(OUT_OF_FAMILY_NOISE_OFFSET + cfg.seed))

    atlases = [(f"atlas K={atlas_main.n_charts}", cfg.atlas)]
    if cfg.atlas_k1:
        atlases.append(("atlas K=1", cfg.atlas_k1))
    recon, extra, timing = reconstruct_all(y, op, cfg, atlases, choices, "bars")
    recon_oof, extra_oof, _ = reconstruct_all(y_oof, op, cfg, atlases, choices, "out of family")

    methods = {k: summarise(evaluate(v, x_true, y, op, angles)) for k, v in recon.items()}
    oof = {k: summarise(evaluate(v, x_oof, y_oof, op)) for k, v in recon_oof.items()}
    results = {
        "config": asdict(cfg),
        "image_size": size,
        "kernel": {"size": op.kernel_size, "std": op.std},
        "noise_model": {"kind": "gaussian", "std": op.noise_model.sigma},
        "true_angles": angles.tolist(),
        "parameters": {m: asdict(c) for m, c in choices.items()},
        "methods": methods,
        "beats_constant": beats_constant(methods),
        "out_of_family_names": list(OUT_OF_FAMILY),
        "out_of_family": oof,
        "out_of_family_beats_constant": beats_constant(oof),
        "details": {"bars": extra, "out_of_family": extra_oof},
        "seconds": {**timing, "parameter selection": selection_seconds},
    }
    write_json(out / "results.json", results)
    text = (
        markdown_table(methods, cfg)
        + f"\nBaseline parameters (validation: {cfg.n_val} training bars, seed {cfg.seed}): "
        + f"Tikhonov alpha = {choices['tikhonov'].value:.4g}, TV lambda = {choices['tv'].value:.4g}\n\n"
        + markdown_table(oof, cfg, title=f"Out-of-family images, noise std {cfg.noise:g}")
        + "\n"
        + per_image_table(oof, list(OUT_OF_FAMILY))
        + "\nPSNR [dB] per held-out bar (true angle):\n\n"
        + per_image_table(methods, [f"bar {i} ({math.degrees(a):.0f} deg)" for i, a in enumerate(angles)])
    )
    write_bytes_atomic(out / "results.md", text.encode())
    from eit_manifold.plotting import reconstruction_grid

    k = min(cfg.n_figure, cfg.n)
    vmin, vmax = BAR_BACKGROUND - BAR_CONTRAST - 0.1, BAR_BACKGROUND + BAR_CONTRAST + 0.1
    for path, truth, data, rec, m in (
        ("reconstructions.png", x_true, y, recon, k),
        ("out_of_family.png", x_oof, y_oof, recon_oof, len(x_oof)),
    ):
        columns = {"truth": truth[:m], "data": data[:m], **{n: v[:m] for n, v in rec.items()}}
        reconstruction_grid(
            {name: v.detach().numpy() for name, v in columns.items()}, out / path,
            vmin=vmin, vmax=vmax,
        )
    return results
