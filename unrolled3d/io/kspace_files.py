r"""MRI k-space files: multi-coil k-space with the coil maps, the sampling mask and the volume's grid.

What ``unrolled3d simulate --modality mri`` writes and ``unrolled3d reconstruct`` reads: one
``.pt`` archive (loaded with ``weights_only=True``) holding

===============  ==================================================================================
``format``       ``"unrolled3d.kspace/1"``
``y``            k-space, real ``(1, 2, N_c, D, H, W)`` (channels real, imaginary; the layout of
                 :class:`~unrolled3d.mri.MultiCoilMRI3D`: centred, orthonormal 3D DFT)
``mask``         the sampling mask, real ``(D, H, W)`` (0/1; ``y`` is zero where it is 0)
``coil_maps``    complex ``(N_c, D, H, W)``
``geometry``     JSON: ``{"shape": [D, H, W], "voxel_size": [sz, sy, sx] (mm), "coils": N_c}``
``x_true``       optional, the complex image ``(1, 2, D, H, W)`` (simulations)
``meta``         JSON object: how the file was made
===============  ==================================================================================

Every failure to load is a :class:`~unrolled3d.errors.FileFormatError` naming the file (a
missing file is a ``FileNotFoundError``); :func:`file_kind` tells a k-space file from a
cone-beam measurements file without validating either.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import FileFormatError
from .atomic import atomic_path
from .files import MEAS_FORMAT, _entry, _json_entry, check_pt_name, load_torch_file

__all__ = ["KSPACE_FORMAT", "KspaceScan", "save_kspace", "load_kspace", "file_kind"]

KSPACE_FORMAT = "unrolled3d.kspace/1"


@dataclasses.dataclass(frozen=True)
class KspaceScan:
    """The contents of a k-space file (shapes in the module docstring).

    Attributes
    ----------
    y : torch.Tensor
        k-space ``(1, 2, N_c, D, H, W)``.
    mask : torch.Tensor
        ``(D, H, W)``.
    coil_maps : torch.Tensor
        complex ``(N_c, D, H, W)``.
    voxel_size : (float, float, float)
        mm.
    x_true : torch.Tensor or None
        ``(1, 2, D, H, W)``.
    meta : dict
        how the file was made.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from unrolled3d.io import load_kspace, save_kspace
    >>> from unrolled3d.mri import birdcage_maps
    >>> path = os.path.join(tempfile.mkdtemp(), "k.pt")
    >>> save_kspace(path, torch.zeros(1, 2, 2, 4, 4, 4), torch.ones(4, 4, 4), birdcage_maps(2, (4, 4, 4)))
    >>> scan = load_kspace(path)
    >>> scan.shape, scan.coil_maps.shape, scan.x_true is None
    ((4, 4, 4), torch.Size([2, 4, 4, 4]), True)
    """

    y: torch.Tensor
    mask: torch.Tensor
    coil_maps: torch.Tensor
    voxel_size: tuple[float, float, float]
    x_true: torch.Tensor | None
    meta: dict[str, Any]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)``."""
        return tuple(int(s) for s in self.mask.shape)  # type: ignore[return-value]


def _problems(y: Any, mask: Any, coil_maps: Any, x_true: Any, voxel_size: Any) -> str | None:
    """What is wrong with a scan's parts (``None``: nothing), in words."""
    if not isinstance(mask, torch.Tensor) or mask.ndim != 3 or mask.is_complex() or not mask.is_floating_point():
        return f"the mask must be a real floating-point (D, H, W) tensor, got {_kind(mask)}"
    shape = tuple(mask.shape)
    if not isinstance(coil_maps, torch.Tensor) or not coil_maps.is_complex() or coil_maps.ndim != 4 \
            or tuple(coil_maps.shape[1:]) != shape or coil_maps.shape[0] < 1:
        return f"the coil maps must be a complex (N_c, {', '.join(map(str, shape))}) tensor, got {_kind(coil_maps)}"
    expected = (1, 2, coil_maps.shape[0], *shape)
    if not isinstance(y, torch.Tensor) or not y.is_floating_point() or tuple(y.shape) != expected:
        return f"the k-space must be a real floating-point tensor of shape {expected}, got {_kind(y)}"
    if x_true is not None and (not isinstance(x_true, torch.Tensor) or not x_true.is_floating_point()
                               or tuple(x_true.shape) != (1, 2, *shape)):
        return f"x_true must be a real floating-point tensor of shape {(1, 2, *shape)}, got {_kind(x_true)}"
    if 0 in shape:
        return f"the volume is empty (shape {shape})"
    for name, t in (("y", y), ("mask", mask), ("coil_maps", coil_maps), ("x_true", x_true)):
        if t is not None and not bool(torch.isfinite(t).all()):
            return f"{name} contains NaN or infinite values"
    if not bool((mask >= 0).all()) or not bool((mask > 0).any()):
        return "the mask must be >= 0 and sample something"
    if not (isinstance(voxel_size, (list, tuple)) and len(voxel_size) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")
                    for v in voxel_size)):
        return f"the voxel size must be 3 positive numbers (mm), got {voxel_size!r}"
    return None


