"""KTC2023 reconstruction methods on a typed per-level context.

A method is a function ``method(ctx, change) -> MethodResult``: ``change`` is the flattened data
change ``U - U_ref`` (P*M,) on the kept patterns/measurements, ``ctx`` a :class:`ReconstructionContext`
(calibrated forward model, linearisation, pixel basis, noise model, lazily built per-level caches and
the run's shared :class:`Resources`). A :class:`MethodResult` holds the conductivity-change image
(any ``h x w`` on [-R, R]^2, row 0 at the top, the truths' frame), optionally the method's own
segmentation (256 x 256 classes; otherwise the pipeline applies the fixed rule of
:mod:`eit_manifold.ktc.segmentation`) and optional details for ``summary.json``. New methods plug in
with :func:`register_method` (a plug-in may also return a plain image).

Regularisation rules (one setting for every case and level, never tuned per case):

* ``linear``: the organisers' smoothness prior, standard deviation ``0.05 sigma0`` (their 0.05 at
  ``sigma0 = 1``), correlation length ``R``; noise model ``eta1 = 0.05``, ``eta2 = 0.01``.
* ``tv``: the same noise model; TV weight ``lam = 1 / (s l)`` with the smoothness prior's ``s`` and
  ``l``, smoothing ``beta = 0.01 s / h`` for pixel size ``h``.
* ``atlas``: Riemannian descent on the bundled ``ktc`` atlas from the segmentations of ``linear``,
  ``tv`` and ``learned`` (:mod:`eit_manifold.ktc.atlas_method`); the best data fit wins.
* ``absolute``: absolute imaging from ``U = U_ref + change`` with the calibrated model plus channel
  offsets, the ``linear`` method's prior and noise model, :data:`ABSOLUTE_ITERATIONS` Gauss-Newton steps.
* ``learned``: ``linear`` reconstructions (several prior strengths) and the map of removed
  electrodes, segmented by one U-Net for all levels trained on simulations of the calibrated tank
  (:mod:`eit_manifold.pipelines.ktc_segmenter`), then the class-presence rule of its config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.linalg
from scipy.ndimage import map_coordinates

from eit_manifold.baselines.eit_linear import (
    PixelBasis,
    grid_gradient,
    jacobian_in_basis,
    lagged_diffusivity_tv,
    noise_std,
    pixel_basis,
    smoothness_prior_factor,
)
from eit_manifold.ktc.atlas_method import AtlasMethodConfig
from eit_manifold.ktc.calibration import Calibration
from eit_manifold.ktc.data import IMAGE_SHAPE, RADIUS, KTCMeasurement
from eit_manifold.ktc.levels import electrode_mask, level_rows, removed_map
from eit_manifold.ktc.score import check_segmentation
from eit_manifold.ktc.segmentation import MIN_COMPONENT_PIXELS, segment
from eit_manifold.operators.eit import CEMForwardModel
from eit_manifold.optim.least_squares import gauss_newton

if TYPE_CHECKING:
    from eit_manifold.ktc.segmenter import SegmenterNet
    from eit_manifold.manifold import Atlas
    from eit_manifold.operators.eit import EITOperator

NOISE_RELATIVE = 0.05
NOISE_ABSOLUTE = 0.01
PRIOR_STD = 0.05  # times sigma0
PRIOR_LENGTH = RADIUS
ABSOLUTE_ITERATIONS = 5
SIGMA_FLOOR = 1e-3  # times sigma0: keeps a resistive target's conductivity positive
BUNDLED_SEGMENTER = Path(__file__).resolve().parent.parent / "models" / "ktc-segmenter"
SEGMENTER_SIGMA_TOLERANCE = 0.1  # a reference 10 % off the training water is another tank or liquid
SEGMENTER_HINT = ("train one with `eit-manifold ktc-train DATA_DIR --out DIR` and pass --segmenter DIR")


@dataclass(frozen=True)
class MethodOptions:
    """Run-wide settings of the methods (one setting for every case and level).

    Attributes
    ----------
    atlas : AtlasMethodConfig
        The atlas method's settings.
    segmenter : str, optional
        Network of the ``learned`` method (a ``ktc-train`` output directory); None: the bundled one.
    atlas_learned_start : bool
        Whether the atlas method also starts from the ``learned`` segmentation.
    """

    atlas: AtlasMethodConfig = AtlasMethodConfig()
    segmenter: str | None = None
    atlas_learned_start: bool = True


class Resources:
    """What every level's context shares: the options and the (lazily loaded) atlas and network."""

    def __init__(self, options: MethodOptions | None = None):
        self.options = options or MethodOptions()
        self._atlas: Atlas | None = None
        self._segmenter: tuple[SegmenterNet, dict] | None = None

    def atlas(self) -> Atlas:
        """The atlas of ``options.atlas`` (loaded once)."""
        if self._atlas is None:
            from eit_manifold.manifold import load_atlas

            atlas = load_atlas(self.options.atlas.atlas)
            if atlas.image_shape is None:
                raise ValueError(f"atlas {self.options.atlas.atlas!r} does not make images")
            self._atlas = atlas
        return self._atlas

    def segmenter(self) -> tuple[SegmenterNet, dict]:
        """The ``learned`` method's network and config (loaded once)."""
        if self._segmenter is None:
            from eit_manifold.ktc.segmenter import load_segmenter

            path = self.options.segmenter or BUNDLED_SEGMENTER
            net, meta = load_segmenter(path)
            self._segmenter = net, {**meta, "path": str(path)}
        return self._segmenter


