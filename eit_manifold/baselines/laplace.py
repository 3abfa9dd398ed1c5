"""Gaussian (Laplace) posteriors of the classical reconstructions, the baseline for credible intervals.

* **Deblurring** (:func:`tikhonov_posterior`): Tikhonov ``0.5||A0 u - f||^2 + 0.5 alpha ||u||^2``
  is the MAP of the linear-Gaussian model ``f = A0 u + s N(0, I)``, ``u ~ N(0, s^2/alpha I)``,
  whose posterior is exactly Gaussian: mean the Tikhonov image, covariance
  ``s^2 (A0^T A0 + alpha I)^{-1}``, diagonal in the singular bases of the separable blur.
  ``alpha`` by the discrepancy principle (:func:`~eit_manifold.baselines.image.tikhonov_deblur`).
* **EIT** (:func:`gauss_newton_laplace`): the Gauss-Newton reconstruction with the Gaussian
  smoothness prior (:func:`~eit_manifold.baselines.eit_absolute.reconstruct_baseline`, weight by
  the discrepancy principle), linearised at its solution: covariance
  ``(J^T W J + w L^T L)^{-1}`` on the 32 x 32 pixel grid (``W`` the file's noise model).

Intervals are ``mean +- 1.645 std`` (90 %).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from torch import Tensor

from eit_manifold.baselines.image import SeparableBlurSVD, select_parameter, tikhonov_deblur
from eit_manifold.operators.blur import GaussianBlur

Z90 = 1.6448536269514722


def tikhonov_posterior(y: Tensor, op: GaussianBlur, noise_std: float, alpha: float | None = None,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Gaussian posterior of Tikhonov deblurring for one image ``y`` ``(H, W)``.

    ``alpha`` is the Tikhonov weight; by default the deblurring baseline's rule picks it
    (:func:`~eit_manifold.baselines.image.select_parameter` on the validation split of bars of this
    size, ``seed``), never from ``y`` itself.

    Returns
    -------
    dict
        ``mean``, ``std``, ``q05``, ``q95`` ``(H, W)`` and the chosen ``alpha``.
    """
    if y.dim() != 2:
        raise ValueError(f"expected one image (H, W), got shape {tuple(y.shape)}")
    if alpha is None:
        alpha = select_parameter("tikhonov", op, int(y.shape[-1]), seed=seed).value
    alpha = float(alpha)
    tik = tikhonov_deblur(y, op, alpha)
    svd = SeparableBlurSVD.of(op, tuple(y.shape))
    s2 = (svd.s**2).numpy()
    inv = noise_std**2 / (s2 + alpha)  # variance of each singular coefficient
    vh2, vw2 = svd.vh.numpy() ** 2, svd.vw.numpy() ** 2
    var = vh2 @ inv @ vw2.T  # var(u_pq) = sum_ij vh_pi^2 vw_qj^2 inv_ij
    mean = tik.x[0].numpy()
    std = np.sqrt(var)
    return {"mean": mean, "std": std, "q05": mean - Z90 * std, "q95": mean + Z90 * std, "alpha": alpha}


def gauss_newton_laplace(problem, sigma_min: float = 0.2, sigma_max: float = 1.8,
                         iterations: int | None = None) -> dict:
    """Laplace posterior at the Gauss-Newton solution of an EIT problem (conductivity images).

    Parameters
    ----------
    problem : EITProblem
        From :func:`eit_manifold.pipelines.reconstruct.load_problem`.
    sigma_min, sigma_max : float
        Bounds of the Gauss-Newton iterates.
    iterations : int, optional
        Gauss-Newton steps (default 10).

    Returns
    -------
    dict
        ``mean``, ``std``, ``q05``, ``q95`` at the problem's image size (NaN outside the tank)
        and the baseline's details.
    """
    from eit_manifold.baselines.eit_absolute import GRID, reconstruct_baseline
    from eit_manifold.baselines.eit_linear import jacobian_in_basis, pixel_basis, smoothness_prior_factor
    from eit_manifold.operators.noise import RelativeNoise

    image, details = reconstruct_baseline(problem, "gauss-newton", sigma_min, sigma_max, iterations)
    model = problem.operator.model
    h, w = problem.operator.image_shape
    if h % GRID or w % GRID:
        raise ValueError(f"the Laplace baseline needs an image size divisible by {GRID}, got {(h, w)}")
    basis = pixel_basis(model, GRID)
    coarse = image[:: h // GRID, :: w // GRID]
    x = basis.from_image(coarse)
    std_d = RelativeNoise(max(problem.data.noise_level, 1e-3)).std(problem.data.measurements).ravel()
    res = model.solve(basis.matrix @ x)
    jac = jacobian_in_basis(model, res, basis.matrix) / std_d[:, None]
    weight = details["weight"] if details["weight"] is not None else 0.0
    L = smoothness_prior_factor(basis.centres, corr_length=model.tank.radius / 4, std=1.0)
    precision = jac.T @ jac + weight * (L.T @ L)
    cov = scipy.linalg.cho_solve(scipy.linalg.cho_factor(precision), np.eye(len(x)))
    sd = basis.to_image(np.sqrt(np.clip(np.diag(cov), 0, None)), fill=0.0)
    factor = h // GRID
    sd_img = np.kron(sd, np.ones((factor, factor)))
    mean = problem.to_image(image)
    std = problem.to_image(sd_img)
    return {"mean": mean, "std": std, "q05": mean - Z90 * std, "q95": mean + Z90 * std,
            "details": {**details, "laplace_grid": GRID}}
