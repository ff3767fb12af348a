"""Files of the command line: measurements (+ geometry), volumes, model weights.

All writes are atomic and durable (:func:`unrolled3d.io.atomic_path`); ``.pt`` files load with
``weights_only=True``. Every failure to load is a :class:`~unrolled3d.errors.FileFormatError`
naming the file and what is wrong (missing entries, bad JSON, non-finite values, another kind of
file); a missing file is a ``FileNotFoundError``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import FileFormatError
from ..geometry import ConeBeamGeometry
from .atomic import atomic_path
from .volumes import check_tensor_size, describe_load_error, read_volume, sniff_format, write_volume

__all__ = ["save_measurements", "load_measurements", "save_volume", "load_volume", "save_model", "load_model",
           "load_torch_file", "check_pt_name", "MEAS_FORMAT", "MODEL_FORMAT"]

MEAS_FORMAT = "unrolled3d.measurements/1"
MODEL_FORMAT = "unrolled3d.model/1"


def check_pt_name(path: str | os.PathLike, what: str) -> Path:
    """``path`` ends in ``.pt``: the files below are torch archives, and a name that says
    otherwise (``m.npy``, ``h.txt``) would mislead every other tool. Raises ``ValueError``."""
    p = Path(path)
    if p.suffix.lower() != ".pt":
        raise ValueError(f"{what} file {p} must end in .pt (it is a torch archive), got {p.suffix or 'no ending'!r}")
    return p


def load_torch_file(path: str | os.PathLike, what: str) -> dict:
    """A ``torch.save``-d dict, loaded safely (``weights_only=True``, on the CPU).

    Every failure (missing file aside) is a :class:`FileFormatError` naming the file: a
    truncated or empty file, another format (a NumPy array, a pickle of arbitrary objects, which
    ``weights_only`` refuses), or an archive that does not hold a dict.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    if not path.is_file():
        raise FileFormatError(path, f"not a file (expected a {what} file)")
    if path.stat().st_size == 0:
        raise FileFormatError(path, f"empty file (expected a {what} file)")
    found = sniff_format(path)
    if found not in (None, "pt"):
        raise FileFormatError(path, f"holds {found} data, not a {what} file (a torch archive)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, EOFError, UnpicklingError (a pickle weights_only refuses) ...
        # in our words: torch's own suggest loading with weights_only=False, which would run the file
        raise FileFormatError(path, f"not a readable {what} file ({describe_load_error(exc)})") from None
    if not isinstance(obj, dict):
        raise FileFormatError(path, f"not a {what} file (holds a {type(obj).__name__}, expected a dict)")
    return obj


def _entry(state: dict, key: str, path: Path, what: str, kind: type | tuple[type, ...]) -> Any:
    if key not in state:
        raise FileFormatError(path, f"{what} file without the entry {key!r} (has {sorted(map(str, state))})")
    value = state[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise FileFormatError(path, f"entry {key!r} must be a {names}, got {type(value).__name__}")
    return value


def _json_entry(state: dict, key: str, path: Path, what: str, default: str | None = None) -> Any:
    raw = state.get(key, default) if default is not None else _entry(state, key, path, what, str)
    if not isinstance(raw, str):
        raise FileFormatError(path, f"entry {key!r} must be a JSON string, got {type(raw).__name__}")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FileFormatError(path, f"entry {key!r} is not valid JSON ({exc})") from None


def _finite_tensor(t: torch.Tensor, path: Path, key: str) -> torch.Tensor:
    if not (t.is_floating_point() or t.is_complex()):
        raise FileFormatError(path, f"{key!r} has dtype {t.dtype}, expected floating-point values")
    check_tensor_size(path, key, t)  # before isfinite materialises a stride-0 giant
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise FileFormatError(path, f"{key!r} contains NaN or infinite values ({int(bad.sum())} of {t.numel()} "
                                    f"entries)")
    return t


def save_measurements(path, y: torch.Tensor, geometry: ConeBeamGeometry, x_true: torch.Tensor | None = None,
                      meta: dict | None = None, force: bool = False) -> None:
    """Measurements ``[B, C, n_views, rows, cols]`` with their geometry (and optionally the truth).

    Non-finite measurements are refused (``ValueError``): a file is an input of later commands,
    and a NaN in it would only show up as a NaN reconstruction. ``force`` replaces a read-only file.

    Raises
    ------
    TypeError
        ``y`` or ``x_true`` not a floating-point tensor, ``geometry`` not a ``ConeBeamGeometry``.
    ValueError
        A name not ending in ``.pt``; ``y`` not ``[B, C, *geometry.sino_shape]``, empty, or not
        finite; ``x_true`` not of the geometry's volume shape, or not finite. Nothing is written.
    """
    # Everything load_measurements would refuse is refused here, before a file is written: a file
    # that its own reader rejects would only fail later, in another command, far from the cause.
    path = check_pt_name(path, "measurements")
    if not isinstance(geometry, ConeBeamGeometry):
        raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}")
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise TypeError(f"y must be a floating-point tensor, got {getattr(y, 'dtype', type(y).__name__)}")
    if y.ndim != 5 or tuple(y.shape[-3:]) != geometry.sino_shape:
        raise ValueError(f"y of shape {tuple(y.shape)} does not match the geometry: expected "
                         f"[B, C, {', '.join(map(str, geometry.sino_shape))}]")
    if y.numel() == 0:
        raise ValueError(f"y is empty (shape {tuple(y.shape)}): not saved")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("the measurements contain NaN or infinite values: not saved")
    if x_true is not None:
        if not isinstance(x_true, torch.Tensor) or not x_true.is_floating_point():
            raise TypeError(f"x_true must be a floating-point tensor, got "
                            f"{getattr(x_true, 'dtype', type(x_true).__name__)}")
        if tuple(x_true.shape[-3:]) != geometry.vol_shape:
            raise ValueError(f"x_true of shape {tuple(x_true.shape)} is not a volume of the geometry's shape "
                             f"{geometry.vol_shape}")
        if not bool(torch.isfinite(x_true).all()):
            raise ValueError("x_true contains NaN or infinite values: not saved")
    state = {"format": MEAS_FORMAT, "y": y.detach().cpu(), "geometry": json.dumps(geometry.to_dict()),
             "meta": json.dumps(meta or {})}
    if x_true is not None:
        state["x_true"] = x_true.detach().cpu()
    with atomic_path(path, replace_read_only=force) as tmp:
        torch.save(state, tmp)


def load_measurements(path) -> tuple[torch.Tensor, ConeBeamGeometry, torch.Tensor | None, dict]:
    """``(y [B, C, n_views, rows, cols], geometry, x_true or None, meta)`` of a measurements file.

    Raises
    ------
    FileNotFoundError
        No such file.
    FileFormatError
        Not a measurements file, an entry missing or malformed, a geometry the package refuses,
        measurements that do not match the geometry or hold NaN/inf.
    """
    path = Path(path)
    state = load_torch_file(path, "measurements")
    if state.get("format") != MEAS_FORMAT:
        raise FileFormatError(path, f"not an unrolled3d measurements file (format {state.get('format')!r}, "
                                    f"expected {MEAS_FORMAT!r})")
    y = _entry(state, "y", path, "measurements", torch.Tensor)
    geo = _json_entry(state, "geometry", path, "measurements")
    try:
        geometry = ConeBeamGeometry.from_dict(geo)
    except (TypeError, ValueError, KeyError) as exc:
        raise FileFormatError(path, f"invalid geometry ({exc})") from None
    if y.ndim != 5 or tuple(y.shape[-3:]) != geometry.sino_shape:
        raise FileFormatError(path, f"measurements {tuple(y.shape)} do not match the geometry "
                                    f"[B, C, {', '.join(map(str, geometry.sino_shape))}]")
    if y.numel() == 0:
        raise FileFormatError(path, f"the measurements are empty (shape {tuple(y.shape)})")
    _finite_tensor(y, path, "y")
    x_true = state.get("x_true")
    if x_true is not None:
        if not isinstance(x_true, torch.Tensor) or tuple(x_true.shape[-3:]) != geometry.vol_shape:
            raise FileFormatError(path, f"entry 'x_true' is not a volume of the geometry's shape {geometry.vol_shape}")
        _finite_tensor(x_true, path, "x_true")
    meta = _json_entry(state, "meta", path, "measurements", default="{}")
    if not isinstance(meta, dict):
        raise FileFormatError(path, f"entry 'meta' must be a JSON object, got {type(meta).__name__}")
    return y, geometry, x_true, meta


def save_volume(path, volume: torch.Tensor, voxel_size=(1.0, 1.0, 1.0), force: bool = False) -> None:
    """A ``(D, H, W)`` volume; the ending picks the format (see :func:`unrolled3d.io.write_volume`)."""
    write_volume(path, volume.detach().cpu().reshape(volume.shape[-3:]), voxel_size, force=force)


def load_volume(path) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """``(volume (D, H, W), voxel_size (sz, sy, sx) mm)`` (see :func:`unrolled3d.io.read_volume`)."""
    return read_volume(path)


def save_model(path, model: torch.nn.Module, config: dict[str, Any], force: bool = False) -> None:
    """Weights plus the configuration needed to rebuild the model (see ``models.build_model``).

    Non-finite weights are refused (``ValueError``): a diverged run must not leave a model file
    that reconstructs NaN.
    """
    state_dict = model.state_dict()
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"the model's weights contain NaN or infinite values ({', '.join(bad[:3])}"
                         f"{', ...' if len(bad) > 3 else ''}): not saved")
    with atomic_path(path, replace_read_only=force) as tmp:
        torch.save({"format": MODEL_FORMAT, "state_dict": state_dict, "config": json.dumps(config)}, tmp)


