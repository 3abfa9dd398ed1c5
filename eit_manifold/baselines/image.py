"""Classical deblurring baselines, Tikhonov and TV, with one fixed parameter chosen on validation data.

Both work on the deviation from the background, ``u = x - b``, with data ``f = y - b`` and the
separable blur ``A0 U = K_H U K_W^T`` (:meth:`GaussianBlur.matrix_1d`).

* **Tikhonov**: ``min_u 0.5 ||A0 u - f||^2 + 0.5 alpha ||u||^2``, solved exactly in the singular
  bases of ``K_H`` and ``K_W``.
* **TV**: ``min_u 0.5 ||A0 u - f||^2 + lam TV(u)`` with isotropic TV (forward differences,
  Neumann boundary), solved by the primal-dual algorithm of Chambolle and Pock, TV dualised and
  the data term handled by its exact proximal map (diagonal in the singular bases).

**Parameter rule: the best fixed parameter on a validation split** (:func:`select_parameter`).
The parameter is one number for all images, chosen on ``n_val`` *training-split* bar images
(never test images) with noise drawn from the operator's ``noise_model`` under a fixed seed: of
a logarithmic grid, the value of highest mean PSNR among those that beat the constant image
``b`` on every validation image (the safeguard; if no grid value does, the highest mean PSNR).
The rule is deterministic: the same seed picks the same parameter.

Why not Morozov's discrepancy principle (the former rule)? At the paper's noise (std 0.1 on a bar
of contrast 0.25, 64 x 64) the blurred bar carries ``||A0 u||^2 ~ 1.5`` of energy while the noise
energy ``||n||^2 ~ m eta^2 = 41`` fluctuates by ``eta^2 sqrt(2 m) ~ 0.9`` from image to image. The
principle lets the reconstruction explain the excess ``||f||^2 - m eta^2``, which is as much noise
as signal: where the draw is above its mean the reconstruction fits noise (blocks over the whole
square, below the constant image's PSNR), where it is below the residual never reaches the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from eit_manifold.data.images import make_images
from eit_manifold.metrics import psnr
from eit_manifold.operators.blur import GaussianBlur

#: Logarithmic grids of the validation search (wide enough that the optimum is inside: the
#: selection fails loudly when it lands on an end).
TIKHONOV_GRID = tuple(float(a) for a in np.logspace(-3, 3, 25))
TV_GRID = tuple(float(a) for a in np.logspace(-3, 1, 9))
#: Primal-dual iterations per TV candidate (warm-started from the previous, larger weight; the
#: mean validation PSNR moves by about 0.01 dB between 300 and 3000 iterations).
TV_VALIDATION_ITER = 300
#: Validation images and seed offset of their noise (disjoint from the test images and noise).
N_VALIDATION = 20
VALIDATION_NOISE_OFFSET = 7919


@dataclass
class BaselineResult:
    """Reconstructions ``x`` ``(B, H, W)``, the parameter used and the residual norms ``(B,)``."""

    x: Tensor
    parameter: float
    residual: np.ndarray


@dataclass
class ParameterChoice:
    """Outcome of :func:`select_parameter`.

    Attributes
    ----------
    method : str
        ``"tikhonov"`` or ``"tv"``.
    value : float
        The chosen parameter.
    grid : list of float
        Candidate values.
    mean_psnr : list of float
        Mean validation PSNR of each candidate.
    min_gain : list of float
        Smallest PSNR gain over the constant image on a validation image, per candidate.
    safeguarded : bool
        Whether the chosen value beats the constant image on every validation image.
    n_val, seed : int
        Validation images (training split of dataset seed ``seed``) and seed.
    """

    method: str
    value: float
    grid: list[float] = field(default_factory=list)
    mean_psnr: list[float] = field(default_factory=list)
    min_gain: list[float] = field(default_factory=list)
    safeguarded: bool = True
    n_val: int = N_VALIDATION
    seed: int = 0


def _check(y: Tensor) -> Tensor:
    if y.dim() == 2:
        y = y[None]
    if y.dim() != 3:
        raise ValueError(f"data must have shape (H, W) or (B, H, W), got {tuple(y.shape)}")
    return y.to(torch.float64)


def _check_parameter(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


def tikhonov_deblur(y: Tensor, op: GaussianBlur, alpha: float) -> BaselineResult:
    """Tikhonov deblurring ``argmin 0.5||A0 u - f||^2 + 0.5 alpha ||u||^2``, ``x = b + u``.

    Parameters
    ----------
    y : Tensor
        Noisy data ``(H, W)`` or ``(B, H, W)``.
    op : GaussianBlur
        The forward operator (its background ``b`` is the reference of the penalty).
    alpha : float
        Regularisation weight (> 0), e.g. from :func:`select_parameter`.

    Returns
    -------
    BaselineResult
        Reconstructions, ``alpha`` and residual norms ``||A0 u - f||``.
    """
    y = _check(y)
    alpha = _check_parameter("alpha", alpha)
    svd = SeparableBlurSVD.of(op, tuple(y.shape[-2:]))
    s = svd.s
    fhat = svd.uh.T @ (y - op.background) @ svd.uw  # data in the left singular bases
    u = svd.vh @ (s / (s**2 + alpha) * fhat) @ svd.vw.T
    residual = torch.linalg.norm((alpha / (s**2 + alpha) * fhat).flatten(1), dim=1)
    return BaselineResult(u + op.background, alpha, residual.numpy())


def grad2d(u: Tensor) -> Tensor:
    """Forward differences with Neumann boundary: ``(B, H, W) -> (B, 2, H, W)``."""
    gy = torch.zeros_like(u)
    gx = torch.zeros_like(u)
    gy[:, :-1] = u[:, 1:] - u[:, :-1]
    gx[:, :, :-1] = u[:, :, 1:] - u[:, :, :-1]
    return torch.stack([gy, gx], dim=1)


def div2d(p: Tensor) -> Tensor:
    """Discrete divergence, ``div = -grad^T``: ``(B, 2, H, W) -> (B, H, W)``."""
    py, px = p[:, 0], p[:, 1]
    d = torch.zeros_like(py)
    d[:, :-1] += py[:, :-1]
    d[:, 1:] -= py[:, :-1]
    d[:, :, :-1] += px[:, :, :-1]
    d[:, :, 1:] -= px[:, :, :-1]
    return d


@dataclass
class SeparableBlurSVD:
    """Singular bases of the separable blur ``A0 U = K_H U K_W^T``: ``K = U_K diag(s) V_K^T``."""

    uh: Tensor
    sh: Tensor
    vh: Tensor
    uw: Tensor
    sw: Tensor
    vw: Tensor

    @classmethod
    def of(cls, op: GaussianBlur, shape: tuple[int, int]) -> SeparableBlurSVD:
        """SVD of the 1-D factors of ``op`` on images of ``shape``."""
        uh, sh, vht = torch.linalg.svd(op.matrix_1d(shape[0]))
        uw, sw, vwt = torch.linalg.svd(op.matrix_1d(shape[1]))
        return cls(uh, sh, vht.T, uw, sw, vwt.T)

    @property
    def s(self) -> Tensor:
        """Singular values of ``A0`` arranged as an ``(H, W)`` array."""
        return self.sh[:, None] * self.sw[None, :]

    def apply(self, u: Tensor) -> Tensor:
        """``A0 u``."""
        return self.uh @ (self.s * (self.vh.T @ u @ self.vw)) @ self.uw.T


def chambolle_pock_tv(
    f: Tensor,
    svd: SeparableBlurSVD,
    lam: Tensor,
    n_iter: int = 300,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Chambolle-Pock for ``min_u 0.5||A0 u - f||^2 + lam TV(u)``, one ``lam`` per image.

    The data term enters through its exact proximal map (diagonal in the singular bases of the
    separable blur), TV through its dual; ``tau = sigma = 0.99 / sqrt(8)``.

    Parameters
    ----------
    f : Tensor
        Data ``(B, H, W)``.
    svd : SeparableBlurSVD
        Singular bases of the blur.
    lam : Tensor
        ``(B,)`` TV weights.
    n_iter : int
        Iterations.
    init : tuple, optional
        Warm start ``(u, p)`` from a previous call.

    Returns
    -------
    u : Tensor
        ``(B, H, W)``.
    state : tuple
        ``(u, p)`` for warm starts.
    """
    if init is None:
        u = torch.zeros_like(f)
        p = torch.zeros((f.shape[0], 2, *f.shape[1:]), dtype=f.dtype)
    else:
        u, p = (t.clone() for t in init)
    tau = sigma = 0.99 / math.sqrt(8.0)
    s = svd.s
    # prox of tau * data term in the V bases: (v_hat + tau s f_hat) / (1 + tau s^2)
    sf = s * (svd.uh.T @ f @ svd.uw)
    denom = 1 + tau * s**2
    ubar = u.clone()
    lam4 = lam[:, None, None, None]
    for _ in range(n_iter):
        p = p + sigma * grad2d(ubar)
        norm = torch.sqrt((p**2).sum(dim=1, keepdim=True))
        p = p / torch.clamp(norm / lam4, min=1.0)
        v_hat = svd.vh.T @ (u + tau * div2d(p)) @ svd.vw
        u_new = svd.vh @ ((v_hat + tau * sf) / denom) @ svd.vw.T
        ubar = 2 * u_new - u
        u = u_new
    return u, (u, p)


