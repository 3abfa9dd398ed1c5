"""EIT baselines (Gauss-Newton, TV): their validated weights beat the constant image on every
held-out phantom, and the weight rule is reproducible."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from mpi4py import MPI

from eit_manifold.baselines.eit_absolute import (
    BASELINES,
    VALIDATED_WEIGHTS,
    choose_weight,
    homogeneous_fit,
    reconstruct_baseline,
    validated_weight,
)
from eit_manifold.pipelines.reconstruct import make_problem, reconstruction_operator
from eit_manifold.pipelines.simulate import SimulateConfig, simulate_data, simulation_model


def _problems(n: int, noise: float, sim_mesh: dict, rec_mesh: dict, size: int) -> list:
    """Held-out balls phantoms 0..n-1 (the report's), simulated on a finer mesh than the reconstruction's."""
    sim = SimulateConfig(image_size=size, **sim_mesh)
    model = simulation_model(sim, MPI.COMM_SELF)
    data = [simulate_data(replace(sim, phantom="balls", seed=i, noise=noise), model,
                          np.random.default_rng([0, i, round(noise * 1e6)])) for i in range(n)]
    operator = reconstruction_operator(data[0], (size, size), comm=MPI.COMM_SELF, **rec_mesh)
    return [make_problem(d, operator) for d in data]


def _errors(problem, method: str) -> tuple[float, float]:
    """Relative L2 errors (inside the tank) of the baseline and of the homogeneous fit."""
    inside, truth = problem.inside, problem.truth[problem.inside]
    image, details = reconstruct_baseline(problem, method, 0.2, 1.8)
    sigma0 = homogeneous_fit(problem.operator.model, problem.data.measurements)
    assert details["sigma0"] == pytest.approx(sigma0)
    return (float(np.linalg.norm(image[inside] - truth) / np.linalg.norm(truth)),
            float(np.linalg.norm(sigma0 - truth) / np.linalg.norm(truth)))


@pytest.fixture(scope="module")
def small_problems():
    return _problems(6, 0.01, {"mesh_size": 0.08}, {"mesh_size": 0.12}, 32)


@pytest.mark.parametrize("method", BASELINES)
def test_baselines_beat_the_constant_image_on_every_phantom(small_problems, method: str) -> None:
    for i, problem in enumerate(small_problems):
        error, constant = _errors(problem, method)
        assert error < constant, f"{method} on held-out phantom {i}: {error:.4f} >= constant {constant:.4f}"


def test_weight_rule_is_reproducible_and_validated_weights_interpolate(small_problems) -> None:
    grid = [10.0, 100.0, 1000.0]
    first, errors1 = choose_weight(small_problems[:2], "gauss-newton", grid)
    again, errors2 = choose_weight(small_problems[:2], "gauss-newton", grid)
    assert first == again and first in grid
    np.testing.assert_array_equal(errors1, errors2)
    assert errors1.shape == (2, 3) and first == grid[int(np.argmin(errors1.mean(axis=0)))]
    for method, table in VALIDATED_WEIGHTS.items():
        for level, weight in table.items():
            assert validated_weight(method, level) == pytest.approx(weight)
        lo, hi = min(table), max(table)
        mid = validated_weight(method, np.sqrt(lo * hi))  # geometric mean of the levels
        assert mid == pytest.approx(np.sqrt(table[lo] * table[hi]))
        assert validated_weight(method, 0.0) == pytest.approx(table[lo])  # below the floor: the floor's
        assert validated_weight(method, 1.0) == pytest.approx(table[hi])
    with pytest.raises(ValueError, match="unknown baseline"):
        reconstruct_baseline(small_problems[0], "lasso", 0.2, 1.8)


@pytest.mark.slow
@pytest.mark.parametrize("noise", [0.001, 0.01])
def test_baselines_beat_the_constant_on_20_report_phantoms(noise: float) -> None:
    """The report's setting: phantoms 0-19 on the default mesh, reconstructed on the coarse one."""
    problems = _problems(20, noise, {"mesh": "default"}, {"mesh": "coarse"}, 64)
    for method in BASELINES:
        for i, problem in enumerate(problems):
            error, constant = _errors(problem, method)
            assert error < constant, f"{method} at {noise:g} on phantom {i}: {error:.4f} >= {constant:.4f}"
