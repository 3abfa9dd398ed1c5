"""Riemannian optimisation on a learned atlas: small verbs and a generic gradient descent."""

from eit_manifold.optim.multistart import MultiStartResult, multistart_descent, posterior_score, select_start
from eit_manifold.optim.riemannian import DescentHistory, DescentResult, RiemannianDescent
from eit_manifold.optim.verbs import (
    choose_chart,
    decode_with_jacobian,
    retract_chart,
    retract_projection,
    riemannian_gradient,
)

__all__ = [
    "DescentHistory",
    "DescentResult",
    "MultiStartResult",
    "RiemannianDescent",
    "choose_chart",
    "decode_with_jacobian",
    "multistart_descent",
    "posterior_score",
    "retract_chart",
    "retract_projection",
    "riemannian_gradient",
    "select_start",
]
