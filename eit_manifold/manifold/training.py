"""Training of an atlas: seeding, mixture phase with a Lipschitz penalty, overlap phase.

Phases are a fixed function of the epoch (so a resumed run follows the same schedule):

1. ``seed`` (``pretrain_epochs``): ``K`` far-apart training points are chosen by farthest-point
   sampling in the geodesic (k-nearest-neighbour graph) distance; chart ``k`` is trained alone on
   the points geodesically nearest to seed ``k`` (:func:`seed_neighbourhoods`).
2. ``mixture``: the mixture loss ``-log sum_k alpha_k exp(-L_k)``, plus for the first
   ``lipschitz_epochs`` a finite-difference Lipschitz penalty
   ``lambda * mean ||G(w + delta u) - G(w)||^2 / delta^2`` (``w`` from the prior, ``u`` a random
   unit vector, network units) on every generator.
3. ``overlap`` (last ``overlap_epochs``): detached responsibilities ``beta`` are recomputed and a
   point whose noise-free latent in its best chart is near the edge (``max_j |w_j| > overlap_edge``)
   is assigned half to its best and half to its second-best chart; the loss is
   ``mean_i sum_k beta_ik L_ik``. Charts thereby grow into their neighbours, so they overlap.

When the mixture phase starts (and every ``calibrate_every`` epochs after), each chart's latent
flow is re-calibrated so that the prior's
plateau covers the encodings of the chart's neighbourhood (:meth:`Chart.calibrate_prior`; gradient
steps alone move the flow too slowly when the decoder stretches the latent space).
After each epoch of phases 2-3 the chart weights are ``alpha_k <- mean_i beta_ik``. Adam with
gradient-norm clipping. Every random draw (shuffling, encoder noise, Lipschitz directions) comes
from one ``torch.Generator`` whose state is checkpointed with the model and the optimizer, so
``resume`` reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from torch import Tensor
from tqdm.auto import tqdm

from eit_manifold.manifold.atlas import Atlas
from eit_manifold.manifold.checkpoint import (
    load_training_checkpoint,
    save_training_checkpoint,
    validate_state_dict,
)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class AtlasTrainConfig:
    """Optimisation settings (the architecture lives in :class:`ChartConfig`).

    Attributes
    ----------
    epochs : int
        Total number of epochs (all phases).
    batch_size : int
        Mini-batch size.
    lr : float
        Adam learning rate (decayed geometrically to ``lr * lr_final`` over the run).
    lr_final : float
        Final learning-rate factor.
    pretrain_epochs : int
        Epochs of the seeding phase.
    lipschitz_epochs : int
        Epochs of the mixture phase with the Lipschitz penalty.
    lipschitz_weight : float
        Weight ``lambda`` of the penalty.
    lipschitz_delta : float
        Finite-difference step ``delta``.
    overlap_epochs : int
        Epochs of the overlap phase (at the end).
    overlap_edge : float
        Latent threshold above which a point also trains the second-best chart.
    overlap_margin : float
        ... but only when that chart's loss exceeds the best one by less than this
        (so a chart is never dragged towards far-away data).
    calibrate_every : int
        Besides the calibration of the latent flows when the mixture phase starts, re-calibrate
        them every this many epochs afterwards, on the current best-chart assignment (0: never).
    grad_clip : float
        Maximal gradient norm.
    checkpoint_every : int
        Write ``checkpoint.pt`` every this many epochs (and at the end).
    seed : int
        Seed of the training random stream.
    """

    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    lr_final: float = 0.1
    pretrain_epochs: int = 5
    lipschitz_epochs: int = 10
    lipschitz_weight: float = 1e-3
    lipschitz_delta: float = 1e-2
    overlap_epochs: int = 5
    overlap_edge: float = 0.7
    overlap_margin: float = 100.0
    calibrate_every: int = 0
    grad_clip: float = 10.0
    checkpoint_every: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        from eit_manifold.validation import MAX_SEED, check_float, check_int

        for name in ("epochs", "batch_size", "checkpoint_every"):
            setattr(self, name, check_int(name, getattr(self, name), 1, 10**6))
        for name in ("pretrain_epochs", "lipschitz_epochs", "overlap_epochs", "calibrate_every"):
            setattr(self, name, check_int(name, getattr(self, name), 0, 10**6))
        self.seed = check_int("seed", self.seed, 0, MAX_SEED)
        # Adam's step is about lr per parameter: above 1 every weight jumps by more than its scale
        self.lr = check_float("lr", self.lr, 0.0, 1.0, lo_open=True)
        self.lr_final = check_float("lr_final", self.lr_final, 0.0, 1.0, lo_open=True)
        for name in ("lipschitz_weight", "lipschitz_delta", "overlap_edge", "overlap_margin", "grad_clip"):
            setattr(self, name, check_float(name, getattr(self, name), 0.0))

    def phase(self, epoch: int) -> str:
        """``"seed"``, ``"mixture"`` or ``"overlap"`` for a 0-based epoch."""
        if epoch < self.pretrain_epochs:
            return "seed"
        if epoch >= max(self.pretrain_epochs, self.epochs - self.overlap_epochs):
            return "overlap"
        return "mixture"

    def lipschitz_on(self, epoch: int) -> bool:
        """Whether the Lipschitz penalty is active at ``epoch``."""
        return self.pretrain_epochs <= epoch < self.pretrain_epochs + self.lipschitz_epochs

    def recalibrate(self, epoch: int) -> bool:
        """Whether the latent flows are re-calibrated at the start of ``epoch`` (after the first)."""
        since = epoch - self.pretrain_epochs
        return self.calibrate_every > 0 and since > 0 and since % self.calibrate_every == 0

    def learning_rate(self, epoch: int) -> float:
        """Geometric decay from ``lr`` to ``lr * lr_final``."""
        return self.lr * self.lr_final ** (epoch / max(1, self.epochs - 1))


@dataclass
class TrainState:
    """What a checkpoint restores besides the model and optimizer."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)


