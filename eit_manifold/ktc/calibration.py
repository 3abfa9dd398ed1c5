"""Calibration on ``ref.mat``: conductivity, contact impedances and electrode geometry of the KTC tank.

The tank filled with saline only is modelled by a constant conductivity ``sigma``, contact
impedances ``z`` and the electrode geometry (width and centre of each electrode). The parameters
are fitted by Levenberg--Marquardt-damped Gauss--Newton on the CEM with forward-difference
derivatives, in stages (docs/ktc.md, "Calibration"):

1. ``shared``: ``log sigma`` and one ``log z`` for all electrodes (a new ``z`` reuses the mesh: one
   assembly and factorisation, tens of ms).
2. ``geometry+per_electrode`` (``geometry`` with a shared ``z``): in addition, one ``log z`` per
   electrode (wide prior towards the shared value) and per electrode a shift of its centre along
   the wall and a change of its width (millimetres; Gaussian prior of std :data:`GEOMETRY_PRIOR`,
   no global rotation). Derivatives come from *morphing* the nominal mesh
   (:class:`MeshMorph`): boundary nodes slide along the circle with a piecewise-linear angular
   displacement that moves every electrode end point to its new place, interior nodes follow with
   weight ``(r / R)^4``. This is smooth in the parameters (remeshing is not) and costs one CEM
   assembly per derivative. The fitted tank is then meshed afresh by gmsh.

   Without ``geometry``, stage 2 is ``per_electrode``: ``log sigma`` and one ``log z`` per
   electrode on the nominal mesh.

Two properties of the KTC measurement system, found by model-free checks of the data
(:func:`linear_consistency`, docs/ktc.md "Geometry findings"), enter every stage:

* **Channel offsets.** Each of the 31 difference channels carries an additive voltage that does not
  depend on the current pattern (the same, to a few %, in ``ref.mat`` and ``data1..4.mat``). No
  linear model ``U_p = T I_p`` (any conductivity, geometry or 3-D effect) can produce it. With
  ``offsets=True`` the residual is taken after removing, per channel, its mean over the patterns
  (variable projection: the offsets are fitted exactly and reported). They cancel in difference
  data ``U - U_ref``.
* **Current amplitudes.** The files' per-pattern amplitudes (1.41..1.51) fit the voltages no
  better than a random permutation of them; equal amplitudes fit better. ``currents="nominal"``
  (the default) uses the files' signs with their mean amplitude; ``"file"`` the files' values.

The relative residual reported is ``||F(sigma, z, geometry) + c - U_ref|| / ||U_ref||`` over all
kept data, ``c`` the channel offsets (zero when ``offsets=False``). A homogeneous tank is symmetric
under rotations and reflections, so ``ref.mat`` cannot tell the angle of electrode 1 nor the
numbering direction: those are checked against the targets of the training cases (docs/ktc.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from eit_manifold.ktc.data import N_ELECTRODES, RADIUS, KTCMeasurement
from eit_manifold.operators.eit import CEMForwardModel, MeshOptions, Tank, TankMesh, tank_mesh
from eit_manifold.optim.least_squares import forward_difference_jacobian, gauss_newton
from eit_manifold.validation import smallest_contact_impedance

# Geometry found by the checks in docs/ktc.md (electrode 1 and orientation against data1-4).
ELECTRODE_WIDTH = 0.015  # m: fits ref.mat better than the nominal 2*pi*R/64 = 1.13 cm (docs/ktc.md)
FIRST_ANGLE = np.pi / 2  # rad, centre of electrode 1: at the top of the truth images
ORIENTATION = 1  # counter-clockwise numbering
# Mesh: ~14k cells, graded at the electrode ends (h = 6 mm away from them, h / 10 at the ends).
MESH_OPTIONS = MeshOptions(mesh_size=0.006, refinement=10.0, grading_radius=6.0)
CURRENT_CONVENTIONS = ("nominal", "file")
# Prior std of each electrode's centre shift and width change (m): "a few mm" of build tolerance.
GEOMETRY_PRIOR = 0.002
# Prior std of log(z_l / z_shared) per electrode: wide (a factor e^5 ~ 150), a bad contact may need more.
IMPEDANCE_PRIOR = 5.0
# Data noise assumed by the priors' weights: rms misfit of the best model-free linear fit with
# offsets (about 1.5 % of ||U_ref||, :func:`linear_consistency`), spread evenly over the data.
NOISE_FLOOR = 0.015
MORPH_POWER = 4  # interior nodes follow the boundary displacement with weight (r / R)^4


def ktc_tank(
    contact_impedance: float | np.ndarray = 1e-3,
    electrode_width: float | np.ndarray = ELECTRODE_WIDTH,
    first_angle: float = FIRST_ANGLE,
    orientation: int = ORIENTATION,
    angle_offsets: float | np.ndarray = 0.0,
) -> Tank:
    """The KTC tank: radius 0.115 m, 32 electrodes (equally spaced unless ``angle_offsets`` are given)."""
    return Tank(
        radius=RADIUS, n_electrodes=N_ELECTRODES, electrode_width=electrode_width,
        contact_impedance=contact_impedance, first_angle=first_angle, orientation=orientation,
        angle_offsets=angle_offsets,
    )


def ktc_mesh(tank: Tank | None = None, options: MeshOptions = MESH_OPTIONS) -> TankMesh:
    """Mesh of the KTC tank (gmsh, graded at the electrode ends)."""
    return tank_mesh(tank or ktc_tank(), options)


def with_impedance(mesh: TankMesh, contact_impedance: float | np.ndarray) -> TankMesh:
    """The same mesh carrying a tank with other contact impedances (no re-meshing)."""
    return TankMesh(mesh.mesh, mesh.facet_tags, mesh.tank.with_impedance(contact_impedance), mesh.source)


def model_currents(currents: np.ndarray, convention: str = "file") -> np.ndarray:
    """The currents the model injects for a measurement's ``currents`` (P, L).

    ``"file"`` returns them as they are; ``"nominal"`` keeps each entry's sign and gives every
    nonzero entry the mean absolute value of the nonzero entries (equal amplitude in all patterns).
    """
    if convention not in CURRENT_CONVENTIONS:
        raise ValueError(f"currents must be one of {', '.join(CURRENT_CONVENTIONS)}, got {convention!r}")
    currents = np.asarray(currents, dtype=float)
    if convention == "file":
        return currents
    return np.sign(currents) * np.abs(currents[currents != 0]).mean()


def forward_model(
    mesh: TankMesh,
    measurement: KTCMeasurement,
    contact_impedance: float | np.ndarray | None = None,
    currents: str = "file",
) -> CEMForwardModel:
    """CEM model with the measurement's currents (see :func:`model_currents`) and difference measurements."""
    if contact_impedance is not None:
        mesh = with_impedance(mesh, contact_impedance)
    return CEMForwardModel(mesh, injection=model_currents(measurement.currents, currents),
                           measurement=measurement.measurement_matrix)


