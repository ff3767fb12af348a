"""``masked_gather``: patch * mask gathered into a zero-padded FFT buffer, as a registered op.

``torch.ops.unrolled3d.masked_gather`` and its backward ``masked_gather_backward`` (itself
differentiable: the two are mutual adjoints, so double backward dispatches like the forward)
run the Triton launcher or the PyTorch twin of :mod:`unrolled3d.kernels.masked_gather`, as
:mod:`unrolled3d.ops.dispatch` decides. The public :func:`masked_gather` validates its
arguments once; the registered op and the kernels trust them (the fake kernel re-states the
shape rules with ``torch._check`` for tracing).

Why ``torch.library.custom_op`` and not ``triton_op`` + ``wrap_triton``: each op picks its
implementation at run time (Triton on CUDA or under the CPU interpreter, else the twin); a
``custom_op`` is opaque to ``torch.compile``, so the same Python runs eagerly and compiled on
every device. ``triton_op`` pays off when Inductor can fuse around the kernel; these kernels are
already the fused, memory-bound unit and their neighbours are FFTs, which Inductor cannot fuse.
``custom_op`` + ``register_fake`` + ``register_autograd`` is what ``opcheck``,
``torch.compile(fullgraph=True)`` and AOTAutograd support uniformly from torch 2.11 to 2.14,
including for the Triton CPU interpreter.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._validation import check_like, check_tensor, int_tuple
from ..kernels import masked_gather as _kernel
from .dispatch import or_empty, use_triton

__all__ = ["masked_gather"]


@torch.library.custom_op("unrolled3d::masked_gather", mutates_args=())
def _masked_gather_op(volume: Tensor, offset: List[int], patch_shape: List[int], pad_shape: List[int],
                      mask: Optional[Tensor]) -> Tensor:
    fn = _kernel.masked_gather_forward if use_triton(volume) else _kernel.masked_gather_ref
    return fn(volume, offset, patch_shape, pad_shape, mask)


@_masked_gather_op.register_fake
def _(volume, offset, patch_shape, pad_shape, mask):
    torch._check(volume.dim() == 5, lambda: f"volume must be 5-D, got {volume.dim()}-D")
    torch._check(all(P >= p for P, p in zip(pad_shape, patch_shape)), lambda: "pad_shape must be >= patch_shape")
    if mask is not None:
        torch._check(tuple(mask.shape) == tuple(patch_shape), lambda: "mask must have the patch's shape")
    return volume.new_empty((volume.shape[0], volume.shape[1], *pad_shape))


@torch.library.custom_op("unrolled3d::masked_gather_backward", mutates_args=())
def _masked_gather_backward_op(grad_out: Tensor, volume: Tensor, mask: Optional[Tensor], offset: List[int],
                               patch_shape: List[int], need_volume_grad: bool,
                               need_mask_grad: bool) -> Tuple[Tensor, Tensor]:
    fn = _kernel.masked_gather_backward if use_triton(volume) else _kernel.masked_gather_backward_ref
    gv, gm = fn(grad_out, volume, offset, patch_shape, mask, need_volume_grad, need_mask_grad)
    return or_empty(gv, volume), or_empty(gm, volume)


@_masked_gather_backward_op.register_fake
def _(grad_out, volume, mask, offset, patch_shape, need_volume_grad, need_mask_grad):
    torch._check(grad_out.dim() == 5 and grad_out.shape[:2] == volume.shape[:2],
                 lambda: "grad_out must be (B, C, Pd, Ph, Pw) with the volume's (B, C)")
    gv = volume.new_empty(volume.shape) if need_volume_grad else volume.new_empty(0)
    gm = volume.new_empty(tuple(patch_shape)) if need_mask_grad else volume.new_empty(0)
    return gv, gm


def _mg_setup(ctx, inputs, output):
    volume, offset, patch_shape, pad_shape, mask = inputs
    ctx.geom = (list(offset), list(patch_shape))
    ctx.save_for_backward(volume, mask)


def _mg_backward(ctx, grad):
    volume, mask = ctx.saved_tensors
    need_v = ctx.needs_input_grad[0]
    need_m = mask is not None and ctx.needs_input_grad[4]
    if not (need_v or need_m):
        return None, None, None, None, None
    gv, gm = torch.ops.unrolled3d.masked_gather_backward(grad, volume, mask, *ctx.geom, need_v, need_m)
    return (gv if need_v else None), None, None, None, (gm if need_m else None)


_masked_gather_op.register_autograd(_mg_backward, setup_context=_mg_setup)


def _mgb_setup(ctx, inputs, output):
    grad_out, volume, mask, offset, patch_shape, need_v, need_m = inputs
    ctx.geom = (list(offset), list(patch_shape))
    ctx.need = (need_v, need_m)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_out, volume, mask)


def _mgb_backward(ctx, h_v, h_m):
    # Linear algebra: with P = patch extraction, Z = zero-pad,
    #   gv = P^T(Z^T G * M),  gm = sum_bc Z^T G * P V
    G, V, M = ctx.saved_tensors
    offset, patch = ctx.geom
    h_v = h_v if ctx.need[0] else None
    h_m = h_m if ctx.need[1] else None
    pad = list(G.shape[2:])
    dG = dV = dM = None
    if ctx.needs_input_grad[0]:
        if h_v is not None:
            dG = torch.ops.unrolled3d.masked_gather(h_v, offset, patch, pad, M)
        if h_m is not None:
            t = torch.ops.unrolled3d.masked_gather(V, offset, patch, pad, h_m)
            dG = t if dG is None else dG + t
    if ctx.needs_input_grad[1] and h_m is not None:
        dV = torch.ops.unrolled3d.masked_gather_backward(G, V, h_m, offset, patch, True, False)[0]
    if ctx.needs_input_grad[2] and h_v is not None:
        dM = torch.ops.unrolled3d.masked_gather_backward(G, h_v, M, offset, patch, False, True)[1]
    return dG, dV, dM, None, None, None, None


_masked_gather_backward_op.register_autograd(_mgb_backward, setup_context=_mgb_setup)


def masked_gather(volume: Tensor, offset: Sequence[int], patch_shape: Sequence[int], pad_shape: Sequence[int],
                  mask: Optional[Tensor] = None) -> Tensor:
    """Gather ``volume[..., od:od+pd, oh:oh+ph, ow:ow+pw] * mask`` into the start of a zero
    ``(B, C, *pad_shape)`` buffer (voxels outside the volume read as 0).

    Parameters
    ----------
    volume : torch.Tensor
        ``(B, C, D, H, W)`` float32/float64, any strides.
    offset : sequence of 3 int
        ``(od, oh, ow)``; may be negative or make the patch stick out of the volume.
    patch_shape : sequence of 3 int
        ``(pd, ph, pw)``, positive.
    pad_shape : sequence of 3 int
        ``(Pd, Ph, Pw)``, each ``>=`` the patch size (the FFT buffer).
    mask : torch.Tensor, optional
        ``(pd, ph, pw)`` of the volume's dtype and device (``None``: ones).

    Returns
    -------
    torch.Tensor
        ``(B, C, Pd, Ph, Pw)``, contiguous. Differentiable w.r.t. ``volume`` and ``mask``, to any
        order.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.ops import masked_gather
    >>> v = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    >>> masked_gather(v, (1, 0, 0), (1, 2, 2), (2, 2, 3))[0, 0, 0]
    tensor([[4., 5., 0.],
            [6., 7., 0.]])
    """
    check_tensor(volume, "volume", 5)
    offset = int_tuple("offset", offset, 3, minimum=None)
    patch = int_tuple("patch_shape", patch_shape, 3)
    pad = int_tuple("pad_shape", pad_shape, 3)
    if any(P < p for P, p in zip(pad, patch)):
        raise ValueError(f"pad_shape must be >= patch_shape in every dim, got pad_shape={pad}, patch_shape={patch}")
    if mask is not None:
        check_like(mask, "mask", volume, "volume", patch)
    return torch.ops.unrolled3d.masked_gather(volume, list(offset), list(patch), list(pad), mask)