def _kind(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} {tuple(t.shape)}"
    return type(t).__name__


def save_kspace(path: str | os.PathLike, y: torch.Tensor, mask: torch.Tensor, coil_maps: torch.Tensor,
                x_true: torch.Tensor | None = None, voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
                meta: dict[str, Any] | None = None, force: bool = False) -> None:
    """Write a k-space file atomically (``force``: replace a read-only file).

    Raises
    ------
    ValueError
        A name not ending in ``.pt``, or parts of the wrong shape or kind, or not finite (nothing is
        written: a file its own reader refuses would only fail later, in another command).
    """
    path = check_pt_name(path, "k-space")
    vs = tuple(float(v) for v in voxel_size) if isinstance(voxel_size, (list, tuple)) else voxel_size
    problem = _problems(y, mask, coil_maps, x_true, vs)
    if problem is not None:
        raise ValueError(f"not saved: {problem}")
    geometry = {"shape": list(mask.shape), "voxel_size": list(vs), "coils": int(coil_maps.shape[0])}
    state = {"format": KSPACE_FORMAT, "y": y.detach().cpu(), "mask": mask.detach().cpu(),
             "coil_maps": coil_maps.detach().cpu(), "geometry": json.dumps(geometry), "meta": json.dumps(meta or {})}
    if x_true is not None:
        state["x_true"] = x_true.detach().cpu()
    with atomic_path(path, replace_read_only=force) as tmp:
        torch.save(state, tmp)


def file_kind(path: str | os.PathLike) -> str | None:
    """``"kspace"``, ``"measurements"`` (cone-beam) or ``None`` (neither, unreadable, not a file)
    for a file, from its ``format`` entry: the archive is memory-mapped (``weights_only=True``),
    its tensors are not read."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch archive (or an old, unmappable one): not a file of ours
        return None
    fmt = state.get("format") if isinstance(state, dict) else None
    return {KSPACE_FORMAT: "kspace", MEAS_FORMAT: "measurements"}.get(fmt) if isinstance(fmt, str) else None


def load_kspace(path: str | os.PathLike) -> KspaceScan:
    """The :class:`KspaceScan` of a k-space file.

    Raises
    ------
    FileNotFoundError
        No such file.
    FileFormatError
        Not a k-space file (a cone-beam measurements file is named as such), an entry missing or
        malformed, shapes that disagree, NaN or infinite values.
    """
    path = Path(path)
    state = load_torch_file(path, "k-space")
    fmt = state.get("format")
    if fmt == MEAS_FORMAT:
        raise FileFormatError(path, "holds cone-beam CT measurements, not MRI k-space")
    if fmt != KSPACE_FORMAT:
        raise FileFormatError(path, f"not an unrolled3d k-space file (format {fmt!r}, expected {KSPACE_FORMAT!r})")
    y = _entry(state, "y", path, "k-space", torch.Tensor)
    mask = _entry(state, "mask", path, "k-space", torch.Tensor)
    coil_maps = _entry(state, "coil_maps", path, "k-space", torch.Tensor)
    geometry = _json_entry(state, "geometry", path, "k-space")
    meta = _json_entry(state, "meta", path, "k-space", default="{}")
    if not isinstance(geometry, dict) or not isinstance(meta, dict):
        raise FileFormatError(path, "entries 'geometry' and 'meta' must be JSON objects")
    x_true = state.get("x_true")
    voxel_size: Any = geometry.get("voxel_size")  # the file's JSON, checked by _problems below
    problem = _problems(y, mask, coil_maps, x_true, voxel_size)
    if problem is None and list(geometry.get("shape", [])) != list(mask.shape):
        problem = f"the geometry's shape {geometry.get('shape')} is not the mask's {list(mask.shape)}"
    if problem is not None:
        raise FileFormatError(path, problem)
    sz, sy, sx = (float(v) for v in voxel_size)  # 3 numbers (_problems)
    return KspaceScan(y, mask, coil_maps, (sz, sy, sx), x_true, meta)
