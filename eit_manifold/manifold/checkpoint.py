"""Saving and loading atlases and training checkpoints, atomically and with validation.

An atlas directory holds ``config.json`` (format tag, chart config, number of charts, metadata,
SHA-256 of the weights) and ``atlas.pt`` (the state dict). Loading checks the format, the hash, and
every key and shape of the state dict before any tensor is copied, so a corrupt or mismatched file
is a ``ValueError`` naming the file and the offending entry, never a half-loaded model.
"""

from __future__ import annotations

import hashlib
import io
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from eit_manifold.io import read_json, write_bytes_atomic, write_json
from eit_manifold.manifold.atlas import Atlas
from eit_manifold.manifold.chart import ChartConfig

ATLAS_FORMAT = "eit-manifold-atlas/1"
TRAIN_FORMAT = "eit-manifold-train/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "atlas.pt"


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def torch_load_checked(path: Path) -> Any:
    """``torch.load`` (weights only) with a clear error for a missing or corrupt file."""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for damaged archives
        raise ValueError(f"corrupt checkpoint file {path}: {exc}") from exc


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def validate_state_dict(module: torch.nn.Module, state: Any, source: str) -> None:
    """Check that ``state`` has exactly ``module``'s keys, shapes, dtypes; else ``ValueError``."""
    if not isinstance(state, dict):
        raise ValueError(f"{source}: expected a state dict, got {type(state).__name__}")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the model: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    for key, ref in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{source}: entry {key!r} is not a tensor")
        if value.shape != ref.shape:
            raise ValueError(
                f"{source}: entry {key!r} has shape {tuple(value.shape)}, the model expects {tuple(ref.shape)}"
            )
        if value.dtype != ref.dtype:
            raise ValueError(f"{source}: entry {key!r} has dtype {value.dtype}, expected {ref.dtype}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{source}: entry {key!r} contains non-finite values")


def save_atlas(atlas: Atlas, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``atlas.pt`` then ``config.json`` (with the weights' hash) into ``directory``.

    Parameters
    ----------
    atlas : Atlas
        The model.
    directory : path-like
        Output directory (created).
    extra : dict, optional
        Additional JSON entries (e.g. the training command).
    """
    directory = Path(directory)
    weights = directory / WEIGHTS_FILE
    torch_save_atomic(atlas.state_dict(), weights)
    config = {
        "format": ATLAS_FORMAT,
        "n_charts": atlas.n_charts,
        "chart": atlas.cfg.to_dict(),
        "meta": atlas.meta,
        "sha256": file_sha256(weights),
        **(extra or {}),
    }
    write_json(directory / CONFIG_FILE, config)
    return directory


def atlas_from_config(config: dict, source: str) -> Atlas:
    """Build an untrained atlas from a parsed ``config.json`` (validated)."""
    if not isinstance(config, dict) or config.get("format") != ATLAS_FORMAT:
        fmt = config.get("format") if isinstance(config, dict) else None
        raise ValueError(f"{source}: not an atlas config (format {fmt!r}, expected {ATLAS_FORMAT!r})")
    try:
        if not isinstance(config["chart"], dict):
            raise TypeError(f"'chart' must be an object, got {config['chart']!r}")
        cfg = ChartConfig.from_dict(config["chart"])
        return Atlas(cfg, config["n_charts"], meta=config.get("meta"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: invalid atlas config: {exc}") from exc


def _bundled_root() -> Path:
    return Path(str(resources.files("eit_manifold"))) / "atlases"


def bundled_atlases() -> list[str]:
    """Names of the atlases shipped with the package (e.g. ``balls``, ``bars-k1``)."""
    root = _bundled_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file())


def resolve_atlas_dir(name_or_dir: str | os.PathLike) -> Path:
    """A bundled atlas name or a directory -> the atlas directory."""
    if isinstance(name_or_dir, str) and name_or_dir in bundled_atlases():
        return _bundled_root() / name_or_dir
    path = Path(name_or_dir)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"no atlas at {str(name_or_dir)!r}: neither a bundled name {bundled_atlases()} "
            f"nor a directory with {CONFIG_FILE}"
        )
    return path


def load_atlas(name_or_dir: str | os.PathLike, image_shape: tuple[int, ...] | None = None,
               hint: str = "") -> Atlas:
    """Load a trained atlas (in eval mode) from a bundled name or a directory.

    Parameters
    ----------
    name_or_dir : str or path-like
        One of :func:`bundled_atlases` or a directory written by :func:`save_atlas`.
    image_shape : tuple of int, optional
        The image shape the caller needs: an atlas of other points (or of images of another
        shape) is an error here, before any work is done with it.
    hint : str
        Appended to that error (e.g. which option fixes it); ``{size}`` in it becomes the side of
        the atlas' images.

    Raises
    ------
    FileNotFoundError
        Unknown name / missing files.
    ValueError
        Corrupt or mismatched files (hash, keys, shapes, dtypes, non-finite values), or an
        ``image_shape`` the atlas does not make.
    """
    directory = resolve_atlas_dir(name_or_dir)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    config = read_json(config_path)
    atlas = atlas_from_config(config, str(config_path))
    if image_shape is not None and (atlas.image_shape is None or
                                    tuple(atlas.image_shape) != tuple(image_shape)):
        raise ValueError(f"atlas {str(name_or_dir)!r} makes images of shape {atlas.image_shape}, "
                         f"{tuple(image_shape)} are needed"
                         # replace, not str.format: a hint may quote a path with braces in it
                         + hint.replace("{size}", str(atlas.image_shape and atlas.image_shape[0])))
    if not weights_path.is_file():
        raise FileNotFoundError(f"file not found: {weights_path}")
    digest = config.get("sha256")
    if digest is not None and digest != file_sha256(weights_path):
        raise ValueError(f"{weights_path} is corrupt or does not belong to {config_path} (hash mismatch)")
    state = torch_load_checked(weights_path)
    validate_state_dict(atlas, state, str(weights_path))
    atlas.load_state_dict(state)
    return atlas.eval()


def save_training_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write a training checkpoint (``format`` tag added) atomically."""
    torch_save_atomic({"format": TRAIN_FORMAT, **state}, path)


def load_training_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_training_checkpoint`, checking its format."""
    path = Path(path)
    state = torch_load_checked(path)
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        raise ValueError(f"{path} is not an eit-manifold training checkpoint")
    return state


__all__ = [
    "bundled_atlases",
    "file_sha256",
    "load_atlas",
    "load_training_checkpoint",
    "save_atlas",
    "save_training_checkpoint",
    "torch_load_checked",
    "torch_save_atomic",
    "validate_state_dict",
]
