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


def _msa_setup(ctx, inputs, output):
    dest, src, offset, patch_shape, mask, window, weight = inputs
    ctx.geom = (list(offset), list(patch_shape))
    ctx.has_mask = mask is not None
    ctx.save_for_backward(src, mask, window)


def _msa_backward(ctx, g, g_w):
    src, mask, window = ctx.saved_tensors
    need_d, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_m = ctx.has_mask and ctx.needs_input_grad[4]
    need_wt = ctx.needs_input_grad[6]
    gs = gm = None
    if need_s or need_m:
        gs, gm = torch.ops.unrolled3d.masked_scatter_add_backward(g, src, mask, window, *ctx.geom, need_s, need_m)
    return ((g if need_d else None), (gs if need_s else None), None, None,
            (gm if need_m else None), None, (g_w if need_wt else None))


_masked_scatter_add_op.register_autograd(_msa_backward, setup_context=_msa_setup)


def _msab_setup(ctx, inputs, output):
    grad_out, src, mask, window, offset, patch_shape, need_s, need_m = inputs
    ctx.geom = (list(offset), list(patch_shape))
    ctx.need = (need_s, need_m)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_out, src, mask, window)


def _msab_backward(ctx, h_s, h_m):
    # gs = Z(P G * Wn * M),  gm = sum_bc P G * Wn * Z^T S   (P: patch, Z: zero-pad)
    G, S, M, Wn = ctx.saved_tensors
    offset, patch = ctx.geom
    h_s = h_s if ctx.need[0] else None
    h_m = h_m if ctx.need[1] else None
    dG = dS = dM = None
    if ctx.needs_input_grad[0] and (h_s is not None or h_m is not None):
        dG = G.new_zeros(G.shape)
        if h_s is not None:
            dG = torch.ops.unrolled3d.masked_scatter_add(dG, h_s, offset, patch, M, Wn, None)[0]
        if h_m is not None:
            dG = torch.ops.unrolled3d.masked_scatter_add(dG, S, offset, patch, h_m, Wn, None)[0]
    if ctx.needs_input_grad[1] and h_m is not None:
        dS = torch.ops.unrolled3d.masked_scatter_add_backward(G, S, h_m, Wn, offset, patch, True, False)[0]
    if ctx.needs_input_grad[2] and h_s is not None:
        dM = torch.ops.unrolled3d.masked_scatter_add_backward(G, h_s, M, Wn, offset, patch, False, True)[1]
    return dG, dS, dM, None, None, None, None, None


_masked_scatter_add_backward_op.register_autograd(_msab_backward, setup_context=_msab_setup)


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
    check_tensor(dest, "dest", 5)
    check_tensor(src, "src", 5)
    if src.dtype != dest.dtype:
        raise TypeError(f"src must have the same dtype as dest ({dest.dtype}), got {src.dtype}")
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
        check_like(mask, "mask", dest, "dest", patch)
    if window is not None:
        check_like(window, "window", dest, "dest", patch)
    if weight is not None:
        check_like(weight, "weight", dest, "dest", dest.shape[2:])
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
        ``(B, C, D, H, W)`` float32/float64.
    src : torch.Tensor
        ``(B, C, Pd, Ph, Pw)`` with each ``P >=`` the patch, e.g. a padded inverse FFT.
    offset, patch_shape : sequence of 3 int
        As in :func:`unrolled3d.ops.masked_gather`.
    mask, window : torch.Tensor, optional
        ``(pd, ph, pw)`` (``None``: ones). ``window`` is not differentiable.
    weight : torch.Tensor, optional
        ``(D, H, W)``: the running sum of windows.

    Returns
    -------
    (torch.Tensor, torch.Tensor or None)
        New tensors ``(out, out_weight)``; differentiable w.r.t. ``dest``, ``src``, ``mask`` and
        ``weight``.

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
    out, out_w = torch.ops.unrolled3d.masked_scatter_add(dest, src, offset, patch, mask, window, weight)
    return out, (out_w if weight is not None else None)


def _no_internal_overlap(t: Tensor, name: str) -> None:
    if any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape)):
        raise ValueError(f"{name} is written in place and must not be an expanded (stride-0) view")


def masked_scatter_add_(dest: Tensor, src: Tensor, offset: Sequence[int], patch_shape: Sequence[int],
                        mask: Optional[Tensor] = None, window: Optional[Tensor] = None,
                        weight: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """In-place fast path of :func:`masked_scatter_add` for inference.

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
    torch.ops.unrolled3d.masked_scatter_add_(dest, src, offset, patch, mask, window, weight)
    return dest, weight