def channel_offsets(misfit: np.ndarray) -> np.ndarray:
    """Per-channel offsets ``c`` (M,) that best explain a (P, M) misfit ``U - F``: its mean over patterns."""
    return np.asarray(misfit, dtype=float).mean(axis=0)


def linear_consistency(measurement: KTCMeasurement) -> dict:
    """Model-free checks of a measurement: how well *any* linear system ``U_p = T I_p (+ c)`` fits.

    The odd electrodes' currents of the P patterns span a space of dimension at most 16, so with
    P = 76 patterns the data over-determine ``T`` (M x L); the relative residual of the least-squares
    fit is a floor for every linear forward model, whatever its conductivity, geometry or physics.

    Returns
    -------
    dict
        ``floor`` (dict: ``"{currents}"`` and ``"{currents}+offsets"`` for ``currents`` in ``file``,
        ``nominal`` -> relative residual), ``offsets`` (M,): the per-channel offsets ``c`` fitted
        with the nominal currents.
    """
    u = measurement.data
    floor: dict[str, float] = {}
    offsets = np.zeros(u.shape[1])
    for convention in ("file", "nominal"):
        a = model_currents(measurement.currents, convention)
        a = a[:, np.any(a != 0, axis=0)]
        for with_offsets in (False, True):
            design = np.hstack([a, np.ones((a.shape[0], 1))]) if with_offsets else a
            coef = np.linalg.lstsq(design, u, rcond=None)[0]
            key = convention + ("+offsets" if with_offsets else "")
            floor[key] = float(np.linalg.norm(u - design @ coef) / np.linalg.norm(u))
            if with_offsets and convention == "nominal":
                offsets = coef[-1]
    return {"floor": floor, "offsets": offsets}


