"""The cone-beam projector pair as autograd-compatible ``torch.library`` ops.

``torch.ops.unrolled3d.cone_project`` / ``cone_backproject`` are defined in C++
(``csrc/bindings.cpp``: schema, CPU and CUDA kernels). Here they get their shape-only ("fake")
kernels and their autograd formulas, so they work under ``torch.compile``: the backward of the
projection is the backprojection with the same geometry, and vice versa (an exact transpose).
The pure-PyTorch twin is :mod:`unrolled3d.ops.projector_ref`.
"""
from __future__ import annotations

import torch

from .._build import load_extension
from .._validation import check_allocation, check_nonempty
from ..geometry import ConeBeamGeometry

load_extension()  # registers the C++ schemas and kernels

__all__ = ["cone_project", "cone_backproject", "check_volume", "check_sinogram"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("unrolled3d::cone_project")
def _cone_project_fake(volume, views, vol_geom, rows, cols):
    return volume.new_empty((volume.shape[0], volume.shape[1], views.shape[0], rows, cols))


@torch.library.register_fake("unrolled3d::cone_backproject")
def _cone_backproject_fake(sino, views, vol_geom, depth, height, width):
    return sino.new_empty((sino.shape[0], sino.shape[1], depth, height, width))


# --------------------------------------------------------------------------- autograd
# The pair is linear: the backward of each op is the other op with the same geometry. It is
# registered twice: on the ops themselves (torch.library.register_autograd, for direct
# torch.ops users and torch.compile), and as autograd.Functions with a separate setup_context,
# which the public functions use because torch.func transforms (torch.func.grad, used by
# deepinv) reject the Function that register_autograd generates (pytorch/pytorch#170834).
def _project_setup(ctx, inputs, output):
    volume, views, vol_geom, _rows, _cols = inputs
    ctx.save_for_backward(views)
    ctx.vol_geom = list(vol_geom)
    ctx.vol_shape = tuple(volume.shape[-3:])


def _project_backward(ctx, grad):
    (views,) = ctx.saved_tensors
    return _ConeBackproject.apply(grad.contiguous(), views, ctx.vol_geom, *ctx.vol_shape), None, None, None, None


def _backproject_setup(ctx, inputs, output):
    sino, views, vol_geom, _d, _h, _w = inputs
    ctx.save_for_backward(views)
    ctx.vol_geom = list(vol_geom)
    ctx.det_shape = tuple(sino.shape[-2:])


def _backproject_backward(ctx, grad):
    (views,) = ctx.saved_tensors
    return _ConeProject.apply(grad.contiguous(), views, ctx.vol_geom, *ctx.det_shape), None, None, None, None, None


class _ConeProject(torch.autograd.Function):
    @staticmethod
    def forward(volume, views, vol_geom, rows, cols):
        return torch.ops.unrolled3d.cone_project(volume, views, vol_geom, rows, cols)

    setup_context = staticmethod(_project_setup)
    backward = staticmethod(_project_backward)


class _ConeBackproject(torch.autograd.Function):
    @staticmethod
    def forward(sino, views, vol_geom, depth, height, width):
        return torch.ops.unrolled3d.cone_backproject(sino, views, vol_geom, depth, height, width)

    setup_context = staticmethod(_backproject_setup)
    backward = staticmethod(_backproject_backward)


torch.library.register_autograd("unrolled3d::cone_project", _project_backward, setup_context=_project_setup)
torch.library.register_autograd(
    "unrolled3d::cone_backproject", _backproject_backward, setup_context=_backproject_setup
)


# --------------------------------------------------------------------------- checks
def _check_data(name: str, x: object, geometry: object) -> torch.Tensor:
    if not isinstance(geometry, ConeBeamGeometry):
        raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a CPU or CUDA device, got {x.device}")
    if x.ndim != 5:
        raise ValueError(f"{name} must be 5-D (B, C, ...), got shape {tuple(x.shape)}")
    check_nonempty(x, name)
    if not x.is_contiguous():  # the kernels read a contiguous copy: an expanded view may not fit
        check_allocation(f"a contiguous copy of the {name}", tuple(x.shape), x.dtype, x.device)
    return x


def _views(geometry: ConeBeamGeometry, device: torch.device) -> torch.Tensor:
    """The geometry's ``(n_views, 12)`` float64 vectors on ``device``, checked finite.

    The geometry refuses non-finite vectors when it is built, and its array is read-only; the
    check is repeated here (12 numbers per view, nothing next to a projection) because the C++
    op trusts its views and a NaN view would give silent zeros.
    """
    views = geometry.views_tensor(device)
    if not bool(torch.isfinite(views).all()):
        raise ValueError("geometry: the view vectors contain NaN or infinite values")
    return views


def check_volume(volume: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Validate a ``(B, C, D, H, W)`` volume against ``geometry`` (raises ValueError/TypeError)."""
    _check_data("volume", volume, geometry)
    if tuple(volume.shape[-3:]) != geometry.vol_shape:
        raise ValueError(
            f"volume has spatial shape {tuple(volume.shape[-3:])} but the geometry's vol_shape is {geometry.vol_shape}"
        )
    return volume


def check_sinogram(sino: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Validate a ``(B, C, n_views, rows, cols)`` measurement against ``geometry``."""
    _check_data("sinogram", sino, geometry)
    if tuple(sino.shape[-3:]) != geometry.sino_shape:
        raise ValueError(
            f"sinogram has shape (..., {', '.join(map(str, sino.shape[-3:]))}) but the geometry expects "
            f"(n_views, rows, cols) = {geometry.sino_shape}"
        )
    return sino


# --------------------------------------------------------------------------- public API
def cone_project(volume: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Forward cone-beam projection (Joseph's method): line integrals in mm x volume units.

    Parameters
    ----------
    volume : torch.Tensor
        ``(B, C, D, H, W)`` float32/float64, CPU or CUDA, any strides.
    geometry : ConeBeamGeometry

    Returns
    -------
    torch.Tensor
        ``(B, C, n_views, rows, cols)``, same dtype and device. Differentiable: its gradient is
        :func:`cone_backproject`.
    """
    check_volume(volume, geometry)
    rows, cols = geometry.det_shape
    check_allocation("the projection", (*volume.shape[:2], *geometry.sino_shape), volume.dtype, volume.device)
    return _ConeProject.apply(volume, _views(geometry, volume.device), geometry.vol_geom, rows, cols)


def cone_backproject(sino: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Exact transpose of :func:`cone_project` (not a filtered/FDK backprojection).

    Parameters
    ----------
    sino : torch.Tensor
        ``(B, C, n_views, rows, cols)`` float32/float64, CPU or CUDA.
    geometry : ConeBeamGeometry

    Returns
    -------
    torch.Tensor
        ``(B, C, D, H, W)``.
    """
    check_sinogram(sino, geometry)
    check_allocation("the backprojection", (*sino.shape[:2], *geometry.vol_shape), sino.dtype, sino.device)
    return _ConeBackproject.apply(sino, _views(geometry, sino.device), geometry.vol_geom, *geometry.vol_shape)
