"""``masked_gather``: patch * mask gathered into a zero-padded FFT buffer, as a registered op.

``torch.ops.unrolled3d.masked_gather`` and its backward ``masked_gather_backward`` (itself
differentiable: the two are mutual adjoints, so double backward dispatches like the forward)
run the Triton launcher or the PyTorch twin of :mod:`unrolled3d.kernels.masked_gather`, as
:mod:`unrolled3d.ops.dispatch` decides. This module holds their kernels' calls, their fake
kernels and derivative formulas, and the public :func:`masked_gather`, which validates its
arguments once; :func:`~unrolled3d.ops._define.define_op` makes the rest (autograd, ``torch.func``,
vmap, autocast).

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

from .._validation import FLOAT_DTYPES, check_like, check_tensor, int_tuple
from ..kernels import masked_gather as _kernel
from ._define import Fold, RegisteredOp, define_bilinear_backward, define_op, or_empty, product_rule
from ._precision import companions
from .dispatch import implementation

__all__ = ["masked_gather"]


# --------------------------------------------------------------------------- kernels' calls
def _gather(volume: Tensor, offset: List[int], patch_shape: List[int], pad_shape: List[int],
            mask: Optional[Tensor]) -> Tensor:
    fn = implementation(volume, _kernel.masked_gather_forward, _kernel.masked_gather_ref)
    return fn(volume, offset, patch_shape, pad_shape, mask)


def _gather_fake(volume, offset, patch_shape, pad_shape, mask):
    torch._check(volume.dim() == 5, lambda: f"volume must be 5-D, got {volume.dim()}-D")
    torch._check(all(P >= p for P, p in zip(pad_shape, patch_shape)), lambda: "pad_shape must be >= patch_shape")
    if mask is not None:
        torch._check(tuple(mask.shape) == tuple(patch_shape), lambda: "mask must have the patch's shape")
    return volume.new_empty((volume.shape[0], volume.shape[1], *pad_shape))


def _gather_backward(grad_out: Tensor, volume: Tensor, mask: Optional[Tensor], offset: List[int],
                     patch_shape: List[int], need_volume_grad: bool, need_mask_grad: bool) -> Tuple[Tensor, Tensor]:
    fn = implementation(volume, _kernel.masked_gather_backward, _kernel.masked_gather_backward_ref)
    gv, gm = fn(grad_out, volume, offset, patch_shape, mask, need_volume_grad, need_mask_grad)
    return or_empty(gv, volume), or_empty(gm, volume)


def _gather_backward_fake(grad_out, volume, mask, offset, patch_shape, need_volume_grad, need_mask_grad):
    torch._check(grad_out.dim() == 5 and grad_out.shape[:2] == volume.shape[:2],
                 lambda: "grad_out must be (B, C, Pd, Ph, Pw) with the volume's (B, C)")
    gv = volume.new_empty(volume.shape) if need_volume_grad else volume.new_empty(0)
    gm = volume.new_empty(tuple(patch_shape)) if need_mask_grad else volume.new_empty(0)
    return gv, gm


# --------------------------------------------------------------------------- formulas
# With P = patch extraction, Z = zero-pad, M = mask, V = volume: out = Z(P V * M), bilinear in
# (V, M); its backward is  gv = P^T(Z^T G * M),  gm = sum_bc Z^T G * P V.
def _gather_vjp(a, need, grad):
    need_v, need_m = need.volume, need.mask and a.mask is not None
    if not (need_v or need_m):
        return {}
    gv, gm = _GATHER_BACKWARD(grad, a.volume, a.mask, a.offset, a.patch_shape, need_v, need_m)
    return {"volume": gv if need_v else None, "mask": gm if need_m else None}


# vmap: the vmapped dimension joins B, except where the mask's gradient sums over B
_GATHER: RegisteredOp = define_op(
    "masked_gather", _gather, fake=_gather_fake, saves=("volume", "mask"), vjp=_gather_vjp,
    jvp=lambda a, t: (product_rule(_GATHER, a, t, "volume", "mask"),), vmap=Fold(("volume",)),
    outputs_like=("volume",))
_GATHER_BACKWARD = define_bilinear_backward(
    "masked_gather_backward", _gather_backward, fake=_gather_backward_fake, pair=("volume", "mask"),
    forward=lambda a, volume, mask: _GATHER(volume, a.offset, a.patch_shape, list(a.grad_out.shape[2:]), mask),
    saves=("grad_out", "volume", "mask"),
    vmap=Fold(("grad_out", "volume"), (True, False), can_fold=lambda a: not a.need_mask_grad))


def masked_gather(volume: Tensor, offset: Sequence[int], patch_shape: Sequence[int], pad_shape: Sequence[int],
                  mask: Optional[Tensor] = None) -> Tensor:
    """Gather ``volume[..., od:od+pd, oh:oh+ph, ow:ow+pw] * mask`` into the start of a zero
    ``(B, C, *pad_shape)`` buffer (voxels outside the volume read as 0).

    Parameters
    ----------
    volume : torch.Tensor
        ``(B, C, D, H, W)`` float32/float64, any strides; float16/bfloat16 are computed in
        float32 (see :mod:`unrolled3d.ops._precision`).
    offset : sequence of 3 int
        ``(od, oh, ow)``; may be negative or make the patch stick out of the volume.
    patch_shape : sequence of 3 int
        ``(pd, ph, pw)``, positive.
    pad_shape : sequence of 3 int
        ``(Pd, Ph, Pw)``, each ``>=`` the patch size (the FFT buffer).
    mask : torch.Tensor, optional
        ``(pd, ph, pw)`` of the volume's dtype (or float32 for a float16/bfloat16 volume) and
        device (``None``: ones).

    Returns
    -------
    torch.Tensor
        ``(B, C, Pd, Ph, Pw)``, contiguous, of the volume's dtype (float32 under ``torch.autocast``
        for a float16/bfloat16 volume). Differentiable w.r.t. ``volume`` and ``mask``, to any
        order, also under ``torch.func`` (``grad``, ``jvp``, ``vmap``, ``jacrev``, ``jacfwd``).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.ops import masked_gather
    >>> v = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    >>> masked_gather(v, (1, 0, 0), (1, 2, 2), (2, 2, 3))[0, 0, 0]
    tensor([[4., 5., 0.],
            [6., 7., 0.]])
    """
    check_tensor(volume, "volume", 5, FLOAT_DTYPES)
    offset = int_tuple("offset", offset, 3, minimum=None)
    patch = int_tuple("patch_shape", patch_shape, 3)
    pad = int_tuple("pad_shape", pad_shape, 3)
    if any(P < p for P, p in zip(pad, patch)):
        raise ValueError(f"pad_shape must be >= patch_shape in every dim, got pad_shape={pad}, patch_shape={patch}")
    if mask is not None:
        check_like(mask, "mask", volume, "volume", patch, also=companions(volume.dtype))
    return _GATHER.compute(volume, list(offset), list(patch), list(pad), mask)