@dataclass
class ReconstructionContext:
    """Everything a method needs for one kept set (one level), built once per run.

    Attributes
    ----------
    model : CEMForwardModel
        Calibrated forward model (kept patterns and measurements).
    calibration : Calibration
        Fitted background, geometry and contact impedances.
    reference : KTCMeasurement
        The reference data on the kept set.
    basis : PixelBasis
        Pixel grid of the unknowns.
    jacobian : array (P*M, n_active)
        Derivative of the data w.r.t. the pixel values at the calibrated background.
    std : array (P*M,)
        Noise standard deviations.
    resources : Resources
        Shared by the contexts of one run (options, atlas, network).
    offsets : array (M,), optional
        Channel offsets of the kept measurements (default: the calibration's, which must then be
        on the same kept set).
    """

    model: CEMForwardModel
    calibration: Calibration
    reference: KTCMeasurement
    basis: PixelBasis
    jacobian: np.ndarray
    std: np.ndarray
    resources: Resources = field(default_factory=Resources)
    offsets: np.ndarray | None = None
    _prior: np.ndarray | None = field(default=None, init=False, repr=False)
    _gradient: Any = field(default=None, init=False, repr=False)
    _linear_maps: dict[float, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _grams: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)
    _atlas_operator: EITOperator | None = field(default=None, init=False, repr=False)

    @property
    def sigma0(self) -> float:
        """Calibrated background conductivity."""
        return self.calibration.sigma

    @property
    def channel_offsets(self) -> np.ndarray:
        """Channel offsets (M,) of the kept measurements (absolute predictions are ``F + offsets``)."""
        c = self.calibration.offsets if self.offsets is None else self.offsets
        return np.broadcast_to(np.asarray(c, dtype=float), (self.reference.data.shape[1],))

    @property
    def options(self) -> MethodOptions:
        """The run's method options."""
        return self.resources.options

    def prior(self) -> np.ndarray:
        """Factor of the smoothness prior's precision (``linear`` method)."""
        if self._prior is None:
            self._prior = smoothness_prior_factor(self.basis.centres, PRIOR_LENGTH, PRIOR_STD * self.sigma0)
        return self._prior

    def gradient(self):
        """The pixel grid's gradient operator (``tv``)."""
        if self._gradient is None:
            self._gradient = grid_gradient(self.basis)
        return self._gradient

    def linear_map(self, prior_scale: float = 1.0) -> np.ndarray:
        """The ``linear`` MAP estimate as a matrix (n_active, P*M), prior std times ``prior_scale``.

        The estimate is linear in the data: one solve for the whole map, then every case (and every
        simulated training sample) is a matrix product.
        """
        key = float(prior_scale)
        if key not in self._linear_maps:
            # (J^T W J + L^T L / s^2)^{-1} J^T W, W = diag(std^-2): the Gram matrices are shared by the
            # prior scales (this is tikhonov_solve with the identity as data, without multiplying by it)
            if self._grams is None:
                jw = self.jacobian / self.std[:, None]
                self._grams = jw.T @ jw, self.prior().T @ self.prior()
            data_gram, prior_gram = self._grams
            rhs = (self.jacobian / self.std[:, None] ** 2).T
            self._linear_maps[key] = scipy.linalg.solve(data_gram + prior_gram / key**2, rhs, assume_a="pos")
        return self._linear_maps[key]

    def atlas_operator(self) -> EITOperator:
        """The calibrated model as a torch operator on the atlas' images."""
        if self._atlas_operator is None:
            from eit_manifold.operators.eit import EITOperator

            self._atlas_operator = EITOperator.from_model(self.model, tuple(self.resources.atlas().image_shape))
        return self._atlas_operator


