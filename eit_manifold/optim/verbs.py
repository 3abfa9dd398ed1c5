"""The small, orthogonal verbs of Riemannian optimisation on a chart of an atlas (geoopt-style).

A chart is anything with ``decode(w) -> x`` (the generator ``G_k``, latent ``(B, d)`` to data
``(B, *data_shape)``) and ``encode(x) -> w`` (its left inverse ``E_k``). The optimiser in
:mod:`eit_manifold.optim.riemannian` calls only these functions:

* :func:`decode_with_jacobian` -- ``x = G(w)`` and ``J = dG/dw`` by forward-mode differentiation
  (``d`` Jacobian-vector products in one batched pass, cheap because the latent dimension ``d``
  is small);
* :func:`riemannian_gradient` -- project a Euclidean gradient onto the tangent space,
  ``v = J (J^T J + eps I)^{-1} J^T g``;
* :func:`retract_projection` -- ``x+ = G(E(x + h))``;
* :func:`retract_chart` -- ``x+ = G(w + dw)``;
* :func:`choose_chart` -- chart selection with hysteresis from responsibilities.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

# torch's own forward-mode decompositions still call torch.jit.script on the first jvp, which
# prints a deprecation warning into every command's output; it is not about this code.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)


class ChartLike(Protocol):
    """What the optimiser needs from a chart."""

    def decode(self, w: Tensor) -> Tensor: ...  # noqa: D102

    def encode(self, x: Tensor) -> Tensor: ...  # noqa: D102


def decode_with_jacobian(chart: ChartLike, w: Tensor, max_items: int = 1024) -> tuple[Tensor, Tensor]:
    """Decode ``w`` and differentiate the generator by forward mode.

    The ``d`` tangents of every point are pushed through the decoder in one batched pass of
    dual tensors (:mod:`torch.autograd.forward_ad`): item ``i * d + j`` carries the point
    ``w_i`` with tangent ``e_j``. Why not ``torch.func.jvp``: functorch runs many of the
    decoder's operations through Python decompositions (``torch._refs``), which made the
    Jacobian 3-4x slower than this one pass; the values agree to float32 rounding.

    Parameters
    ----------
    chart : ChartLike
        Chart whose ``decode`` maps ``(B, d)`` to ``(B, *data_shape)``, item by item.
    w : Tensor
        Latent points, shape ``(B, d)``.
    max_items : int
        Largest batch ``B' * d`` decoded in one pass (bounds memory; larger batches go in chunks
        of points).

    Returns
    -------
    x : Tensor
        ``G(w)``, shape ``(B, *data_shape)``, detached.
    jac : Tensor
        ``dG/dw`` flattened to ``(B, n, d)`` with ``n = prod(data_shape)``, in float64.
    """
    if w.dim() != 2:
        raise ValueError(f"latent batch must have shape (B, d), got {tuple(w.shape)}")
    w = w.detach()
    b, d = w.shape
    chunk = max(1, max_items // max(d, 1))
    xs, jacs = [], []
    eye = torch.eye(d, dtype=w.dtype, device=w.device)
    with torch.no_grad(), forward_ad.dual_level():
        for start in range(0, b, chunk):
            wc = w[start:start + chunk]
            m = wc.shape[0]
            dual = forward_ad.make_dual(wc.repeat_interleave(d, dim=0), eye.repeat(m, 1))
            primal, tangent = forward_ad.unpack_dual(chart.decode(dual))
            if tangent is None:  # the decoder does not depend on w
                tangent = torch.zeros_like(primal)
            xs.append(primal.reshape(m, d, *primal.shape[1:])[:, 0])
            jacs.append(tangent.reshape(m, d, -1).transpose(1, 2).to(torch.float64))
    return torch.cat(xs).detach(), torch.cat(jacs)


def riemannian_gradient(jac: Tensor, grad: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Project Euclidean gradients onto the tangent spaces spanned by the Jacobian columns.

    Parameters
    ----------
    jac : Tensor
        Jacobians ``(B, n, d)``.
    grad : Tensor
        Euclidean gradients ``(B, n)`` (any shape ``(B, ...)`` is flattened).
    eps : float
        Relative Tikhonov shift: ``J^T J + eps * mean(diag(J^T J)) I`` is inverted, which keeps the
        solve well posed where the generator is nearly singular.

    Returns
    -------
    v : Tensor
        Riemannian gradient ``J xi`` in the ambient space, ``(B, n)``, float64.
    xi : Tensor
        Latent direction ``(J^T J + eps' I)^{-1} J^T g``, ``(B, d)``, float64 (the Riemannian
        gradient in chart coordinates).
    """
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps!r}")
    g = grad.reshape(grad.shape[0], -1).to(torch.float64)
    jtj = jac.transpose(1, 2) @ jac
    d = jtj.shape[-1]
    scale = torch.diagonal(jtj, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
    shift = (eps * scale + 1e-300)[:, None, None] * torch.eye(d, dtype=jtj.dtype)
    rhs = (jac.transpose(1, 2) @ g[..., None])[..., 0]
    xi = torch.linalg.solve(jtj + shift, rhs)
    return (jac @ xi[..., None])[..., 0], xi


def retract_projection(chart: ChartLike, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """Projection retraction ``R_x(h) = G(E(x + h))``; returns ``(x+, w+)``.

    ``G(E(.))`` is idempotent (``E`` is a left inverse of ``G``), so this is a retraction onto the
    image of the chart. ``h`` may be flat ``(B, n)``; it is reshaped like ``x``.
    """
    with torch.no_grad():
        w = chart.encode(x + h.reshape(x.shape).to(x.dtype))
        return chart.decode(w), w


def retract_chart(chart: ChartLike, w: Tensor, dw: Tensor) -> tuple[Tensor, Tensor]:
    """Chart retraction: move in latent coordinates, ``w+ = w + dw``, ``x+ = G(w+)``."""
    with torch.no_grad():
        w_new = w + dw.to(w.dtype)
        return chart.decode(w_new), w_new


def choose_chart(probs: Tensor, current: Tensor, hysteresis: float) -> Tensor:
    """Chart choice with hysteresis.

    Stay in the current chart unless another chart's responsibility exceeds the current one's by
    more than ``hysteresis``; then move to the most responsible chart.

    Parameters
    ----------
    probs : Tensor
        Responsibilities ``(B, K)``.
    current : Tensor
        Current chart indices ``(B,)`` (long).
    hysteresis : float
        Margin in probability, in ``[0, 1)``.
    """
    if not 0 <= hysteresis < 1:
        raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis!r}")
    best = probs.argmax(dim=1)
    p_best = probs.gather(1, best[:, None])[:, 0]
    p_cur = probs.gather(1, current[:, None])[:, 0]
    return torch.where(p_best > p_cur + hysteresis, best, current)
