"""The cone-beam projector pair as autograd-compatible ``torch.library`` ops.

``torch.ops.unrolled3d.cone_project`` / ``cone_backproject`` / ``cone_backproject_algo`` are defined
by the compiled extension (schemas in ``csrc/schemas.h``, CPU and CUDA kernels in ``csrc/``), or,
when none can be had, by their PyTorch twins under the same schemas (:mod:`._extension`; the
twins are :mod:`unrolled3d.ops.projector_ref`). Here they get their shape-only ("fake") kernels
and their autograd formulas, so they work under ``torch.compile``: the backward of the projection
is the backprojection with the same geometry, and vice versa (an exact transpose).

Backprojection algorithms (``cone_backproject_algo``; all visit exactly the forward's (voxel,
weight) pairs, so each is the transpose of :func:`cone_project` to rounding; see ``csrc/cone_beam.h``):

- ``"auto"``: the device's default, ``"tile"`` on the CPU and ``"scatter"`` on CUDA (what
  :func:`cone_backproject` uses);
- ``"scatter"``: by ray; CPU threads own z-slabs and re-trace every ray, CUDA uses ``atomicAdd``;
- ``"tile"`` (CPU only): each thread owns a z-slab, sets up only the rays that can reach it and
  splats them, two planes per SIMD instruction, with no synchronisation between threads;
- ``"gather"``: by voxel; each voxel sums the pixels of its footprint window from per-pixel line
  tables, no atomics, the same code on both devices;
- ``"column"``: by column; a block of threads owns a tile of (x, y) columns and a run of slices,
  each thread one column walking z, per view the block's lines in shared memory, each voxel
  written once (``csrc/column_backproject.h``); the same code on both devices (on the CPU it is
  the host twin of the CUDA kernel, slower than ``"tile"``).
"""
from __future__ import annotations

import torch

from .._validation import check_allocation
from ..geometry import ConeBeamGeometry
from . import _extension  # noqa: F401  (the ops exist once it is imported)
from ._func import Static, register_folding_vmap
from ._precision import output_dtype, register_float32_autocast, upcast
from ._projector_args import check_sinogram, check_volume, checked_views
from .projector_ref import BACKPROJECT_ALGORITHMS

__all__ = [
    "cone_project", "cone_backproject", "cone_backproject_algo", "BACKPROJECT_ALGORITHMS", "check_volume",
    "check_sinogram",
]

_CPU_ONLY_ALGORITHMS = ("tile",)


# --------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("unrolled3d::cone_project")
def _cone_project_fake(volume, views, vol_geom, rows, cols):
    return volume.new_empty((volume.shape[0], volume.shape[1], views.shape[0], rows, cols))


@torch.library.register_fake("unrolled3d::cone_backproject")
def _cone_backproject_fake(sino, views, vol_geom, depth, height, width):
    return sino.new_empty((sino.shape[0], sino.shape[1], depth, height, width))


@torch.library.register_fake("unrolled3d::cone_backproject_algo")
def _cone_backproject_algo_fake(sino, views, vol_geom, depth, height, width, algorithm):
    return sino.new_empty((sino.shape[0], sino.shape[1], depth, height, width))


# --------------------------------------------------------------------------- autograd
# The pair is linear: the backward of each op is the other op with the same geometry, and its
# forward-mode derivative (jvp) is the op itself applied to the tangent. The backward is
# registered twice: on the ops themselves (torch.library.register_autograd, for direct
# torch.ops users and torch.compile), and as autograd.Functions with a separate setup_context,
# which the public functions use because torch.func transforms (torch.func.grad, used by
# deepinv) reject the Function that register_autograd generates (pytorch/pytorch#170834). The
# Functions' vmap rule is generated (generate_vmap_rule): their forward, backward and jvp run
# the raw ops, whose own vmap rule folds the vmapped dimension into B (ops/_func.py), so
# vmap, jacrev and jacfwd compose.
#
# The Functions take their non-tensor arguments as one Static (ops/_func.py): the scan
# (vol_geom, vol_shape, det_shape) of both directions.
def _scan(vol_geom, vol_shape, det_shape) -> Static:
    return Static(list(vol_geom), tuple(vol_shape), tuple(det_shape))