def tv_deblur(
    y: Tensor,
    op: GaussianBlur,
    lam: float,
    n_iter: int = 600,
    init: tuple[Tensor, Tensor] | None = None,
) -> BaselineResult:
    """Total-variation deblurring ``argmin 0.5||A0 u - f||^2 + lam TV(u)``, ``x = b + u``.

    Parameters
    ----------
    y : Tensor
        Noisy data ``(H, W)`` or ``(B, H, W)``.
    op : GaussianBlur
        The forward operator.
    lam : float
        TV weight (> 0), e.g. from :func:`select_parameter`.
    n_iter : int
        Primal-dual iterations.
    init : tuple, optional
        Warm start ``(u, p)`` (:func:`chambolle_pock_tv`'s state).

    Returns
    -------
    BaselineResult
        Reconstructions, ``lam`` and residual norms ``||A0 u - f||``.
    """
    y = _check(y)
    lam = _check_parameter("lam", lam)
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    svd = SeparableBlurSVD.of(op, tuple(y.shape[-2:]))
    f = y - op.background
    u, _ = chambolle_pock_tv(f, svd, torch.full((y.shape[0],), lam, dtype=torch.float64), n_iter, init)
    r = torch.linalg.norm((svd.apply(u) - f).flatten(1), dim=1)
    return BaselineResult(u + op.background, lam, r.numpy())


