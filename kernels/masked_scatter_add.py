"""Masked, windowed patch scatter-add (the overlap-add step after an inverse FFT).

``masked_scatter_add(dest, src, offset, patch_shape, mask, window, weight)``
crops ``src[..., :pd, :ph, :pw]`` (``src`` is e.g. a padded ``irfftn`` output),
multiplies by ``mask`` and ``window`` and adds the result into ``dest`` at
``offset`` (voxels outside the volume are skipped) - one fused read-modify-write
pass over the patch region.  If ``weight`` (``(D, H, W)``) is given, ``window``
(ones if None) is added to it at the same place, which gives the normaliser for
overlapping patches.

Layout (Liger-Kernel style): ``_masked_scatter_add_forward_kernel`` /
``_masked_scatter_add_backward_kernel`` (Triton), launchers
``masked_scatter_add_forward`` / ``masked_scatter_add_backward`` and pure
PyTorch twins ``masked_scatter_add_ref`` / ``masked_scatter_add_backward_ref``.

A single patch never covers a voxel twice, so the scatter needs no atomics and
is deterministic.  ``inplace=True`` mutates ``dest``/``weight`` (no autograd);
the default returns new contiguous tensors. Arguments are trusted (validated once by
:func:`unrolled3d.ops.masked_scatter_add`).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (
    bc_launches, bc_span, chunks, device_ctx, overlap, tile_coords, tile_grid, tile_inside, tile_offsets,
)

__all__ = [
    "masked_scatter_add_forward",
    "masked_scatter_add_backward",
    "masked_scatter_add_ref",
    "masked_scatter_add_backward_ref",
]


def _add_window_(weight: torch.Tensor, offset, patch, window: Optional[torch.Tensor]) -> None:
    """weight[o + p] += window[p] (1 if None) on the in-volume part, in place (torch ops)."""
    ov = overlap(offset, patch, weight.shape)
    if ov is None:
        return
    ps = tuple(slice(a, b) for a, b in ov)
    vs = tuple(slice(o + a, o + b) for o, (a, b) in zip(offset, ov))
    weight[vs] += window[ps] if window is not None else 1


def _outputs(dest: torch.Tensor, weight: Optional[torch.Tensor], inplace: bool):
    """What a scatter writes into: ``dest``/``weight`` themselves in place, else new contiguous
    copies of them."""
    if inplace:
        return dest, weight
    out = dest.clone(memory_format=torch.contiguous_format)
    return out, (weight.clone(memory_format=torch.contiguous_format) if weight is not None else None)


# --------------------------------------------------------------------------- #
# Triton kernels
# --------------------------------------------------------------------------- #
@triton.jit
def _masked_scatter_add_forward_kernel(
    dest_ptr, src_ptr, mask_ptr, win_ptr, wt_ptr,
    C, D, H, W,
    sd_b, sd_c, sd_d, sd_h, sd_w,
    ss_b, ss_c, ss_d, ss_h, ss_w,
    sm_d, sm_h, sm_w,
    sw_d, sw_h, sw_w,
    st_d, st_h, st_w,
    od, oh, ow,
    pd, ph, pw,
    n_wb, bc_start,
    HAS_MASK: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    # In place: dest[b, c, o + p] += src[b, c, p] * mask[p] * window[p] on the
    # patch tiles (axis 0) for one (b, c) (axis 1); the (b, c) == 0 programs also
    # add the window into the weight map.
    bc = tl.program_id(1).to(tl.int64) + bc_start
    b = bc // C
    c = bc % C
    r, k, i, j, d, h, w = tile_coords(n_wb, ph, od, oh, ow, BLOCK_R, BLOCK_W)
    row_in, col_in = tile_inside(i < pd, k < pw, d, h, w, D, H, W)
    inside = row_in[:, None] & col_in[None, :]

    x = tl.load(src_ptr + b * ss_b + c * ss_c + tile_offsets(i, j, k, ss_d, ss_h, ss_w), mask=inside, other=0)
    if HAS_MASK:
        x = x * tl.load(mask_ptr + tile_offsets(i, j, k, sm_d, sm_h, sm_w), mask=inside, other=0)
    if HAS_WINDOW:
        win = tl.load(win_ptr + tile_offsets(i, j, k, sw_d, sw_h, sw_w), mask=inside, other=0)
        x = x * win
    dp = dest_ptr + b * sd_b + c * sd_c + tile_offsets(d, h, w, sd_d, sd_h, sd_w)
    y = tl.load(dp, mask=inside, other=0) + x
    tl.store(dp, y, mask=inside)
    if HAS_WEIGHT:
        if bc == 0:
            tp = wt_ptr + tile_offsets(d, h, w, st_d, st_h, st_w)
            wt = tl.load(tp, mask=inside, other=0)
            if HAS_WINDOW:
                wt = wt + win
            else:
                wt = wt + 1
            tl.store(tp, wt, mask=inside)


@triton.jit
def _masked_scatter_add_backward_kernel(
    gout_ptr, src_ptr, mask_ptr, win_ptr, gsrc_ptr, gmask_ptr,
    BC, C, D, H, W,
    sg_b, sg_c, sg_d, sg_h, sg_w,
    ss_b, ss_c, ss_d, ss_h, ss_w,
    sm_d, sm_h, sm_w,
    sw_d, sw_h, sw_w,
    od, oh, ow,
    pd, ph, pw,
    Pd, Ph, Pw,
    n_wb, bc_start, bc_per_prog,
    HAS_MASK: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    NEED_GS: tl.constexpr,
    NEED_GM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    # Tiles cover the whole padded (Pd*Ph, Pw) src grid so grad_src's zero
    # padding is written here too (no separate memset).  grad_src is the masked
    # gather of grad_out; grad_mask reduces over all (b, c) inside one program.
    bc_lo, bc_hi = bc_span(bc_per_prog, bc_start, BC)
    r, k, i, j, d, h, w = tile_coords(n_wb, Ph, od, oh, ow, BLOCK_R, BLOCK_W)
    row_patch = (i < pd) & (j < ph)
    col_patch = k < pw
    row_in, col_in = tile_inside(row_patch, col_patch, d, h, w, D, H, W)
    inside = row_in[:, None] & col_in[None, :]
    store_mask = (i < Pd)[:, None] & (k < Pw)[None, :]

    if HAS_MASK:
        m = tl.load(mask_ptr + tile_offsets(i, j, k, sm_d, sm_h, sm_w), mask=inside, other=0)
    if HAS_WINDOW:
        win = tl.load(win_ptr + tile_offsets(i, j, k, sw_d, sw_h, sw_w), mask=inside, other=0)
    acc = tl.full([BLOCK_R, BLOCK_W], 0, dtype=gout_ptr.dtype.element_ty)
    g_sp = tile_offsets(d, h, w, sg_d, sg_h, sg_w)
    s_sp = tile_offsets(i, j, k, ss_d, ss_h, ss_w)
    gs_sp = (r * Pw)[:, None] + k[None, :]
    for bc in range(bc_lo, bc_hi):
        b = bc // C
        c = bc % C
        g = tl.load(gout_ptr + b * sg_b + c * sg_c + g_sp, mask=inside, other=0)
        if HAS_WINDOW:
            g = g * win
        if NEED_GS:
            gs = g
            if HAS_MASK:
                gs = g * m
            tl.store(gsrc_ptr + bc * Pd * Ph * Pw + gs_sp, gs, mask=store_mask)
        if NEED_GM:
            s = tl.load(src_ptr + b * ss_b + c * ss_c + s_sp, mask=inside, other=0)
            acc += g * s
    if NEED_GM:
        tl.store(gmask_ptr + ((i * ph + j) * pw)[:, None] + k[None, :], acc,
                 mask=row_patch[:, None] & col_patch[None, :])


# --------------------------------------------------------------------------- #
# launchers
# --------------------------------------------------------------------------- #
def masked_scatter_add_forward(dest: torch.Tensor, src: torch.Tensor, offset, patch_shape,
                               mask: Optional[torch.Tensor] = None, window: Optional[torch.Tensor] = None,
                               weight: Optional[torch.Tensor] = None, inplace: bool = False):
    """Triton launcher. Returns ``(out, out_weight | None)``.

    ``inplace=False``: ``out``/``out_weight`` are new contiguous tensors (one copy of
    ``dest``/``weight`` + the fused patch update).  ``inplace=True``: ``dest`` and
    ``weight`` are updated in place and returned (no autograd).
    """
    offset, patch = tuple(offset), tuple(patch_shape)
    out, out_w = _outputs(dest, weight, inplace)
    B, C, D, H, W = dest.shape
    if B * C == 0 or overlap(offset, patch, (D, H, W)) is None:
        if out_w is not None:
            # the weight map is updated once per patch, independent of (B, C)
            _add_window_(out_w, offset, patch, window)
        return out, out_w
    m = mask if mask is not None else src
    win = window if window is not None else src
    wt = out_w if out_w is not None else out
    zeros3 = (0, 0, 0)
    grid = tile_grid(patch[0] * patch[1], patch[2])
    with device_ctx(dest):
        for start, count in chunks(B * C):
            _masked_scatter_add_forward_kernel[(grid.n_tiles, count)](
                out, src, m, win, wt, C, D, H, W,
                *out.stride(), *src.stride(),
                *(mask.stride() if mask is not None else zeros3),
                *(window.stride() if window is not None else zeros3),
                *(out_w.stride() if out_w is not None else zeros3),
                *offset, *patch, grid.n_wb, start,
                HAS_MASK=mask is not None, HAS_WINDOW=window is not None, HAS_WEIGHT=out_w is not None,
                BLOCK_R=grid.block_r, BLOCK_W=grid.block_w, num_warps=grid.num_warps,
            )
    return out, out_w


def masked_scatter_add_backward(grad_out: torch.Tensor, src: torch.Tensor, offset, patch_shape,
                                mask: Optional[torch.Tensor] = None, window: Optional[torch.Tensor] = None,
                                need_src_grad: bool = True, need_mask_grad: bool = False):
    """Triton launcher of the backward w.r.t. ``src`` and ``mask``.

    Returns ``(grad_src | None, grad_mask | None)`` with ``grad_src`` (shape of
    ``src``, contiguous) ``= pad(grad_out[patch] * window * mask)`` and
    ``grad_mask = sum_{b,c} grad_out[patch] * window * src[..., :pd, :ph, :pw]``.
    (``grad_dest = grad_out`` and ``grad_weight = grad_out_weight`` are identities.)
    """
    offset, patch = tuple(offset), tuple(patch_shape)
    B, C, D, H, W = grad_out.shape
    Pd, Ph, Pw = src.shape[2:]
    gs = torch.empty((B, C, Pd, Ph, Pw), dtype=src.dtype, device=src.device) if need_src_grad else None
    gm = torch.empty(patch, dtype=src.dtype, device=src.device) if need_mask_grad else None
    if not (need_src_grad or need_mask_grad):
        return gs, gm
    if B * C == 0 or overlap(offset, patch, (D, H, W)) is None:
        for t in (gs, gm):
            if t is not None:
                t.zero_()
        return gs, gm
    m = mask if mask is not None else src
    win = window if window is not None else src
    zeros3 = (0, 0, 0)
    grid = tile_grid(Pd * Ph, Pw)
    per_prog, launches = bc_launches(B * C, reduce=need_mask_grad)
    with device_ctx(src):
        for start, count in launches:
            _masked_scatter_add_backward_kernel[(grid.n_tiles, count)](
                grad_out, src, m, win, gs if gs is not None else src, gm if gm is not None else src,
                B * C, C, D, H, W,
                *grad_out.stride(), *src.stride(),
                *(mask.stride() if mask is not None else zeros3),
                *(window.stride() if window is not None else zeros3),
                *offset, *patch, Pd, Ph, Pw, grid.n_wb, start, per_prog,
                HAS_MASK=mask is not None, HAS_WINDOW=window is not None,
                NEED_GS=need_src_grad, NEED_GM=need_mask_grad,
                BLOCK_R=grid.block_r, BLOCK_W=grid.block_w, num_warps=grid.num_warps,
            )
    return gs, gm


# --------------------------------------------------------------------------- #
# pure PyTorch twins
# --------------------------------------------------------------------------- #
def masked_scatter_add_ref(dest: torch.Tensor, src: torch.Tensor, offset, patch_shape,
                           mask: Optional[torch.Tensor] = None, window: Optional[torch.Tensor] = None,
                           weight: Optional[torch.Tensor] = None, inplace: bool = False):
    """Reference twin of :func:`masked_scatter_add_forward` (differentiable by autograd
    when ``inplace=False``)."""
    offset, patch = tuple(offset), tuple(patch_shape)
    out, out_w = _outputs(dest, weight, inplace)
    ov = overlap(offset, patch, dest.shape[2:])
    if ov is None:
        return out, out_w
    (a0, a1), (b0, b1), (c0, c1) = ov
    od, oh, ow = offset
    ps = (slice(a0, a1), slice(b0, b1), slice(c0, c1))
    vs = (slice(od + a0, od + a1), slice(oh + b0, oh + b1), slice(ow + c0, ow + c1))
    x = src[(slice(None), slice(None)) + ps]
    if mask is not None:
        x = x * mask[ps]
    if window is not None:
        x = x * window[ps]
    out[(slice(None), slice(None)) + vs] += x
    if out_w is not None:
        _add_window_(out_w, offset, patch, window)
    return out, out_w


def masked_scatter_add_backward_ref(grad_out: torch.Tensor, src: torch.Tensor, offset, patch_shape,
                                    mask: Optional[torch.Tensor] = None, window: Optional[torch.Tensor] = None,
                                    need_src_grad: bool = True, need_mask_grad: bool = False):
    """Reference twin of :func:`masked_scatter_add_backward`."""
    offset, patch = tuple(offset), tuple(patch_shape)
    gs = src.new_zeros(src.shape) if need_src_grad else None
    gm = src.new_zeros(patch) if need_mask_grad else None
    ov = overlap(offset, patch, grad_out.shape[2:])
    if ov is None:
        return gs, gm
    (a0, a1), (b0, b1), (c0, c1) = ov
    od, oh, ow = offset
    ps = (slice(a0, a1), slice(b0, b1), slice(c0, c1))
    vs = (slice(None), slice(None), slice(od + a0, od + a1), slice(oh + b0, oh + b1), slice(ow + c0, ow + c1))
    g = grad_out[vs]
    if window is not None:
        g = g * window[ps]
    if need_src_grad:
        gs[(slice(None), slice(None)) + ps] = g * mask[ps] if mask is not None else g
    if need_mask_grad:
        gm[ps] = (g * src[(slice(None), slice(None)) + ps]).sum(dim=(0, 1))
    return gs, gm