def knn_graph(data: Tensor, k: int = 10, chunk: int = 1024) -> csr_matrix:
    """Symmetric ``k``-nearest-neighbour graph of the items, edge weights = Euclidean distances."""
    flat = data.reshape(data.shape[0], -1).double()
    n = len(flat)
    k = min(k, n - 1)
    rows, cols, vals = [], [], []
    for start in range(0, n, chunk):
        dist = torch.cdist(flat[start : start + chunk], flat)
        d, idx = dist.topk(k + 1, dim=1, largest=False)
        rows.append(np.repeat(np.arange(start, start + len(d)), k))
        cols.append(idx[:, 1:].reshape(-1).numpy())
        vals.append(d[:, 1:].reshape(-1).numpy())
    graph = csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), (n, n))
    return graph.maximum(graph.T)


def seed_neighbourhoods(data: Tensor, k: int, n_neighbours: int = 10) -> tuple[Tensor, Tensor]:
    """``k`` far-apart seeds and the neighbourhood (index of the nearest seed) of every item.

    Distances are geodesic: shortest paths in the ``n_neighbours``-nearest-neighbour graph, so a
    neighbourhood never jumps between disconnected components or across a thin gap. Seeds are
    chosen by farthest-point sampling (first: the item farthest from the mean; items in another
    connected component count as farther than any reachable one, ties broken by Euclidean
    distance). Every item belongs to the seed of smallest geodesic distance.

    Returns
    -------
    seeds : Tensor
        ``(k,)`` item indices.
    assignment : Tensor
        ``(N,)`` neighbourhood index of every item.
    """
    flat = data.reshape(data.shape[0], -1).double()
    graph = knn_graph(data, n_neighbours)
    big = 1e6 * float(torch.cdist(flat[:1], flat).max() + 1.0)

    def distances(i: int) -> np.ndarray:
        geo = dijkstra(graph, directed=False, indices=i)
        euclid = (flat - flat[i]).norm(dim=1).numpy()
        return np.where(np.isfinite(geo), geo, big + euclid)

    seeds = [int(((flat - flat.mean(0)) ** 2).sum(1).argmax())]
    dist = [distances(seeds[0])]
    for _ in range(k - 1):
        seeds.append(int(np.min(dist, axis=0).argmax()))
        dist.append(distances(seeds[-1]))
    return torch.tensor(seeds), torch.from_numpy(np.argmin(dist, axis=0))


def lipschitz_penalty(atlas: Atlas, n: int, delta: float, generator: torch.Generator) -> Tensor:
    """Mean over charts of ``||G(w + delta u) - G(w)||^2 / delta^2`` (network units)."""
    total = torch.zeros(())
    for chart in atlas.charts:
        w = chart.sample_latent(n, generator)
        u = torch.randn(w.shape, generator=generator)
        u = u / u.norm(dim=1, keepdim=True)
        diff = chart.decode_net(w + delta * u) - chart.decode_net(w)
        total = total + diff.pow(2).reshape(n, -1).sum(1).mean() / delta**2
    return total / atlas.n_charts


