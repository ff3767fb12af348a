"""Files of the command line: measurements (+ geometry), volumes, model weights.

All writes are atomic (temp file + rename); ``.pt`` files load with ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .geometry import ConeBeamGeometry
from .io_utils import atomic_path

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
    """A ``(D, H, W)`` volume as ``.npy`` (plus ``.json`` sidecar with the voxel size) or ``.pt``."""
    path = Path(path)
    vol = volume.detach().cpu().reshape(volume.shape[-3:])
    if path.suffix == ".npy":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, vol.numpy())
        with atomic_path(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"voxel_size_zyx_mm": list(voxel_size), "shape": list(vol.shape)}))
    elif path.suffix == ".pt":
        with atomic_path(path) as tmp:
            torch.save({"volume": vol, "voxel_size": torch.tensor(voxel_size)}, tmp)
    else:
        raise ValueError(f"volume files must end in .npy or .pt, got {path.name}")


def load_volume(path) -> tuple[torch.Tensor, tuple[float, float, float]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"volume file {path} does not exist")
    if path.suffix == ".npy":
        try:
            vol = torch.from_numpy(np.load(path))
        except Exception as exc:
            raise ValueError(f"{path} is not a readable .npy volume ({exc})") from None
        side = path.with_suffix(".json")
        vs = tuple(json.loads(side.read_text())["voxel_size_zyx_mm"]) if side.exists() else (1.0, 1.0, 1.0)
        return vol, vs
    state = _load_pt(path, "volume")
    return state["volume"], tuple(float(v) for v in state["voxel_size"])


def save_model(path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Weights plus the configuration needed to rebuild the model (see ``cli.build_model``)."""
    with atomic_path(path) as tmp:
        torch.save({"format": MODEL_FORMAT, "state_dict": model.state_dict(), "config": json.dumps(config)}, tmp)


def load_model(path) -> tuple[dict, dict[str, Any]]:
    state = _load_pt(path, "model weights")
    if state.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not an unrolled3d model file (format {state.get('format')!r})")
    return state["state_dict"], json.loads(state["config"])
