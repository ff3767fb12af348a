"""The argument checks of the projector ops (public functions and reference twins alike)."""
from __future__ import annotations

import torch

from .._validation import check_allocation, check_nonempty
from ..geometry import ConeBeamGeometry
from ._precision import LOW_PRECISION

__all__ = ["check_volume", "check_sinogram", "checked_views", "FLOAT_DTYPES"]

#: float16/bfloat16 are computed in float32 (ops/_precision.py)
FLOAT_DTYPES = (torch.float32, torch.float64, *LOW_PRECISION)


def _check_data(name: str, x: object, geometry: object) -> torch.Tensor:
    if not isinstance(geometry, ConeBeamGeometry):
        raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64 (float16/bfloat16: computed in float32), got {x.dtype}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a CPU or CUDA device, got {x.device}")
    if x.ndim != 5:
        raise ValueError(f"{name} must be 5-D (B, C, ...), got shape {tuple(x.shape)}")
    check_nonempty(x, name)
    if not x.is_contiguous():  # the kernels read a contiguous copy: an expanded view may not fit
        check_allocation(f"a contiguous copy of the {name}", tuple(x.shape), x.dtype, x.device)
    return x


def checked_views(geometry: ConeBeamGeometry, device: torch.device) -> torch.Tensor:
    """The geometry's ``(n_views, 12)`` float64 vectors on ``device``, checked finite.

    The geometry refuses non-finite vectors when it is built, and its array is read-only; the
    check is repeated here (12 numbers per view, nothing next to a projection) because the C++
    op trusts its views and a NaN view would give silent zeros.
    """
    views = geometry.views_tensor(device)
    # no data-dependent branch inside a compiled graph (the geometry was checked when built)
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(views).all()):
        raise ValueError("geometry: the view vectors contain NaN or infinite values")
    return views


def _check_trailing(x: torch.Tensor, expected: tuple[int, ...], message: str) -> torch.Tensor:
    if tuple(x.shape[-3:]) != expected:
        raise ValueError(message)
    return x


def check_volume(volume: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Validate a ``(B, C, D, H, W)`` volume against ``geometry`` (raises ValueError/TypeError)."""
    _check_data("volume", volume, geometry)
    return _check_trailing(volume, geometry.vol_shape, f"volume has spatial shape {tuple(volume.shape[-3:])} but "
                                                       f"the geometry's vol_shape is {geometry.vol_shape}")


def check_sinogram(sino: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Validate a ``(B, C, n_views, rows, cols)`` measurement against ``geometry``."""
    _check_data("sinogram", sino, geometry)
    return _check_trailing(sino, geometry.sino_shape, f"sinogram has shape (..., {', '.join(map(str, sino.shape[-3:]))}) "
                                                      f"but the geometry expects (n_views, rows, cols) = {geometry.sino_shape}")
