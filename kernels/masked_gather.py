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

This module also holds the small helpers shared by the other kernel modules
(argument validation, patch/volume overlap, tile sizes).

The kernels use only ``tl`` builtins (no ``@triton.jit`` helpers from
``triton.language.standard`` such as ``tl.cdiv``/``tl.zeros``): those helpers are
decorated when triton itself is imported, so they break under the CPU interpreter
whenever triton was imported before ``TRITON_INTERPRET=1`` was set.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Iterator, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

__all__ = [
    "masked_gather_forward",
    "masked_gather_backward",
    "masked_gather_ref",
    "masked_gather_backward_ref",
    "check_masked_gather_args",
]

# CUDA limits grid axes 1 and 2 to 65535 programs; the batch*channel axis is
# launched in chunks of at most this size.
_MAX_GRID_YZ = 65535
_REAL_DTYPES = (torch.float32, torch.float64)

Triple = Tuple[int, int, int]


# --------------------------------------------------------------------------- #
# shared helpers (also imported by masked_scatter.py and spectral_filter.py)
# --------------------------------------------------------------------------- #
def _as_triple(value, name: str, *, positive: bool = False) -> Triple:
    """Normalise a 3-sequence of Python ints; raise TypeError/ValueError otherwise."""
    if type(value) in (tuple, list) and len(value) == 3 and all(type(v) is int for v in value):
        out = tuple(value)  # fast path (this runs on every call)
        if positive and (out[0] <= 0 or out[1] <= 0 or out[2] <= 0):
            raise ValueError(f"{name} entries must be positive, got {out}")
        return out
    if isinstance(value, torch.Tensor) or not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{name} must be a tuple/list of 3 ints, got {type(value).__name__}")
    if len(value) != 3:
        raise ValueError(f"{name} must have exactly 3 entries (d, h, w), got {len(value)}: {tuple(value)}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} entries must be ints, got {type(v).__name__} in {tuple(value)}")
        out.append(int(v))
    if positive and any(v <= 0 for v in out):
        raise ValueError(f"{name} entries must be positive, got {tuple(out)}")
    return (out[0], out[1], out[2])


def _check_tensor(t, name: str, ndim: int, dtypes=_REAL_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = "/".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}, got {t.dtype}")


def _check_like(t, name: str, ref: torch.Tensor, ref_name: str, shape) -> None:
    """``t`` must be a tensor with ``ref``'s dtype and device and exactly ``shape``."""
    _check_tensor(t, name, len(shape))
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the same dtype as {ref_name} ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _overlap(offset: Triple, patch: Triple, vol: Sequence[int]):
    """Per-dim patch index ranges ``(p0, p1)`` whose voxel ``offset + p`` lies in
    ``[0, vol)``; ``None`` if the patch misses the volume entirely."""
    ranges = []
    for o, p, n in zip(offset, patch, vol):
        p0, p1 = max(0, -o), min(p, n - o)
        if p1 <= p0:
            return None
        ranges.append((p0, p1))
    return ranges