class MeshMorph:
    """Models on a nominal mesh whose electrodes are moved by sliding the boundary nodes.

    Parameters
    ----------
    mesh : TankMesh
        Mesh of the nominal tank (its electrode end points are mesh nodes).

    Notes
    -----
    For centre shifts ``d_l`` and width changes ``w_l`` (arc lengths), the start of electrode ``l``
    moves by ``(d_l - w_l / 2) / R`` radians and its end by ``(d_l + w_l / 2) / R``; the angular
    displacement is interpolated linearly in the angle between consecutive end points, and a node at
    radius ``r`` moves by it times ``(r / R)^4``. Boundary nodes stay on the circle. The mesh's
    coordinates are changed only while a model is assembled and restored afterwards.
    """

    def __init__(self, mesh: TankMesh):
        self.mesh = mesh
        self.tank = mesh.tank
        x = mesh.mesh.geometry.x
        self._base = x.copy()
        self._r = np.hypot(x[:, 0], x[:, 1])
        self._theta = np.arctan2(x[:, 1], x[:, 0])
        iv = self.tank.electrode_intervals
        self._ends = np.concatenate([iv[:, 0], iv[:, 1]]) % (2 * math.pi)
        self._order = np.argsort(self._ends)

    def angle_displacement(self, shifts: np.ndarray, width_changes: np.ndarray) -> np.ndarray:
        """Angular displacement (radians) of every mesh node for the given shifts and width changes (m)."""
        R = self.tank.radius
        disp = np.concatenate([shifts - width_changes / 2, shifts + width_changes / 2]) / R
        xp, fp = self._ends[self._order], disp[self._order]
        two_pi = 2 * math.pi
        xp = np.concatenate([xp - two_pi, xp, xp + two_pi])
        fp = np.tile(fp, 3)
        return np.interp(self._theta % two_pi, xp, fp) * (self._r / R) ** MORPH_POWER

    def model(
        self, shifts: np.ndarray, width_changes: np.ndarray, contact_impedance: float | np.ndarray,
        currents: np.ndarray, measurement_matrix: np.ndarray,
    ) -> CEMForwardModel:
        """CEM model of the morphed mesh (centre shifts and width changes in m, CCW positive)."""
        theta = self._theta + self.angle_displacement(np.asarray(shifts, float), np.asarray(width_changes, float))
        x = self.mesh.mesh.geometry.x
        x[:, 0] = self._r * np.cos(theta)
        x[:, 1] = self._r * np.sin(theta)
        try:
            return CEMForwardModel(with_impedance(self.mesh, contact_impedance), injection=currents,
                                   measurement=measurement_matrix)
        finally:
            x[:] = self._base


