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

The kernels use only ``tl`` builtins (no ``@triton.jit`` helpers from
``triton.language.standard`` such as ``tl.cdiv``/``tl.zeros``): those helpers are
decorated when triton itself is imported, so they break under the CPU interpreter
whenever triton was imported before ``TRITON_INTERPRET=1`` was set.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import chunks, device_ctx, overlap, tile

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
    pid = tl.program_id(0).to(tl.int64)
    bc = tl.program_id(1).to(tl.int64) + bc_start
    rb = pid // n_wb
    wb = pid % n_wb
    b = bc // C
    c = bc % C

    r = rb * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # flattened (i, j)
    k = wb * BLOCK_W + tl.arange(0, BLOCK_W).to(tl.int64)
    i = r // Ph
    j = r % Ph
    d = od + i
    h = oh + j
    w = ow + k

    row_store = i < Pd
    col_store = k < Pw
    row_load = row_store & (i < pd) & (j < ph) & (d >= 0) & (d < D) & (h >= 0) & (h < H)
    col_load = (k < pw) & (w >= 0) & (w < W)
    load_mask = row_load[:, None] & col_load[None, :]

    v_off = b * sv_b + c * sv_c + (d * sv_d + h * sv_h)[:, None] + (w * sv_w)[None, :]
    x = tl.load(vol_ptr + v_off, mask=load_mask, other=0)
    if HAS_MASK:
        m_off = (i * sm_d + j * sm_h)[:, None] + (k * sm_w)[None, :]
        x = x * tl.load(mask_ptr + m_off, mask=load_mask, other=0)

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
    pid = tl.program_id(0).to(tl.int64)
    bc_lo = tl.program_id(1).to(tl.int64) * bc_per_prog + bc_start
    bc_hi = tl.minimum(bc_lo + bc_per_prog, BC)
    rb = pid // n_wb
    wb = pid % n_wb

    r = rb * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    k = wb * BLOCK_W + tl.arange(0, BLOCK_W).to(tl.int64)
    i = r // ph
    j = r % ph
    d = od + i
    h = oh + j
    w = ow + k
    row_patch = i < pd
    col_patch = k < pw
    row_in = row_patch & (d >= 0) & (d < D) & (h >= 0) & (h < H)
    col_in = col_patch & (w >= 0) & (w < W)
    inside = row_in[:, None] & col_in[None, :]

    if HAS_MASK:
        m = tl.load(mask_ptr + (i * sm_d + j * sm_h)[:, None] + (k * sm_w)[None, :], mask=inside, other=0)
    acc = tl.full([BLOCK_R, BLOCK_W], 0, dtype=gout_ptr.dtype.element_ty)
    g_sp = (i * sg_d + j * sg_h)[:, None] + (k * sg_w)[None, :]
    v_sp = (d * sv_d + h * sv_h)[:, None] + (w * sv_w)[None, :]
    gv_sp = (d * sgv_d + h * sgv_h)[:, None] + (w * sgv_w)[None, :]
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
    br, bw, nw = tile(pad[0] * pad[1], pad[2])
    n_wb = triton.cdiv(pad[2], bw)
    n_tiles = triton.cdiv(pad[0] * pad[1], br) * n_wb
    with device_ctx(volume):
        for start, count in chunks(B * C):
            _masked_gather_forward_kernel[(n_tiles, count)](
                volume, m, out, C, D, H, W, *volume.stride(), *sm, *offset, *patch, *pad, n_wb, start,
                HAS_MASK=mask is not None, BLOCK_R=br, BLOCK_W=bw, num_warps=nw,
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
    br, bw, nw = tile(patch[0] * patch[1], patch[2])
    n_wb = triton.cdiv(patch[2], bw)
    n_tiles = triton.cdiv(patch[0] * patch[1], br) * n_wb
    # mask grad: one program reduces over all (b, c); otherwise parallel over (b, c)
    per_prog = B * C if need_mask_grad else 1
    launches = [(0, 1)] if need_mask_grad else list(chunks(B * C))
    with device_ctx(volume):
        for start, count in launches:
            _masked_gather_backward_kernel[(n_tiles, count)](
                grad_out, volume, gvt, gmt, m,
                B * C, C, D, H, W,
                *grad_out.stride(), *volume.stride(), *gvt.stride(), *sm,
                *offset, *patch, n_wb, start, per_prog,
                HAS_MASK=mask is not None, NEED_GV=need_volume_grad, NEED_GM=need_mask_grad,
                BLOCK_R=br, BLOCK_W=bw, num_warps=nw,
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