@dataclass(frozen=True)
class MethodResult:
    """What a method returns.

    Attributes
    ----------
    image : array (h, w)
        Conductivity change (or the image to show beside ``labels``).
    labels : array (256, 256) uint8, optional
        The method's own segmentation (classes 0/1/2); None: the pipeline applies the fixed rule.
    details : dict, optional
        Method figures for ``summary.json``.
    """

    image: np.ndarray
    labels: np.ndarray | None = None
    details: dict | None = None


Method = Callable[[ReconstructionContext, np.ndarray], "MethodResult | np.ndarray"]
KTC_METHODS: dict[str, Method] = {}


def register_method(name: str, method: Method) -> None:
    """Make ``method`` available as ``--method name``."""
    KTC_METHODS[name] = method


# ---------------------------------------------------------------- contexts


def build_context(
    reference: KTCMeasurement, grid: int, calibration: Calibration, resources: Resources | None = None
) -> ReconstructionContext:
    """Linearise the calibrated model at the calibrated background on ``reference``'s kept set."""
    model = calibration.forward_model(reference)
    result = model.solve(np.full(model.n_cells, calibration.sigma))
    basis = pixel_basis(model, grid)
    jac = jacobian_in_basis(model, result, basis.matrix)
    std = noise_std(reference.data, NOISE_RELATIVE, NOISE_ABSOLUTE)
    return ReconstructionContext(model, calibration, reference, basis, jac, std, resources or Resources())


def sub_context(base: ReconstructionContext, reference: KTCMeasurement) -> ReconstructionContext:
    """The context of a subset of ``base``'s data (a higher level): the same calibration, the
    Jacobian's rows of the kept data (no new linearisation), a model on the kept patterns, the
    noise model of the kept reference data, the same shared resources."""
    if (np.array_equal(reference.patterns, base.reference.patterns)
            and np.array_equal(reference.measurements, base.reference.measurements)):
        return base
    rows = level_rows(base.reference, reference)
    model = base.calibration.forward_model(reference)
    std = noise_std(reference.data, NOISE_RELATIVE, NOISE_ABSOLUTE)
    pos = {int(m): i for i, m in enumerate(base.reference.measurements)}
    offsets = base.channel_offsets[[pos[int(m)] for m in reference.measurements]]
    return ReconstructionContext(model, base.calibration, reference, base.basis, base.jacobian[rows], std,
                                 base.resources, offsets)


