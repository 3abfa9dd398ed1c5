"""Riemannian descent on exact (hand-made) atlases with known closest points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from analytic_atlases import circle_atlas, sphere_atlas, two_circles_atlas

from eit_manifold.optim import (
    RiemannianDescent,
    choose_chart,
    decode_with_jacobian,
    multistart_descent,
    riemannian_gradient,
    select_start,
)
from eit_manifold.optim.riemannian import best_per_iteration, window_stalled


def dist2_to(a: list[float]):
    target = torch.tensor(a, dtype=torch.float64)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return ((x - target) ** 2).sum(dim=1)

    return objective


def assert_monotone_and_on_manifold(atlas, res) -> None:
    obj = res.history.objective
    assert np.all(np.diff(obj, axis=0) <= 0), "objective increased"
    x = res.x_all
    assert torch.allclose(atlas.project(x), x, atol=1e-4), "iterate left the manifold"


# --------------------------------------------------------------------------- verbs
def test_jacobian_matches_finite_differences() -> None:
    chart = sphere_atlas().charts[0]
    w = torch.tensor([[0.3, -0.2], [0.1, 0.5]], dtype=torch.float64)
    x, jac = decode_with_jacobian(chart, w)
    assert torch.allclose(x, chart.decode(w))
    h = 1e-6
    for j in range(2):
        e = torch.zeros_like(w)
        e[:, j] = h
        fd = (chart.decode(w + e) - chart.decode(w - e)) / (2 * h)
        assert torch.allclose(jac[:, :, j], fd, atol=1e-7)


def test_jacobian_in_chunks_equals_one_pass() -> None:
    # Batches larger than max_items are decoded in chunks of points: same values.
    chart = sphere_atlas().charts[0]
    w = torch.tensor([[0.3, -0.2], [0.1, 0.5], [-0.4, 0.0], [0.2, 0.2], [0.0, -0.6]], dtype=torch.float64)
    x1, j1 = decode_with_jacobian(chart, w)
    x2, j2 = decode_with_jacobian(chart, w, max_items=4)  # 2 points (4 items) per pass
    assert torch.equal(x1, x2) and torch.equal(j1, j2)
    with pytest.raises(ValueError, match="latent batch"):
        decode_with_jacobian(chart, w[0])


def test_riemannian_gradient_is_tangent_projection() -> None:
    chart = sphere_atlas().charts[1]
    w = torch.tensor([[0.2, 0.4]], dtype=torch.float64)
    x, jac = decode_with_jacobian(chart, w)
    g = torch.tensor([[0.3, -1.0, 2.0]], dtype=torch.float64)
    v, xi = riemannian_gradient(jac, g, eps=0.0)
    normal = x / x.norm()
    expected = g - (g * normal).sum() * normal  # tangent projection on the unit sphere
    assert torch.allclose(v, expected, atol=1e-10)
    assert torch.allclose(jac @ xi[..., None], v[..., None])


def test_choose_chart_hysteresis() -> None:
    probs = torch.tensor([[0.55, 0.45], [0.7, 0.3], [0.2, 0.8]])
    current = torch.tensor([1, 1, 1])
    assert choose_chart(probs, current, 0.2).tolist() == [1, 0, 1]
    assert choose_chart(probs, current, 0.0).tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="hysteresis"):
        choose_chart(probs, current, 1.5)


# --------------------------------------------------------------------------- descent
@pytest.mark.parametrize("retraction", ["projection", "chart"])
def test_circle_closest_point_with_chart_switch(retraction: str) -> None:
    atlas = circle_atlas()
    a = [2.0, 1.0]
    # Start near angle pi - 0.3 in chart 1: the minimiser (angle 0.46) is in chart 0.
    x0 = torch.tensor([[math.cos(math.pi - 0.3), math.sin(math.pi - 0.3)]], dtype=torch.float64)
    opt = RiemannianDescent(atlas, dist2_to(a), retraction=retraction, max_iter=200)
    res = opt.run(x0=x0, chart0=torch.tensor([1]))
    expected = torch.tensor(a, dtype=torch.float64) / math.hypot(*a)
    assert torch.allclose(res.x, expected, atol=1e-5)
    assert res.chart == 0
    assert res.history.switched.any(), "the descent should have switched chart"
    assert res.history.chart[0, 0] == 1 and res.history.chart[-1, 0] == 0
    assert res.converged.all()
    assert_monotone_and_on_manifold(atlas, res)


def test_sphere_multistart_closest_point() -> None:
    torch.manual_seed(0)
    atlas = sphere_atlas()
    a = [0.3, -0.2, -2.0]
    res = RiemannianDescent(atlas, dist2_to(a), max_iter=200).run(n_starts=6)
    expected = torch.tensor(a, dtype=torch.float64) / np.linalg.norm(a)
    assert torch.allclose(res.x, expected, atol=1e-5)
    assert res.history.objective.shape[1] == 6
    assert set(res.history.chart[0].tolist()) == {0, 1}  # starts spread over both charts
    assert_monotone_and_on_manifold(atlas, res)


def test_multistart_keeps_best_misfit() -> None:
    torch.manual_seed(1)
    atlas = two_circles_atlas()
    # Closest point (0.5, 0) on the right circle; a local minimum (-0.5, 0) on the left circle.
    res = RiemannianDescent(atlas, dist2_to([0.2, 0.0]), max_iter=300).run(n_starts=8)
    assert res.objective == pytest.approx(0.09, abs=1e-8)
    assert torch.allclose(res.x, torch.tensor([0.5, 0.0], dtype=torch.float64), atol=1e-4)
    assert res.objective == res.objective_all.min()
    assert res.objective_all.max() > 0.4  # some starts ended on the left circle
    assert_monotone_and_on_manifold(atlas, res)


def test_multistart_descent_warm_starts_on_every_chart() -> None:
    atlas = two_circles_atlas()
    f = dist2_to([0.2, 0.0])  # global minimum 0.09 at (0.5, 0); a local one, 0.49, at (-0.5, 0)
    left = torch.tensor([[-0.6, 0.1]], dtype=torch.float64)
    # warm starts only: the image is projected on all four charts; the left circle's charts end in the
    # local minimum, the right circle's (projection onto its far side) in the global one, which wins
    found = multistart_descent(atlas, f, left, prior_starts=0, max_iter=300, ftol=0.0)
    assert found.n_warm == 4 and len(found.result.objective_all) == 4 and found.best_is_warm
    assert found.result.objective == pytest.approx(0.09, abs=1e-6)
    assert np.isclose(found.result.objective_all, 0.49, atol=1e-6).any()
    assert found.result.best_start in (2, 3)  # chart-major: rows 2, 3 are the right circle's charts
    # with prior samples too: the prior starts come after the warm ones and the best of all wins
    found = multistart_descent(atlas, f, left, prior_starts=8, seed=3, max_iter=300, ftol=0.0)
    assert len(found.result.objective_all) == 12 and found.result.objective == pytest.approx(0.09, abs=1e-6)
    assert found.result.objective == found.result.objective_all.min()
    # the same seed gives the same prior starts
    again = multistart_descent(atlas, f, left, prior_starts=8, seed=3, max_iter=300, ftol=0.0)
    assert np.array_equal(again.result.objective_all, found.result.objective_all)
    with pytest.raises(ValueError, match="at least one start"):
        multistart_descent(atlas, f, None, prior_starts=0)
    with pytest.raises(ValueError, match="prior_starts"):
        multistart_descent(atlas, f, None, prior_starts=-1)


def test_two_circles_symmetric_target() -> None:
    torch.manual_seed(2)
    atlas = two_circles_atlas()
    res = RiemannianDescent(atlas, dist2_to([0.0, 0.0]), max_iter=300).run(n_starts=4)
    assert res.objective == pytest.approx(0.25, abs=1e-8)
    assert abs(abs(float(res.x[0])) - 0.5) < 1e-4 and abs(float(res.x[1])) < 1e-4


def test_history_and_step_records() -> None:
    torch.manual_seed(3)
    atlas = circle_atlas()
    opt = RiemannianDescent(atlas, dist2_to([0.0, 3.0]), max_iter=5, record_iterates=True)
    res = opt.run(n_starts=2)
    h = res.history
    assert h.objective.shape == (res.n_iter + 1, 2) == h.chart.shape
    assert h.step.shape == (res.n_iter, 2)
    assert h.iterates is not None and h.iterates.shape == (res.n_iter + 1, 2, 2)
    assert np.all(h.step[np.isfinite(h.step)] >= 0)
    assert np.allclose(h.objective[-1], res.objective_all)


def test_unbatched_objective_and_determinism() -> None:
    atlas = sphere_atlas()
    target = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)

    def single(x: torch.Tensor) -> torch.Tensor:
        return ((x - target) ** 2).sum()

    results = []
    for _ in range(2):
        torch.manual_seed(5)
        results.append(RiemannianDescent(atlas, single, batched=False, max_iter=50).run(3))
    assert torch.equal(results[0].x_all, results[1].x_all)
    assert np.allclose(results[0].x.numpy(), [0.0, 2**-0.5, 2**-0.5], atol=1e-5)


def test_max_step_caps_trial_length() -> None:
    torch.manual_seed(4)
    atlas = circle_atlas()
    opt = RiemannianDescent(
        atlas, dist2_to([-3.0, 0.0]), max_step=0.05, max_iter=3, record_iterates=True
    )
    res = opt.run(x0=torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    moves = np.linalg.norm(np.diff(res.history.iterates[:, 0], axis=0), axis=1)
    assert moves.max() <= 0.05 + 1e-12
    assert res.history.objective[-1, 0] < res.history.objective[0, 0]


def test_auto_first_step_is_scale_free() -> None:
    # A tiny objective (like a relative EIT misfit) needs many step doublings from tau = 1;
    # step_init="auto" starts at the zero of the linear model and converges as fast as unscaled.
    atlas = sphere_atlas()
    a = [0.3, -0.2, -2.0]
    expected = torch.tensor(a, dtype=torch.float64) / np.linalg.norm(a)
    f = dist2_to(a)

    def tiny(x):
        return 1e-7 * f(x)

    def run(**kw):
        return RiemannianDescent(atlas, tiny, max_iter=15, ftol=0.0, gtol=0.0, **kw).run(
            n_starts=2, generator=torch.Generator().manual_seed(0)
        )

    fixed, auto = run(), run(step_init="auto")
    assert torch.allclose(auto.x, expected, atol=1e-5)
    assert not torch.allclose(fixed.x, expected, atol=1e-3)
    assert_monotone_and_on_manifold(atlas, auto)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"retraction": "exp"}, "retraction"),
        ({"step_init": "fast"}, "step_init"),
        ({"max_iter": -1}, "max_iter"),
        ({"shrink": 1.0}, "shrink"),
        ({"armijo": 0.0}, "armijo"),
        ({"hysteresis": 1.0}, "hysteresis"),
        ({"step_init": 0.0}, "step_init"),
    ],
)
def test_bad_options_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RiemannianDescent(circle_atlas(), dist2_to([0.0, 0.0]), **kwargs)


def test_bad_objective_and_starts_are_rejected() -> None:
    atlas = circle_atlas()
    with pytest.raises(ValueError, match="n_starts"):
        RiemannianDescent(atlas, dist2_to([0.0, 0.0])).run(n_starts=0)

    def scalar(x: torch.Tensor) -> torch.Tensor:
        return (x**2).sum()

    with pytest.raises(ValueError, match="one value per item"):
        RiemannianDescent(atlas, scalar).run(n_starts=3)


# --------------------------------------------------------------------------- stopping rule
def test_window_rule_definition() -> None:
    best = [10.0, 5.0, 4.0, 3.999, 3.9985]
    assert window_stalled(best, 2, 1e-3)  # 4.0 -> 3.9985 over 2 iterations: 3.75e-4 relative
    assert not window_stalled(best, 2, 1e-4)
    assert not window_stalled(best, 3, 1e-3)  # 5.0 -> 3.9985 over 3 iterations
    assert window_stalled(best[:4] + [3.999], 1, 0.0)  # no decrease at all
    assert not window_stalled(best[:2], 2, 0.5)  # too short a history
    assert not window_stalled(best, None, 1.0)  # disabled
    assert not window_stalled([math.inf, 1.0, 1.0], 2, 1e-3)  # no finite reference yet
    np.testing.assert_array_equal(best_per_iteration(np.array([[np.nan, 2.0], [np.inf, 1.0], [np.nan, np.nan]])),
                                  [2.0, 1.0, np.inf])


def test_window_rule_stops_when_the_best_stalls() -> None:
    """Target off the manifold: the best objective converges to 0.09 while slow starts keep going."""
    torch.manual_seed(1)
    atlas = two_circles_atlas()
    objective = dist2_to([0.2, 0.0])
    kw = {"max_iter": 300, "ftol": 0.0, "gtol": 0.0, "max_step": 0.05}  # short steps: far starts take long
    full = RiemannianDescent(atlas, objective, stop_window=None, **kw).run(n_starts=8)
    torch.manual_seed(1)
    rule = RiemannianDescent(atlas, objective, stop_window=5, stop_rtol=1e-6, **kw).run(n_starts=8)
    assert rule.stop_reason == "window" and rule.n_iter < full.n_iter / 2
    best = rule.best_objective
    assert best.shape == (rule.n_iter + 1,) and np.all(np.diff(best) <= 0)
    assert best[-6] - best[-1] <= 1e-6 * best[-6]  # the rule held when it stopped ...
    assert best[-7] - best[-2] > 1e-6 * best[-7]  # ... and not one iteration earlier
    assert rule.objective == pytest.approx(full.objective, rel=1e-5)
    assert rule.objective == pytest.approx(0.09, rel=1e-5)
    # the same iterations as the uninterrupted run up to the stop
    np.testing.assert_allclose(full.history.objective[: rule.n_iter + 1], rule.history.objective)


def test_stop_reason_converged_and_bad_window() -> None:
    torch.manual_seed(3)
    res = RiemannianDescent(circle_atlas(), dist2_to([2.0, 1.0]), max_iter=500, ftol=1e-9).run(n_starts=2)
    assert res.stop_reason in ("converged", "window") and res.n_iter < 500
    with pytest.raises(ValueError, match="stop_window"):
        RiemannianDescent(circle_atlas(), dist2_to([0.0, 0.0]), stop_window=0)
    with pytest.raises(ValueError, match="stop_rtol"):
        RiemannianDescent(circle_atlas(), dist2_to([0.0, 0.0]), stop_rtol=-1.0)


# --------------------------------------------------------------------------- pruning
def test_pruning_halves_the_starts_and_keeps_the_winner() -> None:
    """Successive halving: after iterations 3 and 6 the worse half of the surviving starts stops,
    ranked by their objective then; the result is the unpruned run's whenever its winner survives."""
    atlas = two_circles_atlas()
    objective = dist2_to([0.2, 0.0])
    kw = {"max_iter": 40, "ftol": 0.0, "gtol": 0.0, "max_step": 0.05, "stop_window": None}
    torch.manual_seed(1)
    full = RiemannianDescent(atlas, objective, **kw).run(n_starts=8)
    torch.manual_seed(1)
    pruned = RiemannianDescent(atlas, objective, prune_at=(3, 6), **kw).run(n_starts=8)
    obj = full.history.objective
    first = np.argsort(obj[3], kind="stable")[4:]  # the worse 4 of 8 after iteration 3
    survivors = np.argsort(obj[3], kind="stable")[:4]
    second = survivors[np.argsort(obj[6][survivors], kind="stable")[2:]]
    expected = np.full(8, -1)
    expected[first], expected[second] = 3, 6
    np.testing.assert_array_equal(pruned.pruned, expected)
    assert (full.pruned == -1).all()
    # a pruned start no longer moves; the others follow the unpruned run exactly
    hist = pruned.history.objective
    assert np.all(hist[4:, first] == hist[3, first]) and np.all(hist[7:, second] == hist[6, second])
    kept = expected < 0
    # (the pruned run may end earlier: it stops once its own starts have all stopped)
    np.testing.assert_allclose(hist[:, kept], obj[: len(hist), kept], rtol=1e-12)
    assert pruned.n_iter > 6
    assert full.best_start in np.flatnonzero(kept)
    assert pruned.best_start == full.best_start and pruned.objective == pytest.approx(full.objective, rel=1e-12)
    with pytest.raises(ValueError, match="prune_at"):
        RiemannianDescent(atlas, objective, prune_at=(0,))