def _tile(rows: int, cols: int, max_tile: int = 4096):
    """(BLOCK_R, BLOCK_W, num_warps) for a 2-D [rows, cols] tile, <= max_tile elements."""
    bw = min(triton.next_power_of_2(max(cols, 1)), 512)
    br = max(1, min(triton.next_power_of_2(max(rows, 1)), max_tile // bw))
    return br, bw, (8 if br * bw >= 2048 else 4)


def _chunks(n: int, size: Optional[int] = None) -> Iterator[Tuple[int, int]]:
    """(start, count) chunks of the (b, c) grid axis; ``size`` defaults to the
    module-level ``_MAX_GRID_YZ`` (read at call time so tests can shrink it)."""
    size = size or _MAX_GRID_YZ
    for start in range(0, n, size):
        yield start, min(size, n - start)


def _device_ctx(t: torch.Tensor):
    """Make ``t``'s GPU current for the launch (no-op on CPU or if it already is)."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def is_interpreted(kernel) -> bool:
    """True if ``kernel`` was decorated while TRITON_INTERPRET=1 (runs on CPU)."""
    return type(kernel).__name__ == "InterpretedFunction"


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #
def check_masked_gather_args(volume, offset, patch_shape, pad_shape, mask=None):
    """Validate and normalise; returns ``(offset, patch_shape, pad_shape)`` triples."""
    _check_tensor(volume, "volume", 5)
    offset = _as_triple(offset, "offset")
    patch = _as_triple(patch_shape, "patch_shape", positive=True)
    pad = _as_triple(pad_shape, "pad_shape", positive=True)
    if any(P < p for P, p in zip(pad, patch)):
        raise ValueError(f"pad_shape must be >= patch_shape in every dim, got pad_shape={pad}, patch_shape={patch}")
    if mask is not None:
        _check_like(mask, "mask", volume, "volume", patch)
    return offset, patch, pad


def _check_grad_out(grad_out, volume, patch, name="grad_out"):
    B, C = volume.shape[:2]
    _check_tensor(grad_out, name, 5)
    if grad_out.dtype != volume.dtype:
        raise TypeError(f"{name} must have volume's dtype ({volume.dtype}), got {grad_out.dtype}")
    if grad_out.device != volume.device:
        raise ValueError(f"{name} must be on volume's device ({volume.device}), got {grad_out.device}")
    if tuple(grad_out.shape[:2]) != (B, C) or any(P < p for P, p in zip(grad_out.shape[2:], patch)):
        raise ValueError(f"{name} must have shape (B={B}, C={C}, Pd>={patch[0]}, Ph>={patch[1]}, Pw>={patch[2]}), "
                         f"got {tuple(grad_out.shape)}")


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
    offset, patch, pad = check_masked_gather_args(volume, offset, patch_shape, pad_shape, mask)
    B, C, D, H, W = volume.shape
    out = torch.empty((B, C) + pad, dtype=volume.dtype, device=volume.device)
    if out.numel() == 0:
        return out
    m = mask if mask is not None else volume  # dummy pointer when HAS_MASK=False
    sm = mask.stride() if mask is not None else (0, 0, 0)
    br, bw, nw = _tile(pad[0] * pad[1], pad[2])
    n_wb = triton.cdiv(pad[2], bw)
    n_tiles = triton.cdiv(pad[0] * pad[1], br) * n_wb
    with _device_ctx(volume):
        for start, count in _chunks(B * C):
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
    pad = tuple(grad_out.shape[2:]) if isinstance(grad_out, torch.Tensor) and grad_out.ndim == 5 else (1, 1, 1)
    offset, patch, _ = check_masked_gather_args(volume, offset, patch_shape, pad, mask)
    _check_grad_out(grad_out, volume, patch)
    B, C, D, H, W = volume.shape
    gv = torch.zeros(volume.shape, dtype=volume.dtype, device=volume.device) if need_volume_grad else None
    gm = torch.empty(patch, dtype=volume.dtype, device=volume.device) if need_mask_grad else None
    if not (need_volume_grad or need_mask_grad):
        return gv, gm
    if B * C == 0 or _overlap(offset, patch, (D, H, W)) is None:
        if gm is not None:
            gm.zero_()
        return gv, gm
    m = mask if mask is not None else volume
    sm = mask.stride() if mask is not None else (0, 0, 0)
    gvt = gv if gv is not None else volume
    gmt = gm if gm is not None else volume
    br, bw, nw = _tile(patch[0] * patch[1], patch[2])
    n_wb = triton.cdiv(patch[2], bw)
    n_tiles = triton.cdiv(patch[0] * patch[1], br) * n_wb
    # mask grad: one program reduces over all (b, c); otherwise parallel over (b, c)
    per_prog = B * C if need_mask_grad else 1
    chunks = [(0, 1)] if need_mask_grad else list(_chunks(B * C))
    with _device_ctx(volume):
        for start, count in chunks:
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
    offset, patch, pad = check_masked_gather_args(volume, offset, patch_shape, pad_shape, mask)
    B, C = volume.shape[:2]
    out = volume.new_zeros((B, C) + pad)
    ov = _overlap(offset, patch, volume.shape[2:])
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
    pad = tuple(grad_out.shape[2:]) if isinstance(grad_out, torch.Tensor) and grad_out.ndim == 5 else (1, 1, 1)
    offset, patch, _ = check_masked_gather_args(volume, offset, patch_shape, pad, mask)
    _check_grad_out(grad_out, volume, patch)
    gv = volume.new_zeros(volume.shape) if need_volume_grad else None
    gm = volume.new_zeros(patch) if need_mask_grad else None
    ov = _overlap(offset, patch, volume.shape[2:])
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