@dataclass
class Calibration:
    """Fitted background of the tank.

    Attributes
    ----------
    sigma : float
        Background conductivity (S/m in the 2-D model).
    contact_impedance : array (32,)
        Contact impedance per electrode (Ohm m^2 in the 2-D model's units).
    residual : float
        ``||F + c - U_ref|| / ||U_ref||`` at the fitted values (``c`` the channel offsets).
    electrode_width : array (32,)
        Width (arc length, m) of each electrode.
    first_angle, orientation : float, int
        Angle of electrode 1's nominal centre and numbering direction.
    angle_offsets : array (32,)
        Shift (radians, counter-clockwise positive) of each electrode centre from equal spacing.
    offsets : array (M,)
        Additive offset of each kept measurement channel (zero if not fitted).
    currents : str
        Current convention of the model (:func:`model_currents`).
    stages : list of dict
        Per stage (``shared``, then ``geometry+per_electrode``, ``geometry`` or ``per_electrode``):
        values, residual and iterations (geometry: shifts and width changes in mm).
    mesh_options : MeshOptions
        How the calibrated tank is meshed.
    """

    sigma: float
    contact_impedance: np.ndarray
    residual: float
    electrode_width: np.ndarray | float = ELECTRODE_WIDTH
    first_angle: float = FIRST_ANGLE
    orientation: int = ORIENTATION
    angle_offsets: np.ndarray | float = 0.0
    offsets: np.ndarray | float = 0.0
    currents: str = "file"
    stages: list[dict] = field(default_factory=list)
    mesh_options: MeshOptions = MESH_OPTIONS
    _mesh: TankMesh | None = field(default=None, repr=False, compare=False)

    def tank(self) -> Tank:
        """The calibrated tank."""
        return ktc_tank(self.contact_impedance, self.electrode_width, self.first_angle, self.orientation,
                        self.angle_offsets)

    def mesh(self) -> TankMesh:
        """Mesh of the calibrated tank (made once, then reused)."""
        if self._mesh is None:
            self._mesh = ktc_mesh(self.tank(), self.mesh_options)
        return self._mesh

    def forward_model(self, measurement: KTCMeasurement) -> CEMForwardModel:
        """The calibrated CEM model (geometry, impedances, current convention) for ``measurement``.

        Its predictions of absolute data need the channel offsets added: ``F(sigma) + offsets``;
        difference data ``U - U_ref`` need nothing.
        """
        return forward_model(self.mesh(), measurement, self.contact_impedance, self.currents)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {
            "sigma": float(self.sigma), "contact_impedance": np.asarray(self.contact_impedance).tolist(),
            "residual": float(self.residual),
            "electrode_width": np.broadcast_to(self.electrode_width, (N_ELECTRODES,)).tolist(),
            "first_angle": float(self.first_angle), "orientation": int(self.orientation),
            "angle_offsets": np.broadcast_to(self.angle_offsets, (N_ELECTRODES,)).tolist(),
            "offsets": np.atleast_1d(np.asarray(self.offsets, dtype=float)).tolist(),
            "currents": self.currents, "stages": self.stages,
        }


def _levenberg_marquardt(
    residual_fn, theta: np.ndarray, max_iter: int, tol: float, step: float = 1e-6, project=None
) -> tuple[np.ndarray, list[float]]:
    """Minimise ``||r(theta)||^2`` by Levenberg-Marquardt with a forward-difference Jacobian.

    ``project`` maps every trial into the admissible set (see :func:`gauss_newton`). Returns
    ``theta`` and ``||r||^2`` after every iteration (the start first; an iteration whose trials
    all failed repeats the last value), so ``len(history) - 1`` iterations ran.
    """
    result = gauss_newton(lambda t: (residual_fn(t),) * 2, forward_difference_jacobian(residual_fn, step), theta,
                          globalisation="levenberg-marquardt", max_iter=max_iter, rtol=tol, project=project)
    history = [n**2 for n in result.residual_norm]
    return result.x, history + history[-1:] * (result.iterations + 1 - len(history))