def test_multistart_descent_passes_the_pruning_schedule() -> None:
    atlas = two_circles_atlas()
    found = multistart_descent(atlas, dist2_to([0.2, 0.0]), prior_starts=6, max_iter=10, prune_at=(2,))
    assert (found.result.pruned == 2).sum() == 3


# --------------------------------------------------------------------------- evaluation reuse
class _Counting:
    """dist2 objective that counts its items, with and without a graph."""

    def __init__(self, a: list[float]) -> None:
        self.f = dist2_to(a)
        self.items = 0
        self.items_with_graph = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.items += x.shape[0]
        self.items_with_graph += x.shape[0] if x.requires_grad else 0
        return self.f(x)


def test_line_search_keeps_the_gradient_of_the_accepted_point() -> None:
    # After an accepted step the state holds F and its gradient at the new point, equal to a fresh
    # evaluation there; the next iteration evaluates nothing at its base point.
    atlas = circle_atlas()
    obj = _Counting([2.0, 1.0])
    opt = RiemannianDescent(atlas, obj, max_iter=1, hysteresis=None)
    x0 = torch.tensor([[math.cos(0.2), math.sin(0.2)], [math.cos(1.2), math.sin(1.2)]], dtype=torch.float64)
    st = opt._start_state(2, x0, torch.tensor([0, 0]), None)
    assert not st.grad_valid.any()
    opt._iterate(st)
    assert st.grad_valid.all()
    f, g = opt._f_and_grad(st.x)
    assert torch.allclose(st.f, f) and torch.allclose(st.grad, g.to(torch.float64), atol=1e-12)
    before = obj.items
    st.tau[:] = 1e-9  # a trial that is surely accepted at once: one evaluation per start
    opt._iterate(st)
    assert obj.items - before == 2, "the base point was evaluated again"


