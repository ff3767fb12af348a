"""FDK's weighted backprojection as a registered op (the last step of :func:`unrolled3d.physics.fdk`).

``torch.ops.unrolled3d.fdk_backproject(images, table, vol_geom, depth, height, width)`` sums, for
every voxel, each view's filtered image sampled bilinearly where the ray from the source through
the voxel meets the detector, times the view's weight over the squared depth. The compiled
extension runs it in C++ (CPU) and CUDA (``csrc/fdk_backproject.h``: one thread per (x, y)
column walking z, ASTRA's and TIGRE's organisation); its PyTorch twin is
:func:`unrolled3d.ops.projector_ref.fdk_backproject_raw` (``grid_sample`` per chunk of views). Here
the op gets its fake kernel, its autograd formula (the twin's vector-Jacobian product: the map
is linear in ``images``) and the float32 autocast rule.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from . import _extension  # the ops exist once it is imported
from ._precision import register_float32_autocast
from .projector_ref import fdk_backproject_raw

__all__ = ["fdk_backproject", "FDK_PROGRESS_VIEWS"]

#: views per step when a progress bar is shown over the compiled kernels
FDK_PROGRESS_VIEWS = 64


@torch.library.register_fake("unrolled3d::fdk_backproject")
def _fake(images, table, vol_geom, depth, height, width):
    torch._check(images.dim() == 4, lambda: "fdk_backproject: images must be 4-D (N, V, rows, cols)")
    return images.new_empty((images.shape[0], depth, height, width))


def _setup(ctx, inputs, output):
    images, table, vol_geom, depth, height, width = inputs
    ctx.save_for_backward(table)
    ctx.args = (tuple(images.shape), list(vol_geom), (depth, height, width))


def _backward(ctx, grad):
    # The op is linear in `images`: its vector-Jacobian product is the twin's, at any point.
    (table,) = ctx.saved_tensors
    shape, vol_geom, vol_shape = ctx.args
    with torch.enable_grad():
        images = torch.zeros(shape, dtype=grad.dtype, device=grad.device, requires_grad=True)
        out = fdk_backproject_raw(images, table.to(grad.dtype), vol_geom, *vol_shape)
        (g,) = torch.autograd.grad(out, images, grad)
    return g, None, None, None, None, None


torch.library.register_autograd("unrolled3d::fdk_backproject", _backward, setup_context=_setup)
register_float32_autocast("unrolled3d::fdk_backproject")


def fdk_backproject(images: torch.Tensor, table: torch.Tensor, vol_geom: Sequence[float],
                    vol_shape: Sequence[int], slab_voxels: Optional[int] = None,
                    progress: bool = False) -> torch.Tensor:
    """FDK's weighted backprojection, by the compiled kernels or, without them, the twin.

    The arguments are trusted (:func:`unrolled3d.physics.fdk` checks them).

    Parameters
    ----------
    images : torch.Tensor
        ``(N, V, rows, cols)`` cosine-weighted, ramp-filtered projections, float32 or float64.
    table : torch.Tensor
        ``(V, 18)`` per-view constants, ``images``' dtype and device.
    vol_geom : sequence of float
        ``(sz, sy, sx, oz, oy, ox)`` mm.
    vol_shape : sequence of int
        ``(D, H, W)``.
    slab_voxels : int, optional
        The twin's step size (see :func:`~unrolled3d.ops.projector_ref.fdk_backproject_raw`); the
        compiled kernels need no temporaries and ignore it.
    progress : bool
        A progress bar over the views (compiled kernels: :data:`FDK_PROGRESS_VIEWS` views per
        step, summed step by step: equal to one call to rounding, to the bit with one step).

    Returns
    -------
    torch.Tensor
        ``(N, D, H, W)``.
    """
    D, H, W = (int(v) for v in vol_shape)
    if _extension.twin_library() is not None:  # no compiled op: the twin itself, with its steps and progress bar
        return fdk_backproject_raw(images, table, vol_geom, D, H, W, slab_voxels=slab_voxels, progress=progress)
    op = torch.ops.unrolled3d.fdk_backproject
    n_views = images.shape[1]
    if not progress or torch.compiler.is_compiling():
        return op(images, table, list(vol_geom), D, H, W)
    out: torch.Tensor | None = None
    for v0 in tqdm(range(0, n_views, FDK_PROGRESS_VIEWS), desc="FDK backprojection", unit="step", leave=False):
        part = op(images[:, v0 : v0 + FDK_PROGRESS_VIEWS], table[v0 : v0 + FDK_PROGRESS_VIEWS], list(vol_geom), D, H, W)
        out = part if out is None else out.add_(part)
    assert out is not None  # n_views >= 1: a geometry has at least one view
    return out
