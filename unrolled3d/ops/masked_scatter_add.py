"""``masked_scatter_add``: crop * mask * window added into a volume (overlap-add), as registered ops.

``torch.ops.unrolled3d.masked_scatter_add`` (functional, differentiable; its backward
``masked_scatter_add_backward`` is differentiable too) and the in-place inference fast path
``masked_scatter_add_`` run the Triton launcher or the PyTorch twin of
:mod:`unrolled3d.kernels.masked_scatter_add` (see :mod:`unrolled3d.ops.dispatch`). This module
holds their kernels' calls, fake kernels and derivative formulas (the rest is
:func:`~unrolled3d.ops._define.define_op`'s), and the public :func:`masked_scatter_add` /
:func:`masked_scatter_add_`, which validate once.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._validation import FLOAT_DTYPES, check_like, check_tensor, int_tuple
from ..kernels import masked_scatter_add as _kernel
from ..kernels._common import overlap
from ._define import Fold, define_bilinear_backward, define_op, or_empty
from ._precision import companions, is_low, upcast
from .dispatch import implementation

__all__ = ["masked_scatter_add", "masked_scatter_add_"]


# --------------------------------------------------------------------------- kernels' calls
def _scatter(dest: Tensor, src: Tensor, offset: List[int], patch_shape: List[int], mask: Optional[Tensor],
             window: Optional[Tensor], weight: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    fn = implementation(dest, _kernel.masked_scatter_add_forward, _kernel.masked_scatter_add_ref)
    out, out_w = fn(dest, src, offset, patch_shape, mask, window, weight)
    return out, or_empty(out_w, dest)


def _scatter_fake(dest, src, offset, patch_shape, mask, window, weight):
    torch._check(src.dim() == 5 and src.shape[:2] == dest.shape[:2], lambda: "src must have dest's (B, C)")
    torch._check(all(P >= p for P, p in zip(src.shape[2:], patch_shape)), lambda: "src must cover the patch")
    out_w = weight.new_empty(weight.shape) if weight is not None else dest.new_empty(0)
    return dest.new_empty(dest.shape), out_w


def _scatter_backward(grad_out: Tensor, src: Tensor, mask: Optional[Tensor], window: Optional[Tensor],
                      offset: List[int], patch_shape: List[int], need_src_grad: bool,
                      need_mask_grad: bool) -> Tuple[Tensor, Tensor]:
    fn = implementation(src, _kernel.masked_scatter_add_backward, _kernel.masked_scatter_add_backward_ref)
    gs, gm = fn(grad_out, src, offset, patch_shape, mask, window, need_src_grad, need_mask_grad)
    return or_empty(gs, src), or_empty(gm, src)


def _scatter_backward_fake(grad_out, src, mask, window, offset, patch_shape, need_src_grad, need_mask_grad):
    gs = src.new_empty(src.shape) if need_src_grad else src.new_empty(0)
    gm = src.new_empty(tuple(patch_shape)) if need_mask_grad else src.new_empty(0)
    return gs, gm


def _scatter_inplace(dest: Tensor, src: Tensor, offset: List[int], patch_shape: List[int], mask: Optional[Tensor],
                     window: Optional[Tensor], weight: Optional[Tensor]) -> None:
    fn = implementation(dest, _kernel.masked_scatter_add_forward, _kernel.masked_scatter_add_ref)
    fn(dest, src, offset, patch_shape, mask, window, weight, inplace=True)


def _scatter_inplace_fake(dest, src, offset, patch_shape, mask, window, weight):
    return None


# --------------------------------------------------------------------------- formulas
# With P = patch extraction, Z = zero-pad, Wn = window: out = dest + P^T(Z^T S * M * Wn) is affine
# in dest and bilinear in (S, M); out_weight = weight + a constant; the window is not
# differentiable. Its backward op computes  gs = Z(P G * Wn * M),  gm = sum_bc P G * Wn * Z^T S
# (gdest = G and gweight = G_w need no op).
def _scatter_vjp(a, need, g, g_w):
    need_s, need_m = need.src, need.mask and a.mask is not None
    gs = gm = None
    if need_s or need_m:
        gs, gm = _SCATTER_BACKWARD(g, a.src, a.mask, a.window, a.offset, a.patch_shape, need_s, need_m)
    return {"dest": g if need.dest else None, "src": gs if need_s else None, "mask": gm if need_m else None,
            "weight": g_w if need.weight else None}


def _scatter_jvp(a, t):
    # the product rule, each term added into the last: t_dest + P^T(Z^T t_S * M * Wn) + P^T(Z^T S * t_M * Wn)
    out = t.dest
    if t.src is not None:
        out = _SCATTER(*a.replace(dest=_or_zeros(out, a), src=t.src, weight=None))[0]
    if t.mask is not None:
        out = _SCATTER(*a.replace(dest=_or_zeros(out, a), mask=t.mask, weight=None))[0]
    return out, t.weight


def _or_zeros(t, a):
    return t if t is not None else a.output_zeros(0)


def _zeros_like(t):
    return t.new_zeros(t.shape)  # contiguous, whatever t's strides


# vmap: the vmapped dimension joins B for dest and src (out_weight does not depend on them), except
# where the mask's gradient sums over B. The in-place op has neither vmap (it cannot write a batch
# into one tensor) nor autocast (a cast would write into a copy).
_SCATTER = define_op(
    "masked_scatter_add", _scatter, fake=_scatter_fake, saves=("src", "mask", "window"), vjp=_scatter_vjp,
    jvp=_scatter_jvp, vmap=Fold(("dest", "src"), (True, False)), outputs_like=("dest", "weight"))
_SCATTER_BACKWARD = define_bilinear_backward(
    "masked_scatter_add_backward", _scatter_backward, fake=_scatter_backward_fake, pair=("src", "mask"),
    forward=lambda a, src, mask: _SCATTER(_zeros_like(a.grad_out), src, a.offset, a.patch_shape, mask, a.window,
                                          None)[0],
    saves=("grad_out", "src", "mask", "window"),
    vmap=Fold(("grad_out", "src"), (True, False), can_fold=lambda a: not a.need_mask_grad))
_SCATTER_INPLACE = define_op("masked_scatter_add_", _scatter_inplace, fake=_scatter_inplace_fake,
                             mutates_args=("dest", "weight"), autocast=False)


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
    out, out_w = _SCATTER.compute(dest, src, offset, patch, mask, window, weight)
    return out, (out_w if weight is not None else None)


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
        _SCATTER_INPLACE(dest, src, offset, patch, mask, window, weight)
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
    d_view = dest[(Ellipsis,) + region]
    d32 = upcast(d_view)
    w_view = weight[region] if weight is not None else None
    w32 = upcast(w_view)
    _SCATTER_INPLACE(d32, upcast(src), rel, patch, upcast(mask), upcast(window), w32)
    d_view.copy_(d32)
    if w_view is not None and w32 is not w_view:
        w_view.copy_(w32)