def test_step_grows_only_after_a_first_trial_acceptance() -> None:
    atlas = circle_atlas()
    opt = RiemannianDescent(atlas, dist2_to([2.0, 1.0]), max_iter=1, hysteresis=None)
    x0 = torch.tensor([[math.cos(0.3), math.sin(0.3)]] * 2, dtype=torch.float64)
    st = opt._start_state(2, x0, torch.tensor([0, 0]), None)
    st.tau = torch.tensor([1e-3, 1e3], dtype=torch.float64)  # accepted at once / needs backtracking
    step, _, _ = opt._iterate(st)
    assert step[0] == 1e-3 and st.tau[0] == 2e-3  # grown
    assert step[1] < 1e3 and st.tau[1] == step[1]  # kept: the next trial is the accepted step


def test_select_start_picks_the_lowest_score_and_keeps_the_descent() -> None:
    atlas = two_circles_atlas()
    f = dist2_to([0.2, 0.0])  # global minimum 0.09 at (0.5, 0), local 0.49 at (-0.5, 0)
    left = torch.tensor([[-0.6, 0.1]], dtype=torch.float64)
    plain = multistart_descent(atlas, f, left, prior_starts=4, seed=3, max_iter=300, ftol=0.0)
    assert plain.result.x[0] > 0

    def prefer_left(x, charts, w):  # a prior that outweighs the misfit gap on the left circle
        return torch.where(x[:, 0] < 0, f(x) - 1.0, f(x))

    picked = multistart_descent(atlas, f, left, prior_starts=4, seed=3, max_iter=300, ftol=0.0, select=prefer_left)
    r = picked.result
    assert r.x[0] < 0 and r.objective == pytest.approx(0.49, abs=1e-6)
    assert torch.equal(r.x, r.x_all[r.best_start]) and torch.equal(r.w, r.w_all[r.best_start])
    assert r.chart == r.chart_all[r.best_start] and r.objective == r.objective_all[r.best_start]
    # the descent itself is the same; only the choice among its end points changed
    assert np.array_equal(r.objective_all, plain.result.objective_all)
    assert np.array_equal(r.history.objective, plain.result.history.objective)
    # a non-finite score is never chosen; if none is finite the objective's choice stays
    assert select_start(plain.result, lambda x, c, w: torch.where(x[:, 0] < 0, torch.nan, f(x))).x[0] > 0
    none = select_start(plain.result, lambda x, c, w: torch.full((len(x),), torch.inf))
    assert none.best_start == plain.result.best_start
    with pytest.raises(ValueError, match="one value per start"):
        select_start(plain.result, lambda x, c, w: torch.zeros(1))