def load_model(path) -> tuple[dict, dict[str, Any]]:
    """``(state_dict, configuration)`` of a model file written by :func:`save_model`.

    The configuration must hold the sections ``[model]`` and ``[partition]`` the model is built
    from (:func:`unrolled3d.models.build_model`); anything else is a :class:`FileFormatError`.
    """
    path = Path(path)
    state = load_torch_file(path, "model")
    if state.get("format") != MODEL_FORMAT:
        raise FileFormatError(path, f"not an unrolled3d model file (format {state.get('format')!r}, "
                                    f"expected {MODEL_FORMAT!r})")
    weights = _entry(state, "state_dict", path, "model", dict)
    config = _json_entry(state, "config", path, "model")
    if not isinstance(config, dict):
        raise FileFormatError(path, f"entry 'config' must be a JSON object, got {type(config).__name__}")
    for section in ("model", "partition"):
        if not isinstance(config.get(section), dict):
            raise FileFormatError(path, f"the model configuration has no [{section}] section")
    for k, v in weights.items():
        if not isinstance(v, torch.Tensor):
            raise FileFormatError(path, f"weight {k!r} is a {type(v).__name__}, not a tensor")
        check_tensor_size(path, f"weight {k}", v)
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise FileFormatError(path, f"weight {k!r} contains NaN or infinite values")
    return weights, config
