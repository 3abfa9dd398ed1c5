"""KTC2023 pipeline: calibrate on ``ref.mat``, reconstruct every ``dataK.mat``, segment, score.

Reconstruction methods are plain functions ``method(context, change) -> image``: ``change`` is the
flattened data change ``U - U_ref`` (P*M,) on the kept patterns/measurements, ``context`` a
:class:`ReconstructionContext` (calibrated forward model, linearisation, pixel basis, noise model),
and the returned image (any ``h x w``, on [-R, R]^2, row 0 at the top, same frame as the ground
truths) is the conductivity change. The pipeline resamples it to 256 x 256 and segments it with
the fixed rule of :mod:`eit_manifold.ktc.segmentation` (a method that segments by itself returns a
:class:`Segmentation`). New methods (e.g. the atlas) plug in with
:func:`register_method`.

Regularisation rules (one setting for every case and level, never tuned per case):

* ``linear``: the organisers' smoothness prior, standard deviation ``0.05 sigma0`` (their 0.05 at
  ``sigma0 = 1``), correlation length ``R``; noise model ``eta1 = 0.05``, ``eta2 = 0.01``.
* ``tv``: the same noise model; TV weight ``lam = 1 / (s l)`` with the smoothness prior's ``s`` and
  ``l`` (a unit jump of one prior std over the prior's length costs about as much as in the
  Gaussian prior), smoothing ``beta = 0.01 s / h`` for pixel size ``h``.
* ``atlas``: Riemannian descent on the bundled ``ktc`` atlas, same noise model, contrast
  ``sigma = sigma0 exp(ln(10) x)`` (:mod:`eit_manifold.ktc.atlas_method`).
* ``absolute``: absolute imaging from ``U = U_ref + change`` with the calibrated model plus channel
  offsets, the ``linear`` method's prior and noise model, :data:`ABSOLUTE_ITERATIONS` Gauss-Newton steps.
* ``learned``: ``linear`` reconstructions (several prior strengths) segmented by a U-Net trained on
  simulated phantoms of the calibrated tank (:mod:`eit_manifold.pipelines.ktc_segmenter`); it returns a
  :class:`Segmentation` instead of a change image, so the Otsu rule is not applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
from scipy.ndimage import map_coordinates

from eit_manifold.baselines.eit_linear import (
    PixelBasis,
    grid_gradient,
    jacobian_in_basis,
    noise_std,
    pixel_basis,
    smoothness_prior_factor,
    tikhonov_solve,
    tv_solve,
)
from eit_manifold.io import check_output_dir, save_npy_atomic, staged_dir, write_bytes_atomic, write_json
from eit_manifold.ktc.calibration import Calibration, calibrate, ktc_mesh, ktc_tank
from eit_manifold.ktc.data import (
    IMAGE_SHAPE,
    RADIUS,
    KTCMeasurement,
    check_level,
    read_ktc,
    read_truth,
    restrict_like,
)
from eit_manifold.ktc.score import check_segmentation, class_scores
from eit_manifold.ktc.segmentation import MIN_COMPONENT_PIXELS, segment
from eit_manifold.operators.eit import CEMForwardModel
from eit_manifold.validation import check_choice, check_input_dir, check_int, check_seed

if TYPE_CHECKING:
    from eit_manifold.ktc.segmenter import SegmenterNet

NOISE_RELATIVE = 0.05
NOISE_ABSOLUTE = 0.01
PRIOR_STD = 0.05  # times sigma0
PRIOR_LENGTH = RADIUS
ABSOLUTE_ITERATIONS = 5
SIGMA_FLOOR = 1e-3  # times sigma0: keeps a resistive target's conductivity positive
BUNDLED_SEGMENTER = Path(__file__).resolve().parent.parent / "models" / "ktc-segmenter"
SEGMENTER_SIGMA_TOLERANCE = 0.1  # a reference 10 % off the training water is another tank or liquid


@dataclass
class ReconstructionContext:
    """Everything a method needs, built once per set of kept data.

    Attributes
    ----------
    model : CEMForwardModel
        Calibrated forward model (kept patterns and measurements).
    calibration : Calibration
        Fitted background and contact impedances.
    reference : KTCMeasurement
        The reference data on the kept set.
    basis : PixelBasis
        Pixel grid of the unknowns.
    jacobian : array (P*M, n_active)
        Derivative of the data w.r.t. the pixel values at the calibrated background.
    std : array (P*M,)
        Noise standard deviations.
    cache : dict
        Per-method storage (e.g. factorised priors) reused over the cases.
    """

    model: CEMForwardModel
    calibration: Calibration
    reference: KTCMeasurement
    basis: PixelBasis
    jacobian: np.ndarray
    std: np.ndarray
    cache: dict = field(default_factory=dict)

    @property
    def sigma0(self) -> float:
        """Calibrated background conductivity."""
        return self.calibration.sigma


Method = Callable[[ReconstructionContext, np.ndarray], np.ndarray]
METHODS: dict[str, Method] = {}


def register_method(name: str, method: Method) -> None:
    """Make ``method`` available as ``--method name``."""
    METHODS[name] = method


def _prior(ctx: ReconstructionContext) -> np.ndarray:
    if "prior" not in ctx.cache:
        ctx.cache["prior"] = smoothness_prior_factor(ctx.basis.centres, PRIOR_LENGTH, PRIOR_STD * ctx.sigma0)
    return ctx.cache["prior"]


def _linear_solution(ctx: ReconstructionContext, change: np.ndarray, prior_scale: float = 1.0) -> np.ndarray:
    """Pixel coefficients of the ``linear`` method (one change (P*M,) or several as columns);
    ``prior_scale`` multiplies the prior's standard deviation (> 1: weaker regularisation)."""
    key = ("linear_map", float(prior_scale))
    if key not in ctx.cache:
        # The MAP estimate is linear in the data: one solve for the whole map, then every case
        # (and every simulated training sample) is a matrix product.
        ctx.cache[key] = tikhonov_solve(ctx.jacobian, np.eye(ctx.jacobian.shape[0]), ctx.std, _prior(ctx) / prior_scale)
    return ctx.cache[key] @ change