def validation_split(
    op: GaussianBlur, size: int, n_val: int = N_VALIDATION, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``n_val`` bars of the *training* split (dataset seed ``seed``) and their noisy data.

    The noise is drawn from ``op.noise_model`` with the generator seed
    ``VALIDATION_NOISE_OFFSET + seed``, so neither the images nor the noise are the test ones.
    """
    if n_val < 1:
        raise ValueError(f"n_val must be >= 1, got {n_val}")
    images, _ = make_images("bars", n_val, split="train", seed=seed, size=size)
    x = torch.from_numpy(images).to(torch.float64)
    gen = torch.Generator().manual_seed(VALIDATION_NOISE_OFFSET + seed)
    return x, op.measure(x, gen)


def select_parameter(
    method: str,
    op: GaussianBlur,
    size: int,
    n_val: int = N_VALIDATION,
    seed: int = 0,
    grid: tuple[float, ...] | None = None,
) -> ParameterChoice:
    """The best fixed parameter of ``method`` on a validation split (see the module docstring).

    Parameters
    ----------
    method : str
        ``"tikhonov"`` (``alpha``) or ``"tv"`` (``lam``).
    op : GaussianBlur
        The forward operator, with the noise model of the experiment.
    size : int
        Image side.
    n_val : int
        Validation images (training split).
    seed : int
        Dataset seed of the validation split and of its noise.
    grid : tuple of float, optional
        Candidates (default :data:`TIKHONOV_GRID` or :data:`TV_GRID`).

    Returns
    -------
    ParameterChoice
        The chosen value with the validation PSNR of every candidate.

    Raises
    ------
    ValueError
        For an unknown method, or when the best value is an end of the grid (widen the grid).
    """
    if method not in ("tikhonov", "tv"):
        raise ValueError(f"method must be 'tikhonov' or 'tv', got {method!r}")
    if grid is None:
        grid = TIKHONOV_GRID if method == "tikhonov" else TV_GRID
    x, y = validation_split(op, size, n_val, seed)
    svd = SeparableBlurSVD.of(op, (size, size))
    constant = psnr(torch.full_like(x, op.background), x, batch=True)
    means, gains = [], []
    state = None
    # TV: warm-start each weight from the previous (largest first: smooth solutions first).
    for value in sorted(grid, reverse=True):
        if method == "tikhonov":
            x_hat = tikhonov_deblur(y, op, value).x
        else:
            lam = torch.full((n_val,), value, dtype=torch.float64)
            u, state = chambolle_pock_tv(y - op.background, svd, lam, TV_VALIDATION_ITER, state)
            x_hat = u + op.background
        p = psnr(x_hat, x, batch=True)
        means.append(float(np.mean(p)))
        gains.append(float(np.min(p - constant)))
    values = sorted(grid, reverse=True)
    safe = [i for i, g in enumerate(gains) if g > 0]
    pool = safe if safe else range(len(values))
    best = max(pool, key=lambda i: means[i])
    if best in (0, len(values) - 1) and len(values) > 2:
        raise ValueError(
            f"{method}: the best validation parameter {values[best]:g} is an end of the grid "
            f"[{min(values):g}, {max(values):g}]; widen it"
        )
    order = np.argsort(values)
    return ParameterChoice(
        method=method,
        value=values[best],
        grid=[values[i] for i in order],
        mean_psnr=[means[i] for i in order],
        min_gain=[gains[i] for i in order],
        safeguarded=bool(safe),
        n_val=n_val,
        seed=seed,
    )
