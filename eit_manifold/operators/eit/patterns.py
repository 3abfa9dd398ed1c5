"""Current injection patterns (P×L) and measurement matrices (M×L) for L electrodes."""

from __future__ import annotations

import numpy as np

INJECTIONS = ("adjacent", "opposite", "trigonometric")
MEASUREMENTS = ("adjacent", "ground")


def _as_matrix(name: str, value: np.ndarray, n_electrodes: int) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != n_electrodes:
        raise ValueError(f"{name} must have shape (n, {n_electrodes}) for {n_electrodes} electrodes, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def injection_patterns(kind: str | np.ndarray, n_electrodes: int, amplitude: float = 1.0) -> np.ndarray:
    """Current patterns, one per row, shape (P, L); each row sums to zero.

    Parameters
    ----------
    kind : {"adjacent", "opposite", "trigonometric"} or array of shape (P, L)
        ``adjacent``: +I on electrode l, -I on l+1 (P = L). ``opposite``: +I on l, -I on
        l + L/2 for l < L/2 (P = L/2, L even). ``trigonometric``: I cos(k theta_l),
        k = 1..L/2, and I sin(k theta_l), k = 1..L/2-1, with theta_l = 2 pi l / L (P = L - 1),
        scaled so the largest current is ``amplitude``. A user matrix is checked and returned.
    n_electrodes : int
        Number of electrodes L.
    amplitude : float
        Current injected (in the unit of the data; amperes by default).
    """
    L = n_electrodes
    eye = np.eye(L)
    if isinstance(kind, str):
        if kind == "adjacent":
            return amplitude * (eye - np.roll(eye, 1, axis=1))
        if kind == "opposite":
            if L % 2:
                raise ValueError(f"opposite injection needs an even number of electrodes, got {L}")
            return amplitude * (eye - np.roll(eye, L // 2, axis=1))[: L // 2]
        if kind == "trigonometric":
            theta = 2 * np.pi * np.arange(L) / L
            rows = [np.cos(k * theta) for k in range(1, L // 2 + 1)]
            rows += [np.sin(k * theta) for k in range(1, (L + 1) // 2)]
            pats = np.array(rows)
            return amplitude * pats / np.abs(pats).max(axis=1, keepdims=True)
        raise ValueError(f"unknown injection {kind!r}: choose one of {', '.join(INJECTIONS)} or give a matrix")
    pats = _as_matrix("injection matrix", kind, L)
    sums = np.abs(pats.sum(axis=1))
    bad = np.flatnonzero(sums > 1e-10 * max(1.0, np.abs(pats).max()))
    if bad.size:
        raise ValueError(
            f"injection pattern(s) {bad.tolist()} do not sum to zero (sums {pats.sum(axis=1)[bad].tolist()}): "
            "the currents of each pattern must sum to zero"
        )
    return pats


def measurement_matrix(kind: str | np.ndarray, n_electrodes: int) -> np.ndarray:
    """Measurement matrix, shape (M, L): the data of pattern p are ``M @ U_p``.

    Parameters
    ----------
    kind : {"adjacent", "ground"} or array of shape (M, L)
        ``adjacent``: U_l - U_{l+1} (M = L); ``ground``: the grounded potentials themselves
        (sum of U is zero; M = L). A user matrix is checked and returned.
    n_electrodes : int
        Number of electrodes L.
    """
    L = n_electrodes
    eye = np.eye(L)
    if isinstance(kind, str):
        if kind == "adjacent":
            return eye - np.roll(eye, 1, axis=1)
        if kind == "ground":
            return eye
        raise ValueError(f"unknown measurement {kind!r}: choose one of {', '.join(MEASUREMENTS)} or give a matrix")
    return _as_matrix("measurement matrix", kind, L)