def _save(ctx, views, scan: Static) -> None:
    ctx.save_for_backward(views)
    ctx.save_for_forward(views)
    ctx.scan = scan


class _ConeProject(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(volume, views, scan):
        vol_geom, _, (rows, cols) = scan.args
        return torch.ops.unrolled3d.cone_project(volume, views, vol_geom, rows, cols)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs[1], inputs[2])

    @staticmethod
    def backward(ctx, grad):
        (views,) = ctx.saved_tensors
        return _ConeBackproject.apply(grad.contiguous(), views, ctx.scan), None, None

    @staticmethod
    def jvp(ctx, t_volume, _views, _scan):
        (views,) = ctx.saved_tensors
        return _ConeProject.apply(t_volume, views, ctx.scan)


class _ConeBackproject(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(sino, views, scan):
        vol_geom, (depth, height, width), _ = scan.args
        return torch.ops.unrolled3d.cone_backproject(sino, views, vol_geom, depth, height, width)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs[1], inputs[2])

    @staticmethod
    def backward(ctx, grad):
        (views,) = ctx.saved_tensors
        return _ConeProject.apply(grad.contiguous(), views, ctx.scan), None, None

    @staticmethod
    def jvp(ctx, t_sino, _views, _scan):
        (views,) = ctx.saved_tensors
        return _ConeBackproject.apply(t_sino, views, ctx.scan)


# the same formulas on the raw ops
def _project_setup(ctx, inputs, output):
    volume, views, vol_geom, rows, cols = inputs
    _save(ctx, views, _scan(vol_geom, volume.shape[-3:], (rows, cols)))


def _backproject_setup(ctx, inputs, output):
    sino, views, vol_geom, depth, height, width = inputs
    _save(ctx, views, _scan(vol_geom, (depth, height, width), sino.shape[-2:]))


def _project_op_backward(ctx, grad):
    return _ConeProject.backward(ctx, grad)[0], None, None, None, None


def _backproject_op_backward(ctx, grad):
    return _ConeBackproject.backward(ctx, grad)[0], None, None, None, None, None


torch.library.register_autograd("unrolled3d::cone_project", _project_op_backward, setup_context=_project_setup)
torch.library.register_autograd("unrolled3d::cone_backproject", _backproject_op_backward,
                                setup_context=_backproject_setup)
# vmap: the vmapped dimension joins B (the views tensor is the geometry: never batched in practice,
# and looped over if it is); autocast: the ops run in float32 (ops/_precision.py).
for _name in ("unrolled3d::cone_project", "unrolled3d::cone_backproject"):
    register_folding_vmap(_name, batch_args=(0,), batch_outputs=True)
    register_float32_autocast(_name)


# cone_backproject_algo is the same linear map as cone_backproject, whatever the algorithm: its
# adjoint is the forward projection.
def _backproject_algo_setup(ctx, inputs, output):
    sino, views, vol_geom, depth, height, width, _algorithm = inputs
    _save(ctx, views, _scan(vol_geom, (depth, height, width), sino.shape[-2:]))


def _backproject_algo_op_backward(ctx, grad):
    return _ConeBackproject.backward(ctx, grad)[0], None, None, None, None, None, None


torch.library.register_autograd("unrolled3d::cone_backproject_algo", _backproject_algo_op_backward,
                                setup_context=_backproject_algo_setup)
register_float32_autocast("unrolled3d::cone_backproject_algo")


