"""Masked patch gather into a zero-padded FFT buffer.

``masked_gather(volume, offset, patch_shape, pad_shape, mask)`` reads the patch
``volume[..., od:od+pd, oh:oh+ph, ow:ow+pw]`` (the part that lies inside the
volume), multiplies it by ``mask`` and writes it to the *start* of a zero buffer
of shape ``(B, C, Pd, Ph, Pw)`` in one pass (no separate crop / multiply / pad
kernels, no full-volume copy even for strided volumes).

Layout (Liger-Kernel style):

* ``_masked_gather_forward_kernel`` / ``_masked_gather_backward_kernel``: Triton.
* ``masked_gather_forward`` / ``masked_gather_backward``: plain launchers.
* ``masked_gather_ref`` / ``masked_gather_backward_ref``: pure PyTorch twins with
  exactly the same semantics (used on CPU and as the test oracle).

Arguments are trusted: ``offset``, ``patch_shape`` and ``pad_shape`` are sequences of three
ints, tensors have the documented shapes (the registered op
:func:`unrolled3d.ops.masked_gather` validates them once).

The kernels use only ``tl`` builtins and the tile helpers of :mod:`._common` (see there why).
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
    "masked_gather_forward",
    "masked_gather_backward",
    "masked_gather_ref",
    "masked_gather_backward_ref",
]


# --------------------------------------------------------------------------- #
# Triton kernels
# --------------------------------------------------------------------------- #
@triton.jit
def _masked_gather_forward_kernel(
    vol_ptr, mask_ptr, out_ptr,
    C, D, H, W,
    sv_b, sv_c, sv_d, sv_h, sv_w,
    sm_d, sm_h, sm_w,
    od, oh, ow,
    pd, ph, pw,
    Pd, Ph, Pw,
    n_wb, bc_start,
    HAS_MASK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    # axis 0: [BLOCK_R rows of (i, j)] x [BLOCK_W cols k] tiles of the padded
    # output; axis 1: one (b, c) pair.  All index math in int64.
    bc = tl.program_id(1).to(tl.int64) + bc_start
    b = bc // C
    c = bc % C
    r, k, i, j, d, h, w = tile_coords(n_wb, Ph, od, oh, ow, BLOCK_R, BLOCK_W)
    row_store = i < Pd
    col_store = k < Pw
    row_load, col_load = tile_inside(row_store & (i < pd) & (j < ph), k < pw, d, h, w, D, H, W)
    load_mask = row_load[:, None] & col_load[None, :]

    x = tl.load(vol_ptr + b * sv_b + c * sv_c + tile_offsets(d, h, w, sv_d, sv_h, sv_w), mask=load_mask, other=0)
    if HAS_MASK:
        x = x * tl.load(mask_ptr + tile_offsets(i, j, k, sm_d, sm_h, sm_w), mask=load_mask, other=0)

    o_off = bc * Pd * Ph * Pw + (r * Pw)[:, None] + k[None, :]
    tl.store(out_ptr + o_off, x, mask=row_store[:, None] & col_store[None, :])


@triton.jit
def _masked_gather_backward_kernel(
    gout_ptr, vol_ptr, gvol_ptr, gmask_ptr, mask_ptr,
    BC, C, D, H, W,
    sg_b, sg_c, sg_d, sg_h, sg_w,
    sv_b, sv_c, sv_d, sv_h, sv_w,
    sgv_b, sgv_c, sgv_d, sgv_h, sgv_w,
    sm_d, sm_h, sm_w,
    od, oh, ow,
    pd, ph, pw,
    n_wb, bc_start, bc_per_prog,
    HAS_MASK: tl.constexpr,
    NEED_GV: tl.constexpr,
    NEED_GM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    # axis 0: tiles of the (pd*ph, pw) patch; axis 1: a chunk of (b, c) pairs
    # processed sequentially.  With NEED_GM one program owns *all* (b, c) of its
    # tile, so the mask gradient is a deterministic in-register reduction.
    bc_lo, bc_hi = bc_span(bc_per_prog, bc_start, BC)
    r, k, i, j, d, h, w = tile_coords(n_wb, ph, od, oh, ow, BLOCK_R, BLOCK_W)
    row_patch = i < pd
    col_patch = k < pw
    row_in, col_in = tile_inside(row_patch, col_patch, d, h, w, D, H, W)
    inside = row_in[:, None] & col_in[None, :]

    if HAS_MASK:
        m = tl.load(mask_ptr + tile_offsets(i, j, k, sm_d, sm_h, sm_w), mask=inside, other=0)
    acc = tl.full([BLOCK_R, BLOCK_W], 0, dtype=gout_ptr.dtype.element_ty)
    g_sp = tile_offsets(i, j, k, sg_d, sg_h, sg_w)
    v_sp = tile_offsets(d, h, w, sv_d, sv_h, sv_w)
    gv_sp = tile_offsets(d, h, w, sgv_d, sgv_h, sgv_w)
    for bc in range(bc_lo, bc_hi):
        b = bc // C
        c = bc % C
        g = tl.load(gout_ptr + b * sg_b + c * sg_c + g_sp, mask=inside, other=0)
        if NEED_GV:
            gv = g
            if HAS_MASK:
                gv = g * m
            tl.store(gvol_ptr + b * sgv_b + c * sgv_c + gv_sp, gv, mask=inside)
        if NEED_GM:
            v = tl.load(vol_ptr + b * sv_b + c * sv_c + v_sp, mask=inside, other=0)
            acc += g * v
    if NEED_GM:
        # every patch position is written (0 where the patch is outside the volume)
        tl.store(gmask_ptr + (r * pw)[:, None] + k[None, :], acc, mask=row_patch[:, None] & col_patch[None, :])


# --------------------------------------------------------------------------- #
# launchers
# --------------------------------------------------------------------------- #
def masked_gather_forward(volume: torch.Tensor, offset, patch_shape, pad_shape,
                          mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton launcher. Returns a new contiguous ``(B, C, *pad_shape)`` tensor."""
    offset, patch, pad = tuple(offset), tuple(patch_shape), tuple(pad_shape)
    B, C, D, H, W = volume.shape
    out = torch.empty((B, C) + pad, dtype=volume.dtype, device=volume.device)
    if out.numel() == 0:
        return out
    m = mask if mask is not None else volume  # dummy pointer when HAS_MASK=False
    sm = mask.stride() if mask is not None else (0, 0, 0)
    grid = tile_grid(pad[0] * pad[1], pad[2])
    with device_ctx(volume):
        for start, count in chunks(B * C):
            _masked_gather_forward_kernel[(grid.n_tiles, count)](
                volume, m, out, C, D, H, W, *volume.stride(), *sm, *offset, *patch, *pad, grid.n_wb, start,
                HAS_MASK=mask is not None, BLOCK_R=grid.block_r, BLOCK_W=grid.block_w, num_warps=grid.num_warps,
            )
    return out