# ---------------------------------------------------------------- linearised methods


def check_prior_scales(prior_scales: Sequence[float]) -> tuple[float, ...]:
    """``prior_scales`` as a tuple of floats; ``ValueError`` unless non-empty, finite and positive."""
    scales = tuple(float(s) for s in prior_scales)
    if not scales or not all(np.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"prior scales must be a non-empty list of positive numbers, got {list(prior_scales)}")
    return scales


def linear_images(ctx: ReconstructionContext, changes: np.ndarray, prior_scale: float = 1.0) -> np.ndarray:
    """``linear`` reconstructions (k, H, W) of data changes given as columns (P*M, k), the prior's
    standard deviation multiplied by ``prior_scale``."""
    x = ctx.linear_map(prior_scale) @ np.asarray(changes, dtype=float).reshape(ctx.jacobian.shape[0], -1)
    return np.stack([ctx.basis.to_image(col) for col in x.T])


def segmenter_inputs(ctx: ReconstructionContext, changes: np.ndarray, prior_scales: Sequence[float],
                     mask_channel: bool = False) -> np.ndarray:
    """Inputs (k, C, H, W) of the learned segmenter for data changes given as columns (P*M, k): the
    ``linear`` reconstructions with the prior's standard deviation multiplied by each of the
    ``prior_scales``, divided by the water conductivity; with ``mask_channel`` a last channel, the
    map of removed electrodes (:func:`eit_manifold.ktc.levels.removed_map`)."""
    x = np.stack([linear_images(ctx, changes, s) for s in check_prior_scales(prior_scales)], axis=1) / ctx.sigma0
    if mask_channel:
        m = removed_map(electrode_mask(ctx.reference), ctx.basis.shape[0])
        x = np.concatenate([x, np.broadcast_to(m, (x.shape[0], 1, *m.shape))], axis=1)
    return x