def linear_images(ctx: ReconstructionContext, changes: np.ndarray, prior_scale: float = 1.0) -> np.ndarray:
    """``linear`` reconstructions (k, H, W) of data changes given as columns (P*M, k), the prior's
    standard deviation multiplied by ``prior_scale``."""
    x = _linear_solution(ctx, np.asarray(changes, dtype=float).reshape(ctx.jacobian.shape[0], -1), prior_scale)
    return np.stack([ctx.basis.to_image(col) for col in x.T])


def segmenter_inputs(ctx: ReconstructionContext, changes: np.ndarray, prior_scales: Sequence[float]) -> np.ndarray:
    """Inputs (k, C, H, W) of the learned segmenter for data changes given as columns (P*M, k): the
    ``linear`` reconstructions with the prior's standard deviation multiplied by each of the ``C``
    ``prior_scales``, divided by the water conductivity."""
    return np.stack([linear_images(ctx, changes, s) for s in check_prior_scales(prior_scales)], axis=1) / ctx.sigma0


def check_prior_scales(prior_scales: Sequence[float]) -> tuple[float, ...]:
    """``prior_scales`` as a tuple of floats; ``ValueError`` unless non-empty, finite and positive."""
    scales = tuple(float(s) for s in prior_scales)
    if not scales or not all(np.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"prior scales must be a non-empty list of positive numbers, got {list(prior_scales)}")
    return scales


