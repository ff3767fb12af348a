"""``masked_scatter_add``: crop * mask * window added into a volume (overlap-add), as registered ops.

``torch.ops.unrolled3d.masked_scatter_add`` (functional, differentiable; its backward
``masked_scatter_add_backward`` is differentiable too) and the in-place inference fast path
``masked_scatter_add_`` run the Triton launcher or the PyTorch twin of
:mod:`unrolled3d.kernels.masked_scatter` (see :mod:`unrolled3d.ops.dispatch`). The public
:func:`masked_scatter_add` / :func:`masked_scatter_add_` validate once.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._validation import check_like, check_tensor, int_tuple
from ..kernels import masked_scatter as _kernel
from .._validation import FLOAT_DTYPES
from ..kernels._common import overlap
from ._func import Static, register_folding_vmap, sum_terms
from ._precision import companions, is_low, output_dtype, register_float32_autocast, upcast
from .dispatch import or_empty, use_triton

__all__ = ["masked_scatter_add", "masked_scatter_add_"]


@torch.library.custom_op("unrolled3d::masked_scatter_add", mutates_args=())
def _masked_scatter_add_op(dest: Tensor, src: Tensor, offset: List[int], patch_shape: List[int],
                           mask: Optional[Tensor], window: Optional[Tensor],
                           weight: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    fn = _kernel.masked_scatter_add_forward if use_triton(dest) else _kernel.masked_scatter_add_ref
    out, out_w = fn(dest, src, offset, patch_shape, mask, window, weight)
    return out, or_empty(out_w, dest)


@_masked_scatter_add_op.register_fake
def _(dest, src, offset, patch_shape, mask, window, weight):
    torch._check(src.dim() == 5 and src.shape[:2] == dest.shape[:2], lambda: "src must have dest's (B, C)")
    torch._check(all(P >= p for P, p in zip(src.shape[2:], patch_shape)), lambda: "src must cover the patch")
    out_w = weight.new_empty(weight.shape) if weight is not None else dest.new_empty(0)
    return dest.new_empty(dest.shape), out_w


@torch.library.custom_op("unrolled3d::masked_scatter_add_backward", mutates_args=())
def _masked_scatter_add_backward_op(grad_out: Tensor, src: Tensor, mask: Optional[Tensor],
                                    window: Optional[Tensor], offset: List[int], patch_shape: List[int],
                                    need_src_grad: bool, need_mask_grad: bool) -> Tuple[Tensor, Tensor]:
    fn = _kernel.masked_scatter_add_backward if use_triton(src) else _kernel.masked_scatter_add_backward_ref
    gs, gm = fn(grad_out, src, offset, patch_shape, mask, window, need_src_grad, need_mask_grad)
    return or_empty(gs, src), or_empty(gm, src)


@_masked_scatter_add_backward_op.register_fake
def _(grad_out, src, mask, window, offset, patch_shape, need_src_grad, need_mask_grad):
    gs = src.new_empty(src.shape) if need_src_grad else src.new_empty(0)
    gm = src.new_empty(tuple(patch_shape)) if need_mask_grad else src.new_empty(0)
    return gs, gm


# --------------------------------------------------------------------------- autograd
# As in ops/masked_gather.py: autograd.Functions with a separate setup_context (torch.func-safe,
# used by the public function) and the same formulas registered on the raw ops. ``out`` is
# affine in dest and bilinear in (src, mask), ``out_weight`` is ``weight`` plus a constant: the
# jvp is the product rule. ``window`` is not differentiable. Non-tensor arguments travel as one
# Static (ops/_func.py).
class _MaskedScatterAdd(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(dest, src, mask, window, weight, geom):
        offset, patch = geom.args
        return torch.ops.unrolled3d.masked_scatter_add(dest, src, offset, patch, mask, window, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        dest, src, mask, window, weight, geom = inputs
        _msa_save(ctx, src, mask, window, geom, output)

    @staticmethod
    def backward(ctx, g, g_w):
        need = ctx.needs_input_grad
        gd, gs, gm, gw = _msa_grads(ctx, g, g_w, need[0], need[1], need[2], need[4])
        return gd, gs, gm, None, gw, None

    @staticmethod
    def jvp(ctx, t_dest, t_src, t_mask, _t_window, t_weight, _geom):
        src, mask, window = ctx.saved_tensors
        out_shape, w_shape = ctx.out_shapes
        terms = [(t_dest, t_weight)]
        zero = None
        if t_src is not None:
            zero = src.new_zeros(out_shape)
            terms.append((_MaskedScatterAdd.apply(zero, t_src, mask, window, None, ctx.geom)[0], None))
        if t_mask is not None:
            zero = src.new_zeros(out_shape) if zero is None else zero
            terms.append((_MaskedScatterAdd.apply(zero, src, t_mask, window, None, ctx.geom)[0], None))
        return sum_terms(terms, ctx.out_shapes, src)


def _msa_save(ctx, src, mask, window, geom, output):
    ctx.geom = geom
    ctx.has_mask = mask is not None
    ctx.out_shapes = [o.shape for o in output]
    ctx.save_for_backward(src, mask, window)
    ctx.save_for_forward(src, mask, window)


def _msa_grads(ctx, g, g_w, need_d, need_s, need_m, need_wt):
    src, mask, window = ctx.saved_tensors
    need_m = ctx.has_mask and need_m
    gs = gm = None
    if need_s or need_m:
        offset, patch = ctx.geom.args
        gs, gm = _MaskedScatterAddBackward.apply(g, src, mask, window, Static(offset, patch, need_s, need_m))
    return (g if need_d else None), (gs if need_s else None), (gm if need_m else None), (g_w if need_wt else None)


class _MaskedScatterAddBackward(torch.autograd.Function):
    # gs = Z(P G * Wn * M),  gm = sum_bc P G * Wn * Z^T S   (P: patch, Z: zero-pad)
    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, src, mask, window, geom):
        offset, patch, need_s, need_m = geom.args
        return torch.ops.unrolled3d.masked_scatter_add_backward(grad_out, src, mask, window, offset, patch,
                                                                need_s, need_m)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, src, mask, window, geom = inputs
        _msab_save(ctx, grad_out, src, mask, window, geom, output)

    @staticmethod
    def backward(ctx, h_s, h_m):
        return _msab_grads(ctx, h_s, h_m, *ctx.needs_input_grad[:3]) + (None, None)

    @staticmethod
    def jvp(ctx, t_G, t_S, t_M, _t_window, _geom):
        # gs is bilinear in (G, M), gm in (G, S): the product rule, term by term
        G, S, M, Wn = ctx.saved_tensors
        offset, patch, need_s, need_m = ctx.geom.args
        terms = []
        if t_G is not None:
            terms.append(_MaskedScatterAddBackward.apply(t_G, S, M, Wn, ctx.geom))
        if t_M is not None and need_s:
            terms.append((_MaskedScatterAddBackward.apply(G, S, t_M, Wn, Static(offset, patch, True, False))[0], None))
        if t_S is not None and need_m:
            terms.append((None, _MaskedScatterAddBackward.apply(G, t_S, M, Wn, Static(offset, patch, False, True))[1]))
        return sum_terms(terms, ctx.out_shapes, S)


def _msab_save(ctx, grad_out, src, mask, window, geom, output):
    ctx.geom = geom
    ctx.out_shapes = [o.shape for o in output]
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_out, src, mask, window)
    ctx.save_for_forward(grad_out, src, mask, window)


def _msab_grads(ctx, h_s, h_m, need_G, need_S, need_M):
    G, S, M, Wn = ctx.saved_tensors
    offset, patch, need_s, need_m = ctx.geom.args
    geom = Static(offset, patch)
    h_s = h_s if need_s else None
    h_m = h_m if need_m else None
    dG = dS = dM = None
    if need_G and (h_s is not None or h_m is not None):
        dG = G.new_zeros(G.shape)
        if h_s is not None:
            dG = _MaskedScatterAdd.apply(dG, h_s, M, Wn, None, geom)[0]
        if h_m is not None:
            dG = _MaskedScatterAdd.apply(dG, S, h_m, Wn, None, geom)[0]
    if need_S and h_m is not None:
        dS = _MaskedScatterAddBackward.apply(G, S, h_m, Wn, Static(offset, patch, True, False))[0]
    if need_M and h_s is not None:
        dM = _MaskedScatterAddBackward.apply(G, h_s, M, Wn, Static(offset, patch, False, True))[1]
    return dG, dS, dM


# the same formulas on the raw ops (argument order of their schemas)
def _msa_op_setup(ctx, inputs, output):
    dest, src, offset, patch_shape, mask, window, weight = inputs
    _msa_save(ctx, src, mask, window, Static(list(offset), list(patch_shape)), output)


def _msa_op_backward(ctx, g, g_w):
    need = ctx.needs_input_grad
    gd, gs, gm, gw = _msa_grads(ctx, g, g_w, need[0], need[1], need[4], need[6])
    return gd, gs, None, None, gm, None, gw


def _msab_op_setup(ctx, inputs, output):
    grad_out, src, mask, window, offset, patch_shape, need_s, need_m = inputs
    _msab_save(ctx, grad_out, src, mask, window, Static(list(offset), list(patch_shape), need_s, need_m), output)


def _msab_op_backward(ctx, h_s, h_m):
    return _msab_grads(ctx, h_s, h_m, *ctx.needs_input_grad[:3]) + (None,) * 5


_masked_scatter_add_op.register_autograd(_msa_op_backward, setup_context=_msa_op_setup)
_masked_scatter_add_backward_op.register_autograd(_msab_op_backward, setup_context=_msab_op_setup)
# vmap: the vmapped dimension joins B for dest and src (out_weight does not depend on them), except
# where the mask's gradient sums over B (ops/_func.py); autocast: float32 (ops/_precision.py).
# The in-place op has neither: vmap cannot write a batch into one tensor, and an autocast cast
# would write into a copy.
register_folding_vmap("unrolled3d::masked_scatter_add", batch_args=(0, 1), batch_outputs=(True, False))
register_folding_vmap("unrolled3d::masked_scatter_add_backward", batch_args=(0, 1), batch_outputs=(True, False),
                      can_fold=lambda *args: not args[7])
for _name in ("unrolled3d::masked_scatter_add", "unrolled3d::masked_scatter_add_backward"):
    register_float32_autocast(_name)


@torch.library.custom_op("unrolled3d::masked_scatter_add_", mutates_args=("dest", "weight"))
def _masked_scatter_add_inplace_op(dest: Tensor, src: Tensor, offset: List[int], patch_shape: List[int],
                                   mask: Optional[Tensor], window: Optional[Tensor],
                                   weight: Optional[Tensor]) -> None:
    fn = _kernel.masked_scatter_add_forward if use_triton(dest) else _kernel.masked_scatter_add_ref
    fn(dest, src, offset, patch_shape, mask, window, weight, inplace=True)


@_masked_scatter_add_inplace_op.register_fake
def _(dest, src, offset, patch_shape, mask, window, weight):
    return None


def _check_args(dest, src, offset, patch_shape, mask, window, weight):
    check_tensor(dest, "dest", 5, FLOAT_DTYPES)
    check_tensor(src, "src", 5, FLOAT_DTYPES)
    also = companions(dest.dtype)  # float32 companions of a float16/bfloat16 dest
    if src.dtype != dest.dtype and src.dtype not in also:
        alternatives = "".join(f" or {str(d).replace('torch.', '')}" for d in also)
        raise TypeError(f"src must have the same dtype as dest ({dest.dtype}){alternatives}, got {src.dtype}")
    if src.device != dest.device:
        raise ValueError(f"src must be on the same device as dest ({dest.device}), got {src.device}")
    offset = int_tuple("offset", offset, 3, minimum=None)
    patch = int_tuple("patch_shape", patch_shape, 3)
    B, C = dest.shape[:2]
    if tuple(src.shape[:2]) != (B, C):
        raise ValueError(f"src must have the same (B, C) as dest ({B}, {C}), got {tuple(src.shape[:2])}")
    if any(P < p for P, p in zip(src.shape[2:], patch)):
        raise ValueError(f"src spatial shape must be >= patch_shape {patch} in every dim, got {tuple(src.shape[2:])}")
    if mask is not None:
        check_like(mask, "mask", dest, "dest", patch, also)
    if window is not None:
        check_like(window, "window", dest, "dest", patch, also)
    if weight is not None:
        check_like(weight, "weight", dest, "dest", dest.shape[2:], also)
    return list(offset), list(patch)


def masked_scatter_add(dest: Tensor, src: Tensor, offset: Sequence[int], patch_shape: Sequence[int],
                       mask: Optional[Tensor] = None, window: Optional[Tensor] = None,
                       weight: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """Functional overlap-add of one patch.

    ``out = dest`` plus ``src[..., :pd, :ph, :pw] * mask * window`` added at ``offset`` (voxels
    outside the volume skipped); ``out_weight = weight`` plus ``window`` (ones if ``None``) added
    at the same place, or ``None`` if ``weight`` is ``None``.

    Parameters
    ----------
    dest : torch.Tensor
        ``(B, C, D, H, W)`` float32/float64; float16/bfloat16 are computed in float32.
    src : torch.Tensor
        ``(B, C, Pd, Ph, Pw)`` with each ``P >=`` the patch, e.g. a padded inverse FFT; dest's
        dtype (or float32 for a float16/bfloat16 dest, as do ``mask``, ``window``, ``weight``).
    offset, patch_shape : sequence of 3 int
        As in :func:`unrolled3d.ops.masked_gather`.
    mask, window : torch.Tensor, optional
        ``(pd, ph, pw)`` (``None``: ones). ``window`` is not differentiable.
    weight : torch.Tensor, optional
        ``(D, H, W)``: the running sum of windows.

    Returns
    -------
    (torch.Tensor, torch.Tensor or None)
        New tensors ``(out, out_weight)`` of the dtypes of ``dest`` and ``weight`` (float32 under
        ``torch.autocast`` for float16/bfloat16); differentiable w.r.t. ``dest``, ``src``,
        ``mask`` and ``weight``, also under ``torch.func`` (``grad``, ``jvp``, ``vmap``,
        ``jacrev``, ``jacfwd``).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.ops import masked_scatter_add
    >>> out, w = masked_scatter_add(torch.zeros(1, 1, 1, 1, 3), torch.ones(1, 1, 1, 1, 2), (0, 0, 1),
    ...                             (1, 1, 2), weight=torch.zeros(1, 1, 3))
    >>> out.flatten().tolist(), w.flatten().tolist()
    ([0.0, 1.0, 1.0], [0.0, 1.0, 1.0])
    """
    offset, patch = _check_args(dest, src, offset, patch_shape, mask, window, weight)
    if window is not None and window.requires_grad and torch.is_grad_enabled():
        raise ValueError("window is not differentiable but requires grad; pass window.detach()")
    args = (upcast(dest), upcast(src), upcast(mask), upcast(window), upcast(weight))
    if torch.compiler.is_compiling():  # see ops/_func.py: the raw op, same formulas, no jvp
        d, s, m, win, w = args
        out, out_w = torch.ops.unrolled3d.masked_scatter_add(d, s, offset, patch, m, win, w)
    else:
        out, out_w = _MaskedScatterAdd.apply(*args, Static(offset, patch))
    return out.to(output_dtype(dest)), (out_w.to(output_dtype(weight)) if weight is not None else None)


def _no_internal_overlap(t: Tensor, name: str) -> None:
    if any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape)):
        raise ValueError(f"{name} is written in place and must not be an expanded (stride-0) view")


def masked_scatter_add_(dest: Tensor, src: Tensor, offset: Sequence[int], patch_shape: Sequence[int],
                        mask: Optional[Tensor] = None, window: Optional[Tensor] = None,
                        weight: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """In-place fast path of :func:`masked_scatter_add` for inference.

    A float16/bfloat16 ``dest`` is added to in float32 on the patch's region and rounded back
    once per call.

    Adds into ``dest`` (and ``weight``) directly: no copy of the volume, only a read-modify-write
    of the patch region. It has no autograd: call it under ``torch.no_grad()`` /
    ``torch.inference_mode()`` (a ``RuntimeError`` is raised if grad mode is on and an input
    requires grad). ``dest``/``weight`` must not be expanded views and must not overlap
    ``src``/``mask``/``window`` in memory. Returns ``(dest, weight)``.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.ops import masked_scatter_add_
    >>> dest = torch.zeros(1, 1, 1, 1, 3)
    >>> _ = masked_scatter_add_(dest, torch.ones(1, 1, 1, 1, 2), (0, 0, 1), (1, 1, 2))
    >>> dest.flatten().tolist()
    [0.0, 1.0, 1.0]
    """
    offset, patch = _check_args(dest, src, offset, patch_shape, mask, window, weight)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (dest, src, mask, window, weight)):
        raise RuntimeError("masked_scatter_add_ is inference-only (no autograd); call it under torch.no_grad() "
                           "or use the functional masked_scatter_add")
    _no_internal_overlap(dest, "dest")
    if weight is not None:
        _no_internal_overlap(weight, "weight")
    if is_low(dest.dtype):
        _add_low_precision_(dest, src, offset, patch, mask, window, weight)
    else:
        torch.ops.unrolled3d.masked_scatter_add_(dest, src, offset, patch, mask, window, weight)
    return dest, weight


def _add_low_precision_(dest, src, offset, patch, mask, window, weight) -> None:
    """The in-place add into a float16/bfloat16 ``dest``: the patch's region of ``dest`` (and
    ``weight``) is read into float32, added to there, and rounded back once, so the extra work
    is patch-sized, as in the float32 path."""
    ov = overlap(offset, patch, dest.shape[2:])
    if ov is None:
        return
    lo = [o + a for o, (a, _) in zip(offset, ov)]
    region = tuple(slice(o + a, o + b) for o, (a, b) in zip(offset, ov))
    rel = [o - start for o, start in zip(offset, lo)]  # the patch's offset in the region (<= 0)
    d_view = dest[(Ellipsis, *region)]
    d32 = upcast(d_view)
    w_view = weight[region] if weight is not None else None
    w32 = upcast(w_view)
    torch.ops.unrolled3d.masked_scatter_add_(d32, upcast(src), rel, patch, upcast(mask), upcast(window), w32)
    d_view.copy_(d32)
    if w_view is not None and w32 is not w_view:
        w_view.copy_(w32)
