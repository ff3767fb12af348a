"""Files of the command line: measurements (+ geometry), volumes, model weights.

All writes are atomic (temp file + rename); ``.pt`` files load with ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..geometry import ConeBeamGeometry
from .atomic import atomic_path
from .volumes import read_volume, write_volume

__all__ = ["save_measurements", "load_measurements", "save_volume", "load_volume", "save_model", "load_model"]

MEAS_FORMAT = "unrolled3d.measurements/1"
MODEL_FORMAT = "unrolled3d.model/1"


def _load_pt(path: str | os.PathLike, what: str) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / not a torch file
        raise ValueError(f"{path} is not a readable {what} file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a {what} file (no header)")
    return obj


def save_measurements(path, y: torch.Tensor, geometry: ConeBeamGeometry, x_true: torch.Tensor | None = None,
                      meta: dict | None = None) -> None:
    """Measurements ``[B, C, n_views, rows, cols]`` with their geometry (and optionally the truth)."""
    state = {"format": MEAS_FORMAT, "y": y.detach().cpu(), "geometry": json.dumps(geometry.to_dict()),
             "meta": json.dumps(meta or {})}
    if x_true is not None:
        state["x_true"] = x_true.detach().cpu()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_measurements(path) -> tuple[torch.Tensor, ConeBeamGeometry, torch.Tensor | None, dict]:
    state = _load_pt(path, "measurements")
    if state.get("format") != MEAS_FORMAT:
        raise ValueError(f"{path} is not an unrolled3d measurements file (format {state.get('format')!r})")
    geometry = ConeBeamGeometry.from_dict(json.loads(state["geometry"]))
    y = state["y"]
    if tuple(y.shape[-3:]) != geometry.sino_shape:
        raise ValueError(f"{path}: measurements {tuple(y.shape)} do not match the geometry {geometry.sino_shape}")
    return y, geometry, state.get("x_true"), json.loads(state.get("meta", "{}"))


def save_volume(path, volume: torch.Tensor, voxel_size=(1.0, 1.0, 1.0)) -> None:
    """A ``(D, H, W)`` volume; the ending picks the format (see :func:`unrolled3d.io.write_volume`)."""
    write_volume(path, volume.detach().cpu().reshape(volume.shape[-3:]), voxel_size)


def load_volume(path) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """``(volume (D, H, W), voxel_size (sz, sy, sx) mm)`` (see :func:`unrolled3d.io.read_volume`)."""
    return read_volume(path)


def save_model(path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Weights plus the configuration needed to rebuild the model (see ``cli.build_model``)."""
    with atomic_path(path) as tmp:
        torch.save({"format": MODEL_FORMAT, "state_dict": model.state_dict(), "config": json.dumps(config)}, tmp)


def load_model(path) -> tuple[dict, dict[str, Any]]:
    state = _load_pt(path, "model weights")
    if state.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not an unrolled3d model file (format {state.get('format')!r})")
    return state["state_dict"], json.loads(state["config"])