# One BLAS thread: the fits' forward-difference Jacobians amplify the round-off of threaded BLAS
# (summation order depends on the thread count) into fitted values that differ by 0.1 % between
# one and two threads; with one, the calibration is the same on every machine's core count.
@threadpool_limits.wrap(limits=1, user_api="blas")
def calibrate(
    ref: KTCMeasurement,
    mesh: TankMesh | None = None,
    sigma0: float = 0.8,
    z0: float = 1e-3,
    per_electrode: bool = True,
    max_iter: int = 15,
    offsets: bool = True,
    currents: str = "nominal",
    geometry: bool = True,
    geometry_prior: float = GEOMETRY_PRIOR,
    geometry_iter: int = 6,
    mesh_options: MeshOptions = MESH_OPTIONS,
) -> Calibration:
    """Fit the background conductivity, contact impedance(s) and electrode geometry to the reference.

    Parameters
    ----------
    ref : KTCMeasurement
        The saline-only measurement (``ref.mat``).
    mesh : TankMesh, optional
        Mesh of the nominal tank (its width, angle and orientation are the starting geometry);
        defaults to :func:`ktc_mesh`. With ``geometry=True`` its coordinates are changed while
        the fit runs and restored afterwards, and the calibrated tank gets a mesh of its own
        (:meth:`Calibration.mesh`) made with ``mesh_options``.
    sigma0, z0 : float
        Starting values.
    per_electrode : bool
        Fit one contact impedance per electrode (in the geometry stage, or in a stage of its own
        without ``geometry``).
    max_iter : int
        Gauss-Newton iterations of the ``shared`` and ``per_electrode`` stages.
    offsets : bool
        Fit an additive offset per measurement channel (module docstring).
    currents : {"nominal", "file"}
        Current convention of the model (:func:`model_currents`).
    geometry : bool
        Fit each electrode's centre and width (stage ``geometry``).
    geometry_prior : float
        Prior std (m) of each centre shift and width change.
    geometry_iter : int
        Gauss-Newton iterations of the ``geometry`` stage (65, or 96 with ``per_electrode``, CEM
        assemblies each).
    mesh_options : MeshOptions
        How the fitted tank is meshed (``geometry=True``).

    Returns
    -------
    Calibration
        With :meth:`Calibration.forward_model` giving the calibrated model.
    """
    if not (sigma0 > 0 and z0 > 0):
        raise ValueError(f"starting values must be positive, got sigma0={sigma0!r}, z0={z0!r}")
    if not geometry_prior > 0:
        raise ValueError(f"geometry_prior must be positive, got {geometry_prior!r}")
    current_values = model_currents(ref.currents, currents)
    mesh = mesh or ktc_mesh()
    base = mesh.tank
    L = base.n_electrodes
    u = ref.data
    norm = float(np.linalg.norm(u))
    noise = NOISE_FLOOR / math.sqrt(u.size)  # per datum, relative to ||U_ref||

    def misfit(model: CEMForwardModel, sigma: float) -> np.ndarray:
        r = model.measurements(np.full(model.n_cells, sigma)) - u
        if offsets:
            r = r - channel_offsets(r)
        return r.ravel() / norm

    def on(target: TankMesh, z: np.ndarray) -> CEMForwardModel:
        return CEMForwardModel(with_impedance(target, z), injection=current_values, measurement=ref.measurement_matrix)

    def shared(theta: np.ndarray) -> np.ndarray:
        return misfit(on(mesh, np.full(L, np.exp(theta[1]))), float(np.exp(theta[0])))

    def resolvable(theta: np.ndarray) -> np.ndarray:
        # A fit that prefers the z -> 0 limit (e.g. too narrow electrodes) sends log z to -50 and
        # beyond, where |e|/z swamps the conductivity and the Cholesky factorisation fails; the
        # potentials reach that limit well above the smallest z double precision resolves.
        t = np.array(theta, dtype=float)
        z_floor = float(np.min(smallest_contact_impedance(base.electrode_width, math.exp(t[0]))))
        t[1] = max(t[1], math.log(z_floor))
        return t

    theta, hist = _levenberg_marquardt(shared, np.log([sigma0, z0]), max_iter, 1e-6, project=resolvable)
    sigma, z = float(np.exp(theta[0])), np.full(L, float(np.exp(theta[1])))
    stages = [{"stage": "shared", "sigma": sigma, "contact_impedance": float(z[0]),
               "residual": float(np.sqrt(hist[-1])), "iterations": len(hist) - 1}]
    final_mesh = mesh
    z_prior = float(np.log(z[0]))

    def z_prior_terms(log_z: np.ndarray) -> np.ndarray:
        return (log_z - z_prior) / IMPEDANCE_PRIOR * noise if log_z.size > 1 else np.zeros(0)

    if geometry:
        morph = MeshMorph(mesh)
        scale = 1e-3  # geometry parameters in mm: finite-difference steps and damping see O(1) numbers
        nz = L if per_electrode else 1

        def unpack(th: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
            d = th[1 + nz : 1 + nz + L] * scale
            return float(np.exp(th[0])), np.exp(th[1 : 1 + nz]), d - d.mean(), th[1 + nz + L :] * scale

        def geo(th: np.ndarray) -> np.ndarray:
            s, zz, d, w = unpack(th)
            model = morph.model(d, w, np.broadcast_to(zz, (L,)), current_values, ref.measurement_matrix)
            prior = th[1 + nz :] * scale / geometry_prior * noise
            return np.concatenate([misfit(model, s), z_prior_terms(th[1 : 1 + nz]), prior])

        start = np.concatenate([[np.log(sigma)], np.full(nz, np.log(z[0])), np.zeros(2 * L)])
        theta, hist = _levenberg_marquardt(geo, start, geometry_iter, 1e-4)
        sigma, zz, shifts, widths = unpack(theta)
        z = np.broadcast_to(zz, (L,)).copy()
        tank = ktc_tank(z, base.widths + widths, base.first_angle, base.orientation,
                        base.offsets + shifts / base.radius)
        final_mesh = ktc_mesh(tank, mesh_options)
        stages.append({
            "stage": "geometry" + ("+per_electrode" if per_electrode else ""), "sigma": sigma,
            "contact_impedance": z.tolist() if per_electrode else float(z[0]),
            "residual_morphed": float(np.linalg.norm(geo(theta)[: u.size])),
            "residual": float(np.linalg.norm(misfit(on(final_mesh, z), sigma))),
            "objective": float(np.sqrt(hist[-1])), "iterations": len(hist) - 1,
            "objective_history": np.sqrt(hist).tolist(),
            "shift_mm": (shifts * 1e3).tolist(), "width_change_mm": (widths * 1e3).tolist(),
        })
    elif per_electrode:

        def each(th: np.ndarray) -> np.ndarray:
            return np.concatenate([misfit(on(mesh, np.exp(th[1:])), float(np.exp(th[0]))), z_prior_terms(th[1:])])

        theta, hist = _levenberg_marquardt(each, np.log(np.concatenate([[sigma], z])), max_iter, 1e-6)
        sigma, z = float(np.exp(theta[0])), np.exp(theta[1:])
        stages.append({"stage": "per_electrode", "sigma": sigma, "contact_impedance": z.tolist(),
                       "residual": float(np.linalg.norm(each(theta)[: u.size])), "iterations": len(hist) - 1})
    tank = final_mesh.tank
    residual = model_residual(ref, final_mesh, sigma, z, currents)
    c = channel_offsets(-residual) if offsets else np.zeros(u.shape[1])
    cal = Calibration(
        sigma=sigma, contact_impedance=z, residual=float(np.linalg.norm(residual + c) / norm),
        electrode_width=tank.widths.copy(), first_angle=float(tank.first_angle),
        orientation=int(tank.orientation), angle_offsets=tank.offsets.copy(), offsets=c, currents=currents,
        stages=stages, mesh_options=mesh_options,
    )
    cal._mesh = with_impedance(final_mesh, z)
    return cal


def model_residual(
    ref: KTCMeasurement, mesh: TankMesh, sigma: float, z: float | np.ndarray, currents: str = "file"
) -> np.ndarray:
    """``F(sigma, z) - U_ref`` (P, M) for a constant ``sigma`` on ``mesh``."""
    zz = np.broadcast_to(np.asarray(z, dtype=float), (mesh.tank.n_electrodes,))
    model = forward_model(mesh, ref, zz, currents)
    return model.measurements(np.full(model.n_cells, sigma)) - ref.data


def relative_residual(
    ref: KTCMeasurement, mesh: TankMesh, sigma: float, z: float | np.ndarray,
    offsets: bool = False, currents: str = "file",
) -> float:
    """``||F(sigma, z) (+ c) - U_ref|| / ||U_ref||`` for a constant ``sigma`` on ``mesh``.

    With ``offsets=True`` the best per-channel offsets ``c`` are included (:func:`channel_offsets`).
    """
    r = model_residual(ref, mesh, sigma, z, currents)
    if offsets:
        r = r - channel_offsets(r)
    return float(np.linalg.norm(r) / np.linalg.norm(ref.data))
