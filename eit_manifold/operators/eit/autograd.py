"""The torch bridge: ``EITOperator``, a module whose forward solves the CEM and whose backward
runs the adjoint, reusing the forward factorisation (one back-substitution per pattern).

Inputs are conductivities per pixel (B, H, W) on the square [-R, R]^2 or per cell (B, n_cells),
in float64; outputs are data (B, P, M). Pixel images are mapped to cells by the area-weighted
matrix P (rows sum to 1); gradients go back through P^T.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI
from torch.autograd.function import once_differentiable

from eit_manifold.operators.eit.forward import CEMForwardModel, ForwardResult
from eit_manifold.operators.eit.geometry import Tank
from eit_manifold.operators.eit.mesh import MeshOptions, TankMesh, tank_mesh
from eit_manifold.operators.eit.parallel import spmd_map
from eit_manifold.operators.noise import NoiseModel, RelativeNoise


class _CEMFunction(torch.autograd.Function):
    """sigma per cell (B, n_cells) -> data (B, P, M); backward = adjoint solves.

    With a batch communicator of several processes, each process solves its share of the batch
    (on its own copy of the mesh) and the data and gradients are gathered on every process.
    """

    @staticmethod
    def forward(ctx, sigma_cells: torch.Tensor, model: CEMForwardModel, batch_comm: MPI.Comm) -> torch.Tensor:  # type: ignore[override]
        values = sigma_cells.detach().cpu().numpy()
        results: dict[int, ForwardResult] = {}

        def solve(i: int) -> np.ndarray:
            results[i] = model.solve(values[i])
            return results[i].measurements

        data = np.stack(spmd_map(solve, list(range(len(values))), batch_comm))
        # Keep the factorisations only when a backward pass may come (bounded memory otherwise).
        ctx.results = results if sigma_cells.requires_grad else None
        ctx.model, ctx.batch_comm = model, batch_comm
        return torch.from_numpy(data).to(device=sigma_cells.device, dtype=sigma_cells.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_data: torch.Tensor):  # type: ignore[override]
        g = grad_data.detach().cpu().numpy()

        def vjp(i: int) -> np.ndarray:
            # An item whose output gradient is zero (e.g. a rejected line-search trial
            # differentiated with the batch) needs no adjoint solve.
            if not g[i].any():
                return np.zeros(ctx.model.n_cells)
            return ctx.model.vjp(ctx.results[i], g[i])

        grads = np.stack(spmd_map(vjp, list(range(len(g))), ctx.batch_comm))
        return torch.from_numpy(grads).to(device=grad_data.device, dtype=grad_data.dtype), None, None


class EITOperator(torch.nn.Module):
    """Differentiable CEM forward operator: conductivity -> electrode data.

    Parameters
    ----------
    tank : Tank
        Geometry and contact impedances.
    mesh : str, path or MeshOptions, optional
        Mesh preset name, ``.msh`` file or options; default: the ``coarse`` preset (the
        reconstruction mesh; simulate uses ``default``, so data and model meshes differ).
    mesh_size : float, optional
        Element size away from the electrodes (instead of ``mesh``).
    image_shape : (H, W) or (D, H, W), optional
        Shape of conductivity images on [-R, R]^2 accepted besides per-cell vectors; on a 3-D
        mesh a voxel grid (D layers from the bottom) over the mesh's height.
    injection, measurement : str or array
        Current patterns and measurement matrix, as in :class:`CEMForwardModel`.
    comm : MPI.Comm
        Communicator the mesh is distributed over (every process runs the same torch code).
    batch_comm : MPI.Comm, optional
        Split batch items across these processes instead; then the mesh lives on ``COMM_SELF``
        on each of them (``comm`` must be ``COMM_SELF``).
    model : CEMForwardModel, optional
        Use this model (and its mesh) instead of building one; ``mesh``, ``mesh_size``,
        ``injection`` and ``measurement`` are then ignored. See :meth:`from_model`.
    noise_model : NoiseModel, optional
        The data's noise (``op.noise_model``; :meth:`measure` draws from it); default
        :class:`~eit_manifold.operators.noise.RelativeNoise` of level 0.

    Examples
    --------
    >>> op = EITOperator(Tank(), mesh_size=0.1, image_shape=(32, 32))   # doctest: +SKIP
    >>> y = op(torch.ones(2, 32, 32, dtype=torch.float64))              # (2, 16, 16)
    """

    def __init__(
        self,
        tank: Tank,
        mesh: str | Path | MeshOptions | TankMesh | None = None,
        mesh_size: float | None = None,
        image_shape: tuple[int, int] | None = (64, 64),
        injection: str | np.ndarray = "adjacent",
        measurement: str | np.ndarray = "adjacent",
        comm: MPI.Comm = MPI.COMM_WORLD,
        batch_comm: MPI.Comm | None = None,
        model: CEMForwardModel | None = None,
        noise_model: NoiseModel | None = None,
    ):
        super().__init__()
        self.noise_model: NoiseModel = RelativeNoise(0.0) if noise_model is None else noise_model
        if batch_comm is not None and batch_comm.size > 1 and comm.size > 1:
            raise ValueError("batch splitting needs the mesh on COMM_SELF: pass comm=MPI.COMM_SELF with batch_comm")
        self.batch_comm = batch_comm if batch_comm is not None else MPI.COMM_SELF
        if model is not None:
            self.tank_mesh = model.tank_mesh
        elif isinstance(mesh, TankMesh):
            self.tank_mesh = mesh
        else:
            self.tank_mesh = tank_mesh(tank, "coarse" if mesh is None and mesh_size is None else mesh, mesh_size, comm)
        self.tank = tank
        self.model = model if model is not None else CEMForwardModel(self.tank_mesh, injection, measurement)
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        if self.image_shape is not None:
            P = self.model.pixel_map(self.image_shape).tocsr()
            self._P = _sparse_tensor(P)
            self._PT = _sparse_tensor(P.T.tocsr())

    @classmethod
    def from_model(
        cls, model: CEMForwardModel, image_shape: tuple[int, int] | None = (64, 64), batch_comm: MPI.Comm | None = None,
        noise_model: NoiseModel | None = None,
    ) -> EITOperator:
        """Wrap an existing forward model (its mesh, impedances, patterns; e.g. a calibrated one).

        The model is shared, not copied: its factorisation caches and settings are reused.
        """
        return cls(model.tank, image_shape=image_shape, batch_comm=batch_comm, model=model, noise_model=noise_model)

    @property
    def n_cells(self) -> int:
        return self.model.n_cells

    @property
    def data_shape(self) -> tuple[int, int]:
        """(P, M) of one item's data."""
        return self.model.data_shape

    def to_cells(self, sigma: torch.Tensor) -> torch.Tensor:
        """Map a batch of images (B, H, W) or cell vectors (B, n_cells) to cell values (B, n_cells)."""
        if not isinstance(sigma, torch.Tensor):
            raise TypeError(f"conductivity must be a torch tensor, got {type(sigma).__name__}")
        sigma = sigma.to(torch.float64)
        if sigma.ndim == 2 and sigma.shape[1] == self.n_cells:
            return sigma
        if self.image_shape is not None and tuple(sigma.shape[1:]) == self.image_shape:
            flat = sigma.reshape(sigma.shape[0], -1)
            _check_positive(flat, "pixel")
            return _PixelToCells.apply(flat, self._P.to(flat.device), self._PT.to(flat.device))
        expected = f"(B, {self.n_cells})"
        if self.image_shape is not None:
            expected += f" or (B, {', '.join(str(v) for v in self.image_shape)})"
        raise ValueError(f"conductivity must have shape {expected}, got {tuple(sigma.shape)}")

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        """Data (B, P, M) for conductivities (B, H, W) or (B, n_cells) (float64)."""
        cells = self.to_cells(sigma)
        _check_positive(cells, "cell")
        return _CEMFunction.apply(cells, self.model, self.batch_comm)

    def measure(self, sigma: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy data: :meth:`forward` plus a draw of ``noise_model`` from ``generator``."""
        return self.noise_model.sample(self.forward(sigma), generator)

    def jacobian(self, sigma: torch.Tensor) -> torch.Tensor:
        """Jacobian of one item's data w.r.t. its input: (P*M, n_cells) or (P*M, H*W) for images.

        Uses one adjoint solve per measurement row, reusing the forward factorisation.
        """
        cells = self.to_cells(sigma.unsqueeze(0)).detach()[0]
        result = self.model.solve(cells.cpu().numpy())
        J = self.model.jacobian(result).reshape(-1, self.n_cells)
        if self.image_shape is not None and tuple(sigma.shape) == self.image_shape:
            J = (self.model.pixel_map(self.image_shape).T @ J.T).T
        return torch.from_numpy(np.ascontiguousarray(J))


class _PixelToCells(torch.autograd.Function):
    """x (B, H*W) -> P x (B, n_cells), with backward P^T (sparse, twice differentiable)."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, P: torch.Tensor, PT: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(PT)
        return torch.sparse.mm(P, flat.T).T

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (PT,) = ctx.saved_tensors
        return torch.sparse.mm(PT, grad.T).T, None, None


def _sparse_tensor(matrix) -> torch.Tensor:
    coo = matrix.tocoo()
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(coo.data), coo.shape, check_invariants=True).coalesce()


def _check_positive(values: torch.Tensor, what: str) -> None:
    """Conductivities must be positive and finite: name the first bad item and entry."""
    bad = ~torch.isfinite(values) | (values <= 0)
    if bool(bad.any()):
        b, i = (int(v) for v in torch.nonzero(bad)[0])
        raise ValueError(
            f"conductivity must be positive and finite: item {b}, {what} {i} has {float(values[b, i])!r}"
        )


def log_conductivity_to_conductivity(log_sigma: torch.Tensor) -> torch.Tensor:
    """Differentiable log-conductivity parametrisation sigma = exp(s): positive by construction."""
    return torch.exp(log_sigma)