def overlap_weights(losses: Tensor, latents: Tensor, log_weights: Tensor, edge: float, margin: float) -> Tensor:
    """Detached responsibilities with edge points split between best and second-best chart.

    A point is split when its latent in the best chart has ``max_j |w_j| > edge`` and the
    second-best chart's loss exceeds the best one by less than ``margin``.
    """
    losses = losses.detach()
    beta = torch.softmax(-losses + log_weights, dim=1)
    if losses.shape[1] < 2:
        return beta
    top2 = beta.topk(2, dim=1).indices
    rows = torch.arange(len(beta))
    best_latent = latents.detach()[rows, top2[:, 0]]
    gap = losses[rows, top2[:, 1]] - losses[rows, top2[:, 0]]
    at_edge = (best_latent.abs().amax(dim=1) > edge) & (gap < margin)
    split = torch.zeros_like(beta)
    split.scatter_(1, top2, 0.5)
    return torch.where(at_edge[:, None], split, beta)


def best_charts(atlas: Atlas, data: Tensor, batch_size: int = 256) -> Tensor:
    """Noise-free best chart of every item (no gradients), ``(N,)``."""
    with torch.no_grad():
        return torch.cat([atlas.best_chart(data[i : i + batch_size]) for i in range(0, len(data), batch_size)])


def calibrate_priors(atlas: Atlas, data: Tensor, assign: Tensor) -> None:
    """Fit every chart's latent flow to the encodings of its neighbourhood (see
    :meth:`Chart.calibrate_prior`); done once, when the mixture phase starts."""
    for k, chart in enumerate(atlas.charts):
        chart.calibrate_prior(data[assign == k])


def _epoch_loss(
    atlas: Atlas,
    batch: Tensor,
    assign: Tensor,
    cfg: AtlasTrainConfig,
    epoch: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor | None]:
    """Loss of one batch in the phase of ``epoch`` and the detached responsibilities (if any)."""
    phase = cfg.phase(epoch)
    if phase == "seed":
        total = torch.zeros(())
        for k in assign.unique().tolist():
            mask = assign == k
            loss_k, _ = atlas.charts[k].neg_elbo(batch[mask], True, generator)
            total = total + loss_k.sum()
        return total / len(batch), None
    losses, latents = atlas.neg_elbo_matrix(batch, True, generator)
    beta = atlas.responsibilities(losses).detach()
    if phase == "overlap":
        weights = overlap_weights(losses, latents, atlas.log_weights, cfg.overlap_edge, cfg.overlap_margin)
        loss = (weights * losses).sum(1).mean()
    else:
        loss = atlas.mixture_loss(losses)
    if cfg.lipschitz_on(epoch) and cfg.lipschitz_weight > 0:
        loss = loss + cfg.lipschitz_weight * lipschitz_penalty(atlas, len(batch), cfg.lipschitz_delta, generator)
    return loss, beta


def _checkpoint_state(
    atlas: Atlas, opt: torch.optim.Optimizer, gen: torch.Generator, cfg: AtlasTrainConfig, st: TrainState,
    provenance: dict | None = None,
) -> dict:
    return {
        "provenance": provenance,
        "config": asdict(cfg),
        "epoch": st.epoch,
        "history": st.history,
        "atlas": atlas.state_dict(),
        "optimizer": opt.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
    }


class TrainingDiverged(ValueError):
    """The loss became non-finite (a user error in practice: too large a learning rate)."""


def check_resumable(path: Path, cfg: AtlasTrainConfig, provenance: dict | None) -> dict:
    """Read checkpoint ``path`` and check that it belongs to this run: same training config and, when
    given, the same provenance (dataset, sizes, seeds, architecture, format). Cheap: run before the
    training data are built. ``ValueError`` naming the first differences."""
    state = load_training_checkpoint(path)
    if provenance is not None:
        saved = state.get("provenance")
        if saved is None:
            raise ValueError(f"cannot resume from {path}: it does not record which run wrote it (an older "
                             "checkpoint); start afresh in a new --out")
        diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in provenance.items() if saved.get(k) != v]
        if diffs:
            raise ValueError(f"cannot resume from {path}: it was written by another run ({'; '.join(diffs[:3])})")
    saved = state.get("config", {})
    diffs = {k: (saved.get(k), v) for k, v in asdict(cfg).items() if saved.get(k) != v}
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diffs.items())
        raise ValueError(f"cannot resume from {path}: training config differs ({detail})")
    return state