# --------------------------------------------------------------------------- public API
def cone_project(volume: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Forward cone-beam projection (Joseph's method): line integrals in mm x volume units.

    Parameters
    ----------
    volume : torch.Tensor
        ``(B, C, D, H, W)`` float32/float64, CPU or CUDA, any strides; float16/bfloat16 are
        computed in float32.
    geometry : ConeBeamGeometry

    Returns
    -------
    torch.Tensor
        ``(B, C, n_views, rows, cols)``, same dtype and device (float32 for float16/bfloat16
        input inside ``torch.autocast``). Differentiable, also under ``torch.func`` (``grad``,
        ``vjp``, ``jvp``, ``vmap``, ``jacrev``, ``jacfwd``): its gradient is
        :func:`cone_backproject`, its forward derivative itself.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.geometry import ConeBeamGeometry
    >>> from unrolled3d.ops import cone_project
    >>> g = ConeBeamGeometry.circular(2, 50.0, 30.0, (4, 5), 1.0, (3, 3, 3))
    >>> cone_project(torch.ones(1, 1, 3, 3, 3), g).shape
    torch.Size([1, 1, 2, 4, 5])
    >>> torch.func.vmap(lambda v: cone_project(v, g))(torch.ones(4, 1, 1, 3, 3, 3)).shape
    torch.Size([4, 1, 1, 2, 4, 5])
    """
    check_volume(volume, geometry)
    rows, cols = geometry.det_shape
    check_allocation("the projection", (*volume.shape[:2], *geometry.sino_shape), volume.dtype, volume.device)
    views = checked_views(geometry, volume.device)
    if torch.compiler.is_compiling():  # see ops/_func.py: the raw op, same formulas, no jvp
        out = torch.ops.unrolled3d.cone_project(upcast(volume), views, geometry.vol_geom, rows, cols)
    else:
        out = _ConeProject.apply(upcast(volume), views, Static(geometry.vol_geom, geometry.vol_shape, (rows, cols)))
    return out.to(output_dtype(volume))


def cone_backproject(sino: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Exact transpose of :func:`cone_project` (not a filtered/FDK backprojection).

    Parameters
    ----------
    sino : torch.Tensor
        ``(B, C, n_views, rows, cols)`` float32/float64, CPU or CUDA; float16/bfloat16 are
        computed in float32.
    geometry : ConeBeamGeometry

    Returns
    -------
    torch.Tensor
        ``(B, C, D, H, W)``, dtype as in :func:`cone_project`. Differentiable like it.
    """
    check_sinogram(sino, geometry)
    check_allocation("the backprojection", (*sino.shape[:2], *geometry.vol_shape), sino.dtype, sino.device)
    views = checked_views(geometry, sino.device)
    if torch.compiler.is_compiling():  # see ops/_func.py: the raw op, same formulas, no jvp
        out = torch.ops.unrolled3d.cone_backproject(upcast(sino), views, geometry.vol_geom, *geometry.vol_shape)
    else:
        out = _ConeBackproject.apply(upcast(sino), views, Static(geometry.vol_geom, geometry.vol_shape,
                                                                 geometry.det_shape))
    return out.to(output_dtype(sino))


def cone_backproject_algo(sino: torch.Tensor, geometry: ConeBeamGeometry, algorithm: str = "auto") -> torch.Tensor:
    """:func:`cone_backproject` with a chosen algorithm (same result up to rounding).

    Parameters
    ----------
    sino : torch.Tensor
        ``(B, C, n_views, rows, cols)``, CPU or CUDA; dtypes as in :func:`cone_backproject`.
    geometry : ConeBeamGeometry
    algorithm : {"auto", "scatter", "tile", "gather", "column"}
        See the module docstring. ``"tile"`` is CPU-only.

    Returns
    -------
    torch.Tensor
        ``(B, C, D, H, W)``. Differentiable: its gradient is :func:`cone_project`.
    """
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a str, got {type(algorithm).__name__}")
    if algorithm not in BACKPROJECT_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {BACKPROJECT_ALGORITHMS}, got {algorithm!r}")
    check_sinogram(sino, geometry)
    if algorithm in _CPU_ONLY_ALGORITHMS and sino.device.type != "cpu":
        raise ValueError(f"algorithm {algorithm!r} is CPU-only; use 'column', 'gather' or 'scatter' on {sino.device}")
    out = torch.ops.unrolled3d.cone_backproject_algo(upcast(sino), checked_views(geometry, sino.device),
                                                     geometry.vol_geom, *geometry.vol_shape, algorithm)
    return out.to(output_dtype(sino))
