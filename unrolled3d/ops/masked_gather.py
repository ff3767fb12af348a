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

from .._validation import FLOAT_DTYPES, check_like, check_tensor, int_tuple
from ..kernels import masked_gather as _kernel
from ._func import Static, register_folding_vmap, sum_terms
from ._precision import companions, output_dtype, register_float32_autocast, upcast
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


# --------------------------------------------------------------------------- autograd
# Registered twice, like the projector (ops/projector.py): as autograd.Functions with a separate
# setup_context, which the public function uses because torch.func transforms reject the
# Function that register_autograd generates, and on the raw ops (register_autograd, for
# torch.ops users, opcheck and torch.compile), with the same formulas. Backward and jvp call
# the Functions, so every order of differentiation stays torch.func-safe; the op is bilinear
# in (volume, mask), so its jvp is the product rule; the Functions' vmap rule is generated
# from the raw ops' rules. Non-tensor arguments travel as one Static (ops/_func.py):
# (offset, patch_shape, pad_shape).
class _MaskedGather(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(volume, mask, geom):
        offset, patch, pad = geom.args
        return torch.ops.unrolled3d.masked_gather(volume, offset, patch, pad, mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        volume, mask, geom = inputs
        _mg_save(ctx, volume, mask, geom)

    @staticmethod
    def backward(ctx, grad):
        return _mg_grads(ctx, grad, ctx.needs_input_grad[0], ctx.needs_input_grad[1]) + (None,)

    @staticmethod
    def jvp(ctx, t_volume, t_mask, _geom):
        volume, mask = ctx.saved_tensors
        terms = []
        if t_volume is not None:
            terms.append((_MaskedGather.apply(t_volume, mask, ctx.geom),))
        if t_mask is not None:
            terms.append((_MaskedGather.apply(volume, t_mask, ctx.geom),))
        return sum_terms(terms, ctx.out_shapes, volume)[0]


def _mg_save(ctx, volume, mask, geom):
    ctx.geom = geom
    ctx.out_shapes = [(*volume.shape[:2], *geom.args[2])]
    ctx.save_for_backward(volume, mask)
    ctx.save_for_forward(volume, mask)


def _mg_grads(ctx, grad, need_v, need_m):
    volume, mask = ctx.saved_tensors
    need_m = need_m and mask is not None
    if not (need_v or need_m):
        return None, None
    offset, patch, _ = ctx.geom.args
    gv, gm = _MaskedGatherBackward.apply(grad, volume, mask, Static(offset, patch, need_v, need_m))
    return (gv if need_v else None), (gm if need_m else None)


class _MaskedGatherBackward(torch.autograd.Function):
    # Linear algebra: with P = patch extraction, Z = zero-pad,
    #   gv = P^T(Z^T G * M),  gm = sum_bc Z^T G * P V
    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, volume, mask, geom):
        offset, patch, need_v, need_m = geom.args
        return torch.ops.unrolled3d.masked_gather_backward(grad_out, volume, mask, offset, patch, need_v, need_m)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, volume, mask, geom = inputs
        _mgb_save(ctx, grad_out, volume, mask, geom, output)

    @staticmethod
    def backward(ctx, h_v, h_m):
        return _mgb_grads(ctx, h_v, h_m, *ctx.needs_input_grad[:3]) + (None,)

    @staticmethod
    def jvp(ctx, t_G, t_V, t_M, _geom):
        # gv is bilinear in (G, M), gm in (G, V): the product rule, term by term
        G, V, M = ctx.saved_tensors
        offset, patch, need_v, need_m = ctx.geom.args
        terms = []
        if t_G is not None:
            terms.append(_MaskedGatherBackward.apply(t_G, V, M, ctx.geom))
        if t_M is not None and need_v:
            terms.append((_MaskedGatherBackward.apply(G, V, t_M, Static(offset, patch, True, False))[0], None))
        if t_V is not None and need_m:
            terms.append((None, _MaskedGatherBackward.apply(G, t_V, M, Static(offset, patch, False, True))[1]))
        return sum_terms(terms, ctx.out_shapes, V)


def _mgb_save(ctx, grad_out, volume, mask, geom, output):
    ctx.geom = geom
    ctx.out_shapes = [o.shape for o in output]
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_out, volume, mask)
    ctx.save_for_forward(grad_out, volume, mask)


def _mgb_grads(ctx, h_v, h_m, need_G, need_V, need_M):
    G, V, M = ctx.saved_tensors
    offset, patch, need_v, need_m = ctx.geom.args
    h_v = h_v if need_v else None
    h_m = h_m if need_m else None
    pad = Static(offset, patch, tuple(G.shape[2:]))
    dG = dV = dM = None
    if need_G:
        if h_v is not None:
            dG = _MaskedGather.apply(h_v, M, pad)
        if h_m is not None:
            t = _MaskedGather.apply(V, h_m, pad)
            dG = t if dG is None else dG + t
    if need_V and h_m is not None:
        dV = _MaskedGatherBackward.apply(G, V, h_m, Static(offset, patch, True, False))[0]
    if need_M and h_v is not None:
        dM = _MaskedGatherBackward.apply(G, h_v, M, Static(offset, patch, False, True))[1]
    return dG, dV, dM


# the same formulas on the raw ops (argument order of their schemas)
def _mg_op_setup(ctx, inputs, output):
    volume, offset, patch_shape, pad_shape, mask = inputs
    _mg_save(ctx, volume, mask, Static(list(offset), list(patch_shape), list(pad_shape)))


def _mg_op_backward(ctx, grad):
    gv, gm = _mg_grads(ctx, grad, ctx.needs_input_grad[0], ctx.needs_input_grad[4])
    return gv, None, None, None, gm


def _mgb_op_setup(ctx, inputs, output):
    grad_out, volume, mask, offset, patch_shape, need_v, need_m = inputs
    _mgb_save(ctx, grad_out, volume, mask, Static(list(offset), list(patch_shape), need_v, need_m), output)


def _mgb_op_backward(ctx, h_v, h_m):
    return _mgb_grads(ctx, h_v, h_m, *ctx.needs_input_grad[:3]) + (None,) * 4


_masked_gather_op.register_autograd(_mg_op_backward, setup_context=_mg_op_setup)
_masked_gather_backward_op.register_autograd(_mgb_op_backward, setup_context=_mgb_op_setup)
# vmap: the vmapped dimension joins B, except where the mask's gradient sums over B (ops/_func.py)
register_folding_vmap("unrolled3d::masked_gather", batch_args=(0,), batch_outputs=True)
register_folding_vmap("unrolled3d::masked_gather_backward", batch_args=(0, 1), batch_outputs=(True, False),
                      can_fold=lambda *args: not args[6])
for _name in ("unrolled3d::masked_gather", "unrolled3d::masked_gather_backward"):
    register_float32_autocast(_name)


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
    volume_c, mask_c = upcast(volume), upcast(mask)
    if torch.compiler.is_compiling():  # see ops/_func.py: the raw op, same formulas, no jvp
        out = torch.ops.unrolled3d.masked_gather(volume_c, list(offset), list(patch), list(pad), mask_c)
    else:
        out = _MaskedGather.apply(volume_c, mask_c, Static(list(offset), list(patch), list(pad)))
    return out.to(output_dtype(volume))