def _tv_solution(ctx: ReconstructionContext, change: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Pixel coefficients of the ``tv`` method, lagged diffusivity from ``x0`` (the ``linear`` solution)."""
    if "gradient" not in ctx.cache:
        ctx.cache["gradient"] = grid_gradient(ctx.basis)
    s = PRIOR_STD * ctx.sigma0
    h = ctx.basis.pixel_size
    x, _ = tv_solve(ctx.jacobian, change, ctx.std, ctx.cache["gradient"], lam=1.0 / (s * PRIOR_LENGTH),
                    cell_area=h * h, beta=0.01 * s / h, x0=x0)
    return x


def linear_method(ctx: ReconstructionContext, change: np.ndarray) -> np.ndarray:
    """Linearised difference reconstruction with the smoothness prior (organisers' baseline)."""
    return ctx.basis.to_image(_linear_solution(ctx, change))


def tv_method(ctx: ReconstructionContext, change: np.ndarray) -> np.ndarray:
    """Linearised difference reconstruction with total variation (rule in the module docstring)."""
    return ctx.basis.to_image(_tv_solution(ctx, change, _linear_solution(ctx, change)))


def absolute_method(ctx: ReconstructionContext, change: np.ndarray) -> np.ndarray:
    """Absolute imaging: MAP estimate of ``sigma = sigma0 + B x`` from the case's own data.

    Uses ``U = U_ref + change`` and the calibrated absolute model ``F(sigma) + c`` (``c`` the
    channel offsets) with the ``linear`` method's noise model and smoothness prior (centred on the
    calibrated background); :data:`ABSOLUTE_ITERATIONS` Gauss-Newton steps, each halved until the
    MAP objective decreases. Returns ``sigma - sigma0`` on the pixel grid.
    """
    u = ctx.reference.data.ravel() + change
    prior = _prior(ctx)
    basis = ctx.basis.matrix
    floor = SIGMA_FLOOR * ctx.sigma0

    def solve(x: np.ndarray):
        result = ctx.model.solve(np.maximum(ctx.sigma0 + basis @ x, floor))
        r = (u - (result.measurements + ctx.calibration.offsets).ravel()) / ctx.std
        return result, r, 0.5 * (r @ r) + 0.5 * np.sum((prior @ x) ** 2)

    x = np.zeros(basis.shape[1])
    result, r, phi = solve(x)
    for _ in range(ABSOLUTE_ITERATIONS):
        jw = jacobian_in_basis(ctx.model, result, basis) / ctx.std[:, None]
        lhs = jw.T @ jw + prior.T @ prior
        step = scipy.linalg.solve(lhs, jw.T @ r - prior.T @ (prior @ x), assume_a="pos")
        for _ in range(6):  # halve the step until the objective decreases
            trial = solve(x + step)
            if trial[2] < phi:
                break
            step = 0.5 * step
        else:
            break
        x, (result, r, phi) = x + step, trial
    return ctx.basis.to_image(x)


def segmented_image(image: np.ndarray, size: int) -> np.ndarray:
    """The fixed segmentation of a change image as values -1 (resistive), 0, +1 (conductive) on a
    ``size x size`` grid (block means of the 256 x 256 segmentation; ``size`` must divide 256)."""
    if IMAGE_SHAPE[0] % size:
        raise ValueError(f"size must divide {IMAGE_SHAPE[0]}, got {size}")
    labels = image_and_segmentation(image)[1]
    values = np.select([labels == 1, labels == 2], [-1.0, 1.0], 0.0)
    b = IMAGE_SHAPE[0] // size
    return values.reshape(size, b, size, b).mean(axis=(1, 3))


def atlas_method(ctx: ReconstructionContext, change: np.ndarray) -> np.ndarray:
    """Riemannian descent on the ``ktc`` atlas (rule in :mod:`eit_manifold.ktc.atlas_method`).

    Warm starts: the segmentations of the ``linear`` and ``tv`` reconstructions. Returns
    ``sigma0 x`` for the best atlas image ``x``: a symmetric contrast (targets at about
    ``+-sigma0``), so the magnitude-based segmentation treats resistive and conductive targets
    alike (``sigma(x) - sigma0`` would be 10 times larger for conductive than resistive ones).
    """
    from eit_manifold.ktc.atlas_method import AtlasMethodConfig, atlas_reconstruction
    from eit_manifold.manifold import load_atlas
    from eit_manifold.operators.eit import EITOperator

    config = ctx.cache.setdefault("atlas_config", AtlasMethodConfig())
    if "atlas" not in ctx.cache:
        atlas = load_atlas(config.atlas)
        if atlas.image_shape is None:
            raise ValueError(f"atlas {config.atlas!r} does not make images")
        ctx.cache["atlas"] = atlas
        ctx.cache["atlas_operator"] = EITOperator.from_model(ctx.model, tuple(atlas.image_shape))
    atlas, operator = ctx.cache["atlas"], ctx.cache["atlas_operator"]
    size = atlas.image_shape[0]
    x_linear = _linear_solution(ctx, change)  # also the start of the TV solve: computed once
    warm = np.stack([segmented_image(ctx.basis.to_image(x), size)
                     for x in (x_linear, _tv_solution(ctx, change, x_linear))])
    x, details = atlas_reconstruction(operator, atlas, ctx.sigma0, change, ctx.std, warm, config)
    ctx.cache["details"] = details
    return ctx.sigma0 * x


@dataclass(frozen=True)
class Segmentation:
    """What a method returns when it segments by itself (instead of a change image).

    Attributes
    ----------
    labels : array (256, 256) uint8
        Classes 0/1/2 on the truth grid.
    image : array (h, w)
        The image to show beside it (e.g. the method's input reconstruction).
    """

    labels: np.ndarray
    image: np.ndarray


def _segmenter(ctx: ReconstructionContext) -> tuple[SegmenterNet, dict]:
    """The learned segmenter (bundled, or ``ctx.cache["segmenter_path"]``) and its metadata, checked
    against ``ctx``."""
    if "segmenter" not in ctx.cache:
        from eit_manifold.ktc.segmenter import load_segmenter

        path = ctx.cache.get("segmenter_path") or BUNDLED_SEGMENTER
        net, meta = load_segmenter(path)
        hint = "train one with `eit-manifold ktc-train DATA_DIR --level N --out DIR` and pass --segmenter DIR"
        kept = (ctx.reference.patterns.tolist(), ctx.reference.measurements.tolist())
        if (meta.get("patterns"), meta.get("measurements")) != kept:
            raise ValueError(f"segmenter {path} was trained for level {meta.get('level')}'s patterns and "
                             f"measurements, not for these (level {ctx.reference.level}); {hint}")
        if meta.get("grid") != ctx.basis.shape[0]:
            raise ValueError(f"segmenter {path} was trained on a {meta.get('grid')}-pixel grid, the run uses "
                             f"{ctx.basis.shape[0]}; pass --grid {meta.get('grid')} or {hint}")
        if not abs(meta.get("sigma0", np.nan) / ctx.sigma0 - 1) <= SEGMENTER_SIGMA_TOLERANCE:
            raise ValueError(f"segmenter {path} was trained for water conductivity {meta.get('sigma0')}, this "
                             f"reference calibrates to {ctx.sigma0:.4g}; {hint}")
        scales = meta.get("prior_scales", [1.0])  # networks before multi-channel inputs: the linear method's
        if len(scales) != net.channels:
            raise ValueError(f"segmenter {path} has {net.channels} input channel(s) but {len(scales)} prior scales "
                             f"{scales} in its config.json")
        meta = {**meta, "prior_scales": check_prior_scales(scales)}
        ctx.cache["segmenter"] = net, meta
    return ctx.cache["segmenter"]


def learned_method(ctx: ReconstructionContext, change: np.ndarray) -> Segmentation:
    """``linear`` reconstructions (the network's ``prior_scales``, :func:`segmenter_inputs`) segmented
    by the learned U-Net (:mod:`eit_manifold.ktc.segmenter`) trained on simulated phantoms for this
    tank (:mod:`eit_manifold.pipelines.ktc_segmenter`); target components smaller than
    :data:`~eit_manifold.ktc.segmentation.MIN_COMPONENT_PIXELS` become water. The image shown
    beside the classes is the ``linear`` method's."""
    from eit_manifold.ktc.segmenter import predict

    net, meta = _segmenter(ctx)
    inputs = segmenter_inputs(ctx, change, meta["prior_scales"])  # a batch of one: (1, C, H, W)
    labels, _ = predict(net, inputs, out_size=IMAGE_SHAPE[0], min_pixels=MIN_COMPONENT_PIXELS)
    return Segmentation(labels[0], linear_method(ctx, change))


register_method("linear", linear_method)
register_method("tv", tv_method)
register_method("atlas", atlas_method)
register_method("absolute", absolute_method)
register_method("learned", learned_method)


def truth_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel centres (x, y) of the 256 x 256 ground-truth grid and its inside-the-tank mask."""
    n = IMAGE_SHAPE[0]
    c = -RADIUS + (np.arange(n) + 0.5) * (2 * RADIUS / n)
    X, Y = np.meshgrid(c, c[::-1])
    return X, Y, np.hypot(X, Y) < RADIUS


def resample(image: np.ndarray) -> np.ndarray:
    """Bilinear resampling of an ``h x w`` image on [-R, R]^2 to the 256 x 256 truth grid."""
    image = np.asarray(image, dtype=float)
    if image.ndim != 2:
        raise ValueError(f"a method must return a 2-D image, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("a method returned non-finite values")
    X, Y, _ = truth_grid()
    h, w = image.shape
    col = (X + RADIUS) / (2 * RADIUS) * w - 0.5
    row = (RADIUS - Y) / (2 * RADIUS) * h - 0.5
    return map_coordinates(image, [row, col], order=1, mode="nearest")


def image_and_segmentation(result: np.ndarray | Segmentation) -> tuple[np.ndarray, np.ndarray]:
    """A method's output as (change image, segmentation), both 256 x 256: a change image is
    segmented by the fixed rule, a :class:`Segmentation` is taken as it is."""
    if isinstance(result, Segmentation):
        return resample(result.image), check_segmentation("the method's segmentation", result.labels)
    image = resample(result)
    return image, segment(image, truth_grid()[2])


@dataclass
class KTCConfig:
    """Options of :func:`run_ktc`."""

    data_dir: str
    out: str
    method: str = "linear"
    truth_dir: str | None = None
    level: int = 1
    seed: int = 0
    grid: int = 48
    per_electrode: bool = True
    segmenter: str | None = None


def build_context(reference: KTCMeasurement, grid: int, per_electrode: bool = True) -> ReconstructionContext:
    """Calibrate on ``reference`` and linearise at the calibrated background."""
    cal = calibrate(reference, ktc_mesh(ktc_tank()), per_electrode=per_electrode)
    model = cal.forward_model(reference)  # calibrated geometry, impedances and current convention
    result = model.solve(np.full(model.n_cells, cal.sigma))
    basis = pixel_basis(model, grid)
    jac = jacobian_in_basis(model, result, basis.matrix)
    std = noise_std(reference.data, NOISE_RELATIVE, NOISE_ABSOLUTE)
    return ReconstructionContext(model, cal, reference, basis, jac, std)


def _data_files(data_dir: Path) -> list[Path]:
    data_dir = check_input_dir(data_dir, "KTC data directory")
    files = sorted(data_dir.glob("data*.mat"), key=lambda p: (len(p.stem), p.stem))
    if not files:
        raise FileNotFoundError(f"no data*.mat files in {data_dir}")
    if not (data_dir / "ref.mat").is_file():
        raise FileNotFoundError(f"{data_dir} has data files but no ref.mat beside them")
    return files


MAX_GRID = 256


def check_ktc(config: KTCConfig) -> tuple[KTCMeasurement, list[tuple[Path, KTCMeasurement, np.ndarray | None]]]:
    """Every check of :func:`run_ktc` before the calibration: options, every data file, the
    reference, every truth (``--truth``: a directory with ``trueK.mat`` for every ``dataK.mat``), the
    segmenter and the output directory. Returns the reference and, per case, (file, data, truth)."""
    check_choice("--method", config.method, sorted(METHODS))
    level = check_level(config.level)
    check_int("--grid", config.grid, 4, MAX_GRID)
    check_seed("--seed", config.seed)
    data_dir = check_input_dir(config.data_dir, "KTC data directory")
    files = _data_files(data_dir)
    ref_full = read_ktc(data_dir / "ref.mat", level)
    truth_dir = check_input_dir(config.truth_dir, "--truth directory") if config.truth_dir else None
    cases = []
    for path in files:
        data = read_ktc(path, level)
        restrict_like(ref_full, data)
        truth = None
        if truth_dir is not None:
            truth_path = truth_dir / f"true{path.stem.removeprefix('data')}.mat"
            if not truth_path.is_file():
                raise FileNotFoundError(f"--truth directory {truth_dir} has no {truth_path.name} for {path.name}")
            truth = read_truth(truth_path)
        cases.append((path, data, truth))
    if config.method == "learned" or config.segmenter:
        from eit_manifold.ktc.segmenter import load_segmenter

        path = config.segmenter or BUNDLED_SEGMENTER
        _, meta = load_segmenter(path)
        if config.method == "learned" and meta.get("grid") != config.grid:
            raise ValueError(f"segmenter {path} was trained on a {meta.get('grid')}-pixel grid, not --grid "
                             f"{config.grid}; pass --grid {meta.get('grid')}")
        if config.method == "learned" and meta.get("level") != level:
            raise ValueError(f"segmenter {path} was trained for level {meta.get('level')}, not --level {level}; "
                             f"train one with `eit-manifold ktc-train DATA_DIR --level {level} --out DIR`")
    if config.method == "atlas":
        from eit_manifold.ktc.atlas_method import AtlasMethodConfig
        from eit_manifold.manifold import load_atlas

        load_atlas(AtlasMethodConfig().atlas)
    check_output_dir(config.out, "--out")
    return ref_full, cases


def run_ktc(config: KTCConfig) -> dict:
    """Reconstruct every ``data*.mat`` of ``config.data_dir``; write segmentations, figures and scores.

    Every input is checked first (:func:`check_ktc`); the outputs appear in ``config.out`` together
    when every case is done (a failed run writes nothing).

    Returns
    -------
    dict
        Per case: score (when a truth is given), class scores and timings; and the calibration.
    """
    from eit_manifold.ktc.plots import plot_case
    from eit_manifold.seeding import seed_everything

    ref_full, inputs = check_ktc(config)
    seed_everything(config.seed)
    contexts: dict[tuple, ReconstructionContext] = {}
    with staged_dir(config.out) as out:
        cases = []
        for path, data, truth in inputs:
            t0 = time.perf_counter()
            ref = restrict_like(ref_full, data)
            key = (tuple(data.patterns), tuple(data.measurements))
            if key not in contexts:
                contexts[key] = build_context(ref, config.grid, config.per_electrode)
                if config.segmenter:
                    contexts[key].cache["segmenter_path"] = config.segmenter
            ctx = contexts[key]
            image, seg = image_and_segmentation(METHODS[config.method](ctx, (data.data - ref.data).ravel()))
            save_npy_atomic(out / f"{path.stem}.npy", seg)
            case = {"case": path.stem, "level": config.level, "patterns": int(data.shape[0]),
                    "measurements": int(data.shape[1]), "seconds": round(time.perf_counter() - t0, 2)}
            details = ctx.cache.pop("details", None)  # a method's own figures (e.g. the atlas descent's)
            if details is not None:
                case["details"] = details
            if truth is not None:
                scores = class_scores(truth, seg)
                case.update(score=0.5 * (scores[1] + scores[2]), score_resistive=scores[1],
                            score_conductive=scores[2])
            title = f"{path.stem} ({config.method}, level {config.level})"
            plot_case(out / f"{path.stem}.png", image, seg, truth, title=title)
            cases.append(case)
        summary = {"config": asdict(config), "cases": cases,
                   "calibration": [c.calibration.to_dict() for c in contexts.values()]}
        scored = [c["score"] for c in cases if "score" in c]
        if scored:
            summary["mean_score"] = float(np.mean(scored))
        write_json(out / "summary.json", summary)
        if scored:
            write_json(out / "scores.json", {"method": config.method, "level": config.level, "cases": cases,
                                             "mean_score": summary["mean_score"]})
            write_bytes_atomic(out / "scores.md", markdown_table(cases, config.method).encode())
    return summary


def markdown_table(cases: list[dict], method: str) -> str:
    """Score table (one row per case, then the mean) in markdown."""
    lines = ["| case | method | level | score | resistive | conductive |", "| --- | --- | --- | --- | --- | --- |"]
    for c in cases:
        if "score" in c:
            lines.append(f"| {c['case']} | {method} | {c['level']} | {c['score']:.3f} | "
                         f"{c['score_resistive']:.3f} | {c['score_conductive']:.3f} |")
    scored = [c["score"] for c in cases if "score" in c]
    if scored:
        lines.append(f"| mean | {method} | {cases[0]['level']} | {np.mean(scored):.3f} | | |")
    return "\n".join(lines) + "\n"