def _restore(
    path: Path, atlas: Atlas, opt: torch.optim.Optimizer, gen: torch.Generator, cfg: AtlasTrainConfig,
    provenance: dict | None = None,
) -> TrainState:
    state = check_resumable(path, cfg, provenance)
    saved = state.get("config", {})
    diffs = {k: (saved.get(k), v) for k, v in asdict(cfg).items() if saved.get(k) != v}
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diffs.items())
        raise ValueError(f"cannot resume from {path}: training config differs ({detail})")
    validate_state_dict(atlas, state["atlas"], str(path))
    atlas.load_state_dict(state["atlas"])
    try:
        opt.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{path}: optimizer state does not match the model: {exc}") from exc
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return TrainState(epoch=int(state["epoch"]), history=list(state["history"]))


def train_atlas(
    atlas: Atlas,
    data: Tensor,
    cfg: AtlasTrainConfig,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    provenance: dict | None = None,
) -> list[dict]:
    """Train ``atlas`` on ``data`` in place and return the per-epoch history.

    Parameters
    ----------
    atlas : Atlas
        Freshly built (or resumed) atlas; its normalisation must already be set.
    data : Tensor
        Training items ``(N, *data_shape)``, float32.
    cfg : AtlasTrainConfig
        Optimisation settings.
    out : path-like, optional
        Directory of ``checkpoint.pt`` (no checkpoints when ``None``).
    resume : bool
        Continue from ``out/checkpoint.pt`` (its config must equal ``cfg``).
    stop_after : int, optional
        Stop after this many epochs in total (simulates an interruption; used by tests).
    progress : bool
        Show a tqdm progress bar with the loss.
    on_epoch : callable, optional
        Called with each epoch's history record.
    provenance : dict, optional
        What identifies the run beyond ``cfg`` (dataset, sizes, seeds, architecture): stored in every
        checkpoint and required to match on ``resume``.

    Returns
    -------
    list of dict
        One record per epoch: ``epoch``, ``phase``, ``loss``, ``lr``, ``weights``.
    """
    data = atlas.charts[0].check_data(data)
    if len(data) < atlas.n_charts:
        raise ValueError(f"need at least n_charts={atlas.n_charts} training items, got {len(data)}")
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(atlas.parameters(), lr=cfg.lr)
    ckpt = Path(out) / CHECKPOINT_FILE if out is not None else None
    st = TrainState()
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt}")
        st = _restore(ckpt, atlas, opt, gen, cfg, provenance)
    _, assign = seed_neighbourhoods(data, atlas.n_charts)
    if st.epoch == 0 and cfg.pretrain_epochs > 0:
        atlas.set_weights(torch.bincount(assign, minlength=atlas.n_charts).float())
    last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    atlas.train()
    bar = tqdm(
        range(st.epoch, last),
        initial=st.epoch,
        total=cfg.epochs,
        disable=not progress,
        desc="train",
        unit="epoch",
    )
    for epoch in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.learning_rate(epoch)
        if epoch == cfg.pretrain_epochs:
            calibrate_priors(atlas, data, assign)
        elif cfg.recalibrate(epoch):
            calibrate_priors(atlas, data, best_charts(atlas, data))
        order = torch.randperm(len(data), generator=gen)
        total, beta_sum = 0.0, torch.zeros(atlas.n_charts)
        for start in range(0, len(data), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss, beta = _epoch_loss(atlas, data[idx], assign[idx], cfg, epoch, gen)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"training diverged: non-finite loss at epoch {epoch + 1} "
                                       f"({loss.item()}); try a smaller --lr (now {cfg.lr:g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(atlas.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.item() * len(idx)
            if beta is not None:
                beta_sum += beta.sum(0)
        if cfg.phase(epoch) != "seed":
            atlas.set_weights(beta_sum / len(data))
        record = {
            "epoch": epoch + 1,
            "phase": cfg.phase(epoch),
            "loss": total / len(data),
            "lr": cfg.learning_rate(epoch),
            "weights": [round(float(a), 4) for a in atlas.weights],
        }
        st.history.append(record)
        st.epoch = epoch + 1
        bar.set_postfix(loss=f"{record['loss']:.4g}", phase=record["phase"])
        if on_epoch is not None:
            on_epoch(record)
        if ckpt is not None and (st.epoch % cfg.checkpoint_every == 0 or st.epoch == last):
            save_training_checkpoint(ckpt, _checkpoint_state(atlas, opt, gen, cfg, st, provenance))
    bar.close()
    atlas.eval()
    return st.history


def relative_projection_error(atlas: Atlas, data: Tensor, batch_size: int = 100) -> np.ndarray:
    """``||x - project(x)|| / ||x||`` per item (no gradients)."""
    errors = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = data[start : start + batch_size]
            diff = (x - atlas.project(x)).reshape(len(x), -1).norm(dim=1)
            errors.append((diff / x.reshape(len(x), -1).norm(dim=1)).numpy())
    return np.concatenate(errors)