def masked_gather_backward(grad_out: torch.Tensor, volume: torch.Tensor, offset, patch_shape,
                           mask: Optional[torch.Tensor] = None, need_volume_grad: bool = True,
                           need_mask_grad: bool = False):
    """Triton launcher for the adjoint. Returns ``(grad_volume | None, grad_mask | None)``.

    ``grad_volume`` is zero except on the patch region, where it is
    ``grad_out[..., :pd, :ph, :pw] * mask``; ``grad_mask[i,j,k] = sum_{b,c}
    grad_out[b,c,i,j,k] * volume[b,c,od+i,oh+j,ow+k]`` (0 outside the volume).
    ``mask`` only enters ``grad_volume``; ``grad_mask`` may be requested with mask=None.
    """
    offset, patch = tuple(offset), tuple(patch_shape)
    B, C, D, H, W = volume.shape
    gv = torch.zeros(volume.shape, dtype=volume.dtype, device=volume.device) if need_volume_grad else None
    gm = torch.empty(patch, dtype=volume.dtype, device=volume.device) if need_mask_grad else None
    if not (need_volume_grad or need_mask_grad):
        return gv, gm
    if B * C == 0 or overlap(offset, patch, (D, H, W)) is None:
        if gm is not None:
            gm.zero_()
        return gv, gm
    m = mask if mask is not None else volume
    sm = mask.stride() if mask is not None else (0, 0, 0)
    gvt = gv if gv is not None else volume
    gmt = gm if gm is not None else volume
    grid = tile_grid(patch[0] * patch[1], patch[2])
    per_prog, launches = bc_launches(B * C, reduce=need_mask_grad)
    with device_ctx(volume):
        for start, count in launches:
            _masked_gather_backward_kernel[(grid.n_tiles, count)](
                grad_out, volume, gvt, gmt, m,
                B * C, C, D, H, W,
                *grad_out.stride(), *volume.stride(), *gvt.stride(), *sm,
                *offset, *patch, grid.n_wb, start, per_prog,
                HAS_MASK=mask is not None, NEED_GV=need_volume_grad, NEED_GM=need_mask_grad,
                BLOCK_R=grid.block_r, BLOCK_W=grid.block_w, num_warps=grid.num_warps,
            )
    return gv, gm


# --------------------------------------------------------------------------- #
# pure PyTorch twins
# --------------------------------------------------------------------------- #
def masked_gather_ref(volume: torch.Tensor, offset, patch_shape, pad_shape,
                      mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Reference twin of :func:`masked_gather_forward` (differentiable by autograd)."""
    offset, patch, pad = tuple(offset), tuple(patch_shape), tuple(pad_shape)
    B, C = volume.shape[:2]
    out = volume.new_zeros((B, C) + pad)
    ov = overlap(offset, patch, volume.shape[2:])
    if ov is None:
        return out
    (a0, a1), (b0, b1), (c0, c1) = ov
    od, oh, ow = offset
    x = volume[:, :, od + a0:od + a1, oh + b0:oh + b1, ow + c0:ow + c1]
    if mask is not None:
        x = x * mask[a0:a1, b0:b1, c0:c1]
    out[:, :, a0:a1, b0:b1, c0:c1] = x
    return out


def masked_gather_backward_ref(grad_out: torch.Tensor, volume: torch.Tensor, offset, patch_shape,
                               mask: Optional[torch.Tensor] = None, need_volume_grad: bool = True,
                               need_mask_grad: bool = False):
    """Reference twin of :func:`masked_gather_backward`."""
    offset, patch = tuple(offset), tuple(patch_shape)
    gv = volume.new_zeros(volume.shape) if need_volume_grad else None
    gm = volume.new_zeros(patch) if need_mask_grad else None
    ov = overlap(offset, patch, volume.shape[2:])
    if ov is None:
        return gv, gm
    (a0, a1), (b0, b1), (c0, c1) = ov
    od, oh, ow = offset
    vs = (slice(None), slice(None), slice(od + a0, od + a1), slice(oh + b0, oh + b1), slice(ow + c0, ow + c1))
    g = grad_out[:, :, a0:a1, b0:b1, c0:c1]
    if need_volume_grad:
        gv[vs] = g * mask[a0:a1, b0:b1, c0:c1] if mask is not None else g
    if need_mask_grad:
        gm[a0:a1, b0:b1, c0:c1] = (g * volume[vs]).sum(dim=(0, 1))
    return gv, gm
