"""Classical deblurring baselines: Tikhonov and TV, both with the discrepancy principle.

Both work on the deviation from the background, ``u = x - b``, with data ``f = y - b`` and the
separable blur ``A0 U = K_H U K_W^T`` (:meth:`GaussianBlur.matrix_1d`).

* **Tikhonov**: ``min_u 0.5 ||A0 u - f||^2 + 0.5 alpha ||u||^2``, solved exactly in the singular
  bases of ``K_H`` and ``K_W`` (so the residual is a closed-form function of ``alpha``).
* **TV**: ``min_u 0.5 ||A0 u - f||^2 + lam TV(u)`` with isotropic TV (forward differences,
  Neumann boundary), solved by the primal-dual algorithm of Chambolle and Pock, TV dualised and
  the data term handled by its exact proximal map (diagonal in the singular bases).

**Parameter rule (Morozov's discrepancy principle).** The regularisation parameter of each image is
the one whose residual equals the expected noise norm, ``||A0 u - f|| = tau_dp * eta * sqrt(m)``
for noise std ``eta`` and ``m`` pixels (``tau_dp = 1`` by default). It uses the noisy data and
the known noise level only -- never the ground truth -- and is found by bisection in
``log(parameter)`` (the residual increases with the parameter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq
from torch import Tensor

from eit_manifold.operators.blur import GaussianBlur


@dataclass
class BaselineResult:
    """Reconstructions ``x`` ``(B, H, W)`` and the chosen parameter of each image ``(B,)``."""

    x: Tensor
    parameter: np.ndarray
    residual: np.ndarray


def _check(y: Tensor, noise_std: float, tau_dp: float) -> Tensor:
    if y.dim() == 2:
        y = y[None]
    if y.dim() != 3:
        raise ValueError(f"data must have shape (H, W) or (B, H, W), got {tuple(y.shape)}")
    if not (math.isfinite(noise_std) and noise_std > 0):
        raise ValueError(f"noise_std must be positive (discrepancy principle), got {noise_std}")
    if not tau_dp > 0:
        raise ValueError(f"tau_dp must be positive, got {tau_dp}")
    return y.to(torch.float64)


def _target(shape: tuple[int, int], noise_std: float, tau_dp: float) -> float:
    return tau_dp * noise_std * math.sqrt(shape[0] * shape[1])


def tikhonov_deblur(
    y: Tensor, op: GaussianBlur, noise_std: float, tau_dp: float = 1.0
) -> BaselineResult:
    """Tikhonov deblurring ``argmin 0.5||A0 u - f||^2 + 0.5 alpha ||u||^2``, ``x = b + u``.

    Parameters
    ----------
    y : Tensor
        Noisy data ``(H, W)`` or ``(B, H, W)``.
    op : GaussianBlur
        The forward operator (its background ``b`` is the reference of the penalty).
    noise_std : float
        Noise standard deviation ``eta`` (known).
    tau_dp : float
        Discrepancy factor: residual norm ``tau_dp * eta * sqrt(m)``.

    Returns
    -------
    BaselineResult
        Reconstructions, chosen ``alpha`` and achieved residual norms.
    """
    y = _check(y, noise_std, tau_dp)
    h, w = y.shape[-2:]
    svd = SeparableBlurSVD.of(op, (h, w))
    s2 = svd.s**2
    target = _target((h, w), noise_std, tau_dp)
    xs, alphas, res = [], [], []
    for f in y - op.background:
        fhat = svd.uh.T @ f @ svd.uw
        s2n, fn = s2.numpy(), fhat.numpy()

        def residual(log_alpha: float, s2n: np.ndarray = s2n, fn: np.ndarray = fn) -> float:
            a = math.exp(log_alpha)
            return float(np.linalg.norm(a / (s2n + a) * fn))

        lo, hi = math.log(1e-12), math.log(1e6)
        if residual(lo) >= target:
            log_alpha = lo
        elif residual(hi) <= target:
            log_alpha = hi
        else:
            log_alpha = brentq(lambda t: residual(t) - target, lo, hi, xtol=1e-6)
        alpha = math.exp(log_alpha)
        s = torch.sqrt(s2)
        u = svd.vh @ (s / (s2 + alpha) * fhat) @ svd.vw.T
        xs.append(u + op.background)
        alphas.append(alpha)
        res.append(residual(log_alpha))
    return BaselineResult(torch.stack(xs), np.array(alphas), np.array(res))


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


def tv_solve(
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
    noise_std: float,
    tau_dp: float = 1.0,
    n_bisect: int = 14,
    n_iter: int = 300,
    log10_range: tuple[float, float] = (-4.0, 1.0),
) -> BaselineResult:
    """Total-variation deblurring with the TV weight from the discrepancy principle.

    Parameters
    ----------
    y : Tensor
        Noisy data ``(H, W)`` or ``(B, H, W)``.
    op : GaussianBlur
        The forward operator.
    noise_std : float
        Noise standard deviation ``eta`` (known).
    tau_dp : float
        Discrepancy factor.
    n_bisect : int
        Bisection steps in ``log10(lam)`` over ``log10_range`` (all images in parallel, warm
        started); a final solve of ``2 * n_iter`` iterations at the chosen ``lam``.
    n_iter : int
        Primal-dual iterations per bisection step.
    log10_range : tuple of float
        Search interval of ``log10(lam)``.

    Returns
    -------
    BaselineResult
        Reconstructions, chosen ``lam`` and achieved residual norms.
    """
    y = _check(y, noise_std, tau_dp)
    if n_bisect < 1 or n_iter < 1:
        raise ValueError(f"n_bisect and n_iter must be >= 1, got {n_bisect}, {n_iter}")
    h, w = y.shape[-2:]
    svd = SeparableBlurSVD.of(op, (h, w))
    f = y - op.background
    target = _target((h, w), noise_std, tau_dp)
    lo = torch.full((y.shape[0],), log10_range[0], dtype=torch.float64)
    hi = torch.full((y.shape[0],), log10_range[1], dtype=torch.float64)
    state = None
    for _ in range(n_bisect):
        mid = (lo + hi) / 2
        u, state = tv_solve(f, svd, 10**mid, n_iter, state)
        r = torch.linalg.norm((svd.apply(u) - f).flatten(1), dim=1)
        too_big = r > target  # residual too large: less regularisation
        hi = torch.where(too_big, mid, hi)
        lo = torch.where(too_big, lo, mid)
    lam = 10 ** ((lo + hi) / 2)
    u, _ = tv_solve(f, svd, lam, 2 * n_iter, state)
    r = torch.linalg.norm((svd.apply(u) - f).flatten(1), dim=1)
    return BaselineResult(u + op.background, lam.numpy(), r.numpy())