def tv_pixels(ctx: ReconstructionContext, change: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Pixel coefficients of the ``tv`` method, lagged diffusivity from ``x0`` (the ``linear`` solution)."""
    s = PRIOR_STD * ctx.sigma0
    h = ctx.basis.pixel_size
    x, _ = lagged_diffusivity_tv(ctx.jacobian, change, ctx.std, ctx.gradient(), lam=1.0 / (s * PRIOR_LENGTH),
                    cell_area=h * h, beta=0.01 * s / h, x0=x0)
    return x


def linear_method(ctx: ReconstructionContext, change: np.ndarray) -> MethodResult:
    """Linearised difference reconstruction with the smoothness prior (organisers' baseline)."""
    return MethodResult(ctx.basis.to_image(ctx.linear_map() @ change))


def tv_method(ctx: ReconstructionContext, change: np.ndarray) -> MethodResult:
    """Linearised difference reconstruction with total variation (rule in the module docstring)."""
    return MethodResult(ctx.basis.to_image(tv_pixels(ctx, change, ctx.linear_map() @ change)))


def absolute_method(ctx: ReconstructionContext, change: np.ndarray) -> MethodResult:
    """Absolute imaging: MAP estimate of ``sigma = sigma0 + B x`` from the case's own data.

    Uses ``U = U_ref + change`` and the calibrated absolute model ``F(sigma) + c`` (``c`` the
    channel offsets) with the ``linear`` method's noise model and smoothness prior (centred on the
    calibrated background); :data:`ABSOLUTE_ITERATIONS` Gauss-Newton steps, each halved until the
    MAP objective decreases (:func:`~eit_manifold.optim.least_squares.gauss_newton`, globalisation
    ``halving``). Returns ``sigma - sigma0`` on the pixel grid.
    """
    u = ctx.reference.data.ravel() + change
    prior = ctx.prior()
    basis = ctx.basis.matrix
    floor = SIGMA_FLOOR * ctx.sigma0
    offsets = ctx.channel_offsets

    def residual(x: np.ndarray):
        result = ctx.model.solve(np.maximum(ctx.sigma0 + basis @ x, floor))
        return ((result.measurements + offsets).ravel() - u) / ctx.std, result

    def jacobian(x: np.ndarray, result) -> np.ndarray:
        return jacobian_in_basis(ctx.model, result, basis) / ctx.std[:, None]

    x = gauss_newton(residual, jacobian, np.zeros(basis.shape[1]), prior=(prior, np.zeros(basis.shape[1])),
                     globalisation="halving", max_iter=ABSOLUTE_ITERATIONS, max_trials=6).x
    return MethodResult(ctx.basis.to_image(x))


# ---------------------------------------------------------------- segmentation helpers


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


def as_result(output: MethodResult | np.ndarray) -> MethodResult:
    """A method's output as a :class:`MethodResult` (plug-ins may return a plain image)."""
    return output if isinstance(output, MethodResult) else MethodResult(np.asarray(output))


def image_and_segmentation(output: MethodResult | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A method's output as (change image, segmentation), both 256 x 256: an image without labels is
    segmented by the fixed rule, labels are taken as they are."""
    result = as_result(output)
    image = resample(result.image)
    if result.labels is not None:
        return image, check_segmentation("the method's segmentation", result.labels)
    return image, segment(image, truth_grid()[2])


def labels_to_values(labels: np.ndarray, size: int) -> np.ndarray:
    """256 x 256 classes as values -1 (resistive), 0, +1 (conductive) on a ``size x size`` grid
    (block means; ``size`` must divide 256): the atlas family's value space."""
    if IMAGE_SHAPE[0] % size:
        raise ValueError(f"size must divide {IMAGE_SHAPE[0]}, got {size}")
    values = np.select([labels == 1, labels == 2], [-1.0, 1.0], 0.0)
    b = IMAGE_SHAPE[0] // size
    return values.reshape(size, b, size, b).mean(axis=(1, 3))


def segmented_image(image: np.ndarray, size: int) -> np.ndarray:
    """The fixed segmentation of a change image in the atlas' values on a ``size x size`` grid."""
    if IMAGE_SHAPE[0] % size:
        raise ValueError(f"size must divide {IMAGE_SHAPE[0]}, got {size}")
    return labels_to_values(image_and_segmentation(image)[1], size)


# ---------------------------------------------------------------- learned and atlas methods


def checked_segmenter(ctx: ReconstructionContext) -> tuple[SegmenterNet, dict]:
    """The learned segmenter and its config, checked against ``ctx``: a kept set (level) it was not
    trained for, another grid or water, or channels that do not match its config raise ``ValueError``."""
    net, meta = ctx.resources.segmenter()
    path = meta["path"]
    kept = {"patterns": ctx.reference.patterns.tolist(), "measurements": ctx.reference.measurements.tolist()}
    trained = meta.get("kept_sets") or [{"level": meta.get("level"), "patterns": meta.get("patterns"),
                                         "measurements": meta.get("measurements")}]
    if not any({k: t.get(k) for k in kept} == kept for t in trained):
        levels = [t.get("level") for t in trained]
        raise ValueError(f"segmenter {path} was trained for level(s) {levels}, not for these data's patterns and "
                         f"measurements (level {ctx.reference.level}); {SEGMENTER_HINT}")
    if meta.get("grid") != ctx.basis.shape[0]:
        raise ValueError(f"segmenter {path} was trained on a {meta.get('grid')}-pixel grid, the run uses "
                         f"{ctx.basis.shape[0]}; pass --grid {meta.get('grid')} or {SEGMENTER_HINT}")
    if not abs(meta.get("sigma0", np.nan) / ctx.sigma0 - 1) <= SEGMENTER_SIGMA_TOLERANCE:
        raise ValueError(f"segmenter {path} was trained for water conductivity {meta.get('sigma0')}, this "
                         f"reference calibrates to {ctx.sigma0:.4g}; {SEGMENTER_HINT}")
    scales = check_prior_scales(meta.get("prior_scales", [1.0]))  # before multi-channel inputs: the linear method's
    mask = bool(meta.get("mask_channel", False))
    if len(scales) + mask != net.channels:
        raise ValueError(f"segmenter {path} has {net.channels} input channel(s) but {len(scales)} prior scales "
                         f"{list(scales)}{' and a mask channel' if mask else ''} in its config.json")
    return net, {**meta, "prior_scales": scales, "mask_channel": mask}


def learned_labels(ctx: ReconstructionContext, changes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes (k, 256, 256) and class probabilities of data changes (P*M, k) by the learned
    segmenter, with the small-component rule and the network's class-presence rule."""
    from eit_manifold.ktc.segmenter import apply_presence_rule, predict

    net, meta = checked_segmenter(ctx)
    inputs = segmenter_inputs(ctx, changes, meta["prior_scales"], meta["mask_channel"])
    labels, prob = predict(net, inputs, out_size=IMAGE_SHAPE[0], min_pixels=MIN_COMPONENT_PIXELS)
    if labels.ndim == 2:
        labels, prob = labels[None], prob[None]
    return apply_presence_rule(labels, prob, meta.get("presence")), prob


def learned_method(ctx: ReconstructionContext, change: np.ndarray) -> MethodResult:
    """``linear`` reconstructions (the network's ``prior_scales``) and the removed-electrode map,
    segmented by the learned U-Net (:mod:`eit_manifold.ktc.segmenter`); target components smaller
    than :data:`~eit_manifold.ktc.segmentation.MIN_COMPONENT_PIXELS` become water and a class the
    presence rule finds absent is dropped. The image shown beside the classes is the ``linear``
    method's."""
    labels, _ = learned_labels(ctx, np.asarray(change)[:, None])
    return MethodResult(ctx.basis.to_image(ctx.linear_map() @ change), labels[0])


def atlas_method(ctx: ReconstructionContext, change: np.ndarray) -> MethodResult:
    """Riemannian descent on the ``ktc`` atlas (rule in :mod:`eit_manifold.ktc.atlas_method`).

    Warm starts: the segmentations of the ``linear``, ``tv`` and (``options.atlas_learned_start``)
    ``learned`` methods, each projected onto every chart; the best final data misfit wins. Returns
    ``sigma0 x`` for the best atlas image ``x``: a symmetric contrast (targets at about
    ``+-sigma0``), so the magnitude-based segmentation treats resistive and conductive targets
    alike (``sigma(x) - sigma0`` would be 10 times larger for conductive than resistive ones).
    """
    from eit_manifold.ktc.atlas_method import atlas_reconstruction

    atlas = ctx.resources.atlas()
    size = atlas.image_shape[0]
    x_linear = ctx.linear_map() @ change  # also the start of the TV solve: computed once
    warm = [segmented_image(ctx.basis.to_image(x), size) for x in (x_linear, tv_pixels(ctx, change, x_linear))]
    if ctx.options.atlas_learned_start:
        warm.append(labels_to_values(learned_labels(ctx, np.asarray(change)[:, None])[0][0], size))
    x, details = atlas_reconstruction(ctx.atlas_operator(), atlas, ctx.sigma0, change, ctx.std, np.stack(warm),
                                      ctx.options.atlas)
    details["warm_starts"] = ["linear", "tv", "learned"][: len(warm)]
    details["best_warm"] = (details["warm_starts"][details["best_start"] % len(warm)]  # chart-major order
                            if details["best_start_is_warm"] else None)
    return MethodResult(ctx.sigma0 * x, details=details)


register_method("linear", linear_method)
register_method("tv", tv_method)
register_method("atlas", atlas_method)
register_method("absolute", absolute_method)
register_method("learned", learned_method)
