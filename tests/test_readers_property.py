"""Property-based tests of the input readers: any file is either read into valid data or rejected
with a ``ValueError`` (``FileNotFoundError``) naming it; never another exception, never a huge
allocation, never data that break the documented invariants."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from eit_manifold.operators.eit.data_file import REQUIRED_KEYS, read_measurements

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    """A fresh directory per example (hypothesis runs many examples in one test call)."""
    work = Path(tempfile.mkdtemp(prefix="eitm-prop-"))
    try:
        yield work
    finally:
        shutil.rmtree(work)


def _valid_measurement_arrays(L: int = 8) -> dict[str, np.ndarray]:
    eye = np.eye(L)
    currents = eye - np.roll(eye, 1, axis=1)
    matrix = eye - np.roll(eye, -1, axis=1)
    potentials = np.random.default_rng(0).standard_normal((L, L))
    potentials -= potentials.mean(axis=1, keepdims=True)
    return {"currents": currents, "electrode_potentials": potentials, "measurements": potentials @ matrix.T,
            "measurement_matrix": matrix, "electrode_angles": 2 * np.pi * np.arange(L) / L,
            "electrode_width": np.full(L, 0.2), "contact_impedance": np.full(L, 0.01), "radius": np.array(1.0),
            "noise_level": np.array(0.01)}


def _arrays(dtypes=(np.float64, np.int64, np.complex128, np.bool_)) -> st.SearchStrategy:
    numeric = st.sampled_from(dtypes).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9)))
    text = hnp.arrays(np.dtype("U3"), hnp.array_shapes(min_dims=0, max_dims=2, max_side=4))
    return st.one_of(numeric, text)


@SETTINGS
@given(key=st.sampled_from([*REQUIRED_KEYS, "conductivity_image", "measurements_clean"]),
       value=st.one_of(st.none(), _arrays()))
def test_measurement_reader_accepts_only_valid_files(key, value):
    arrays = _valid_measurement_arrays()
    if value is None:
        arrays.pop(key, None)
    else:
        arrays[key] = value
    with _workdir() as work:
        np.savez(work / "m.npz", **arrays)
        try:
            data = read_measurements(work / "m.npz")
        except ValueError as exc:
            assert "m.npz" in str(exc) and "\n" not in str(exc)
            return
        # accepted: every invariant the rest of the package relies on holds
        P, L = data.currents.shape
        M = data.measurement_matrix.shape[0]
        assert data.measurements.shape == (P, M) and np.all(np.isfinite(data.measurements))
        assert data.electrode_angles.shape == data.electrode_width.shape == data.contact_impedance.shape == (L,)
        assert L >= 2 and np.all(data.electrode_width > 0) and np.all(data.contact_impedance > 0)
        assert np.isfinite(data.radius) and data.radius > 0
        assert np.isnan(data.noise_level) or data.noise_level >= 0
        assert np.allclose(data.currents.sum(axis=1), 0, atol=1e-8 * np.abs(data.currents).max())
        for arr in (data.currents, data.measurements, data.measurement_matrix):
            assert arr.dtype == np.float64


def _ktc_value(shape):
    right = hnp.arrays(np.float64, shape, elements=st.floats(allow_nan=True, allow_infinity=True, width=32))
    return st.one_of(right, _arrays((np.float64, np.int64, np.complex128)))


@SETTINGS
@given(keys=st.fixed_dictionaries({}, optional={"Inj": _ktc_value((32, 76)), "Mpat": _ktc_value((32, 31)),
                                                "Uel": _ktc_value((2356, 1))}))
def test_ktc_reader_accepts_only_valid_files(keys):
    from eit_manifold.ktc.data import read_raw

    with _workdir() as work:
        scipy.io.savemat(work / "data1.mat", keys or {"other": np.zeros(1)})
        try:
            currents, matrix, data = read_raw(work / "data1.mat")
        except ValueError as exc:
            assert "data1.mat" in str(exc) and "\n" not in str(exc)
            return
        assert currents.shape == (76, 32) and matrix.shape == (31, 32) and data.shape == (76, 31)
        assert np.all(np.isfinite(currents)) and np.all(np.isfinite(matrix)) and not np.any(np.isinf(data))


@SETTINGS
@given(data=st.binary(max_size=300))
def test_readers_reject_arbitrary_bytes(data):
    from eit_manifold.ktc.data import read_ktc, read_truth

    with _workdir() as work:
        for name, read in (("m.npz", read_measurements), ("x.mat", read_ktc), ("x.mat", read_truth)):
            (work / name).write_bytes(data)
            with pytest.raises(ValueError, match=name):
                read(work / name)


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.integers(10**6, 10**15),
                          st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4))
_json = st.recursive(_json_scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                        st.dictionaries(st.text(max_size=4), c, max_size=3)),
                     max_leaves=6)
_CHART_KEYS = ["data_shape", "latent_dim", "sigma_hd", "blocks", "hidden", "conv_blocks", "conv_hidden", "levels",
               "flow_blocks", "clamp", "n_charts", "chart", "format"]


@settings(max_examples=30, deadline=5000)  # a config that tried to allocate a huge model would blow the deadline
@given(key=st.sampled_from(_CHART_KEYS), value=_json)
def test_atlas_directory_loader_rejects_damaged_configs_quickly(key, value):
    from eit_manifold.manifold import load_atlas

    with _workdir() as work:
        src = REPO / "eit_manifold" / "atlases" / "balls-k1"
        shutil.copytree(src, work / "atlas")
        config = json.loads((work / "atlas" / "config.json").read_text())
        (config if key in ("n_charts", "chart", "format") else config["chart"])[key] = value
        (work / "atlas" / "config.json").write_text(json.dumps(config))
        try:
            atlas = load_atlas(work / "atlas")
        except (ValueError, FileNotFoundError) as exc:
            assert "\n" not in str(exc)
            return
        # accepted only if the config still describes the stored weights exactly
        assert sum(p.numel() for p in atlas.parameters()) == 287234


@settings(max_examples=12, deadline=None)
@given(cut=st.floats(0.0, 0.98), noise=st.binary(max_size=64))
def test_mesh_reader_rejects_damaged_files(cut, noise):
    from eit_manifold.operators.eit.geometry import Tank
    from eit_manifold.operators.eit.mesh import load_tank_mesh

    with _workdir() as work:
        text = (REPO / "meshes" / "coarse.msh").read_bytes()
        (work / "m.msh").write_bytes(text[: int(cut * len(text))] + noise)
        with pytest.raises(ValueError, match="m.msh"):
            load_tank_mesh(work / "m.msh", Tank())


@SETTINGS
@given(image=_arrays(), kind=st.sampled_from(["image", "conductivity"]))
def test_phantom_image_reader_returns_usable_images_or_rejects(image, kind):
    from eit_manifold.pipelines.simulate import load_phantom_image

    with _workdir() as work:
        np.save(work / "p.npy", image)
        try:
            x = load_phantom_image(work / "p.npy", kind)
        except ValueError as exc:
            assert "p.npy" in str(exc) and "\n" not in str(exc)
            return
        assert x.ndim == 2 and x.dtype == np.float64 and np.all(np.isfinite(x))
        assert (x.min() >= 0 and x.max() <= 1) if kind == "image" else x.min() > 0
