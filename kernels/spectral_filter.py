"""Diagonal spectral filter ``spec * lam * scale`` on an rFFT half-spectrum.

``spec`` is complex ``(B, C, Pd, Ph, Q)`` (``Q = Pw // 2 + 1``); ``lam`` is real
or complex with shape exactly ``(Pd, Ph, Q)`` and is broadcast over ``(B, C)``.
The kernels work on the ``torch.view_as_real`` interleaved (re, im) data: a
``[BLOCK, 2]`` tile is one contiguous, coalesced load, split into re/im with
``tl.split`` only when ``lam`` is complex.

Backward (PyTorch's complex-gradient convention, checked against autograd of
:func:`spectral_filter_ref` in the tests)::

    grad_spec = grad_out * conj(lam) * scale
    grad_lam  = sum_{B,C} grad_out * conj(spec) * scale      (real part if lam is real)

``scale`` reaches the kernels through a one-element tensor of the data's real
dtype: Triton would pass a Python float as fp32, which is too coarse for
float64/complex128 data.

Arguments are trusted (validated once by :func:`unrolled3d.ops.spectral_filter`).
Inputs whose inner three dims are not contiguous are copied by the launchers
(``B``/``C`` may have any strides); outputs are always new contiguous tensors.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import bc_launches, bc_span, chunks, device_ctx

__all__ = [
    "spectral_filter_forward",
    "spectral_filter_backward",
    "spectral_filter_ref",
    "spectral_filter_backward_ref",
]

_BLOCK = 1024


def _inner_contig(t: torch.Tensor) -> torch.Tensor:
    """Resolve conj/neg views; copy unless the inner three dims are contiguous."""
    t = t.resolve_conj().resolve_neg()
    if t.ndim == 5:
        Pd, Ph, Q = t.shape[2:]
        ok = all(st == want for st, n, want in zip(t.stride()[2:], t.shape[2:], (Ph * Q, Q, 1)) if n > 1)
    else:
        ok = t.is_contiguous()
    return t if ok else t.contiguous()


_SCALE_CACHE: "dict[tuple, torch.Tensor]" = {}
_SCALE_CACHE_SIZE = 32


def _scale_tensor(scale: float, spec: torch.Tensor) -> torch.Tensor:
    """One-element tensor holding ``scale`` in the data's real dtype, cached per
    (value, dtype, device) so repeated calls launch no fill kernel.  Never cached
    while a CUDA graph is being captured (the fill would only run at replay)."""
    rdt = torch.float32 if spec.dtype == torch.complex64 else torch.float64
    key = (float.hex(scale), rdt, spec.device)
    t = _SCALE_CACHE.get(key)
    if t is not None:
        return t
    t = torch.full((1,), scale, dtype=rdt, device=spec.device)
    if not (spec.is_cuda and torch.cuda.is_current_stream_capturing()):
        if len(_SCALE_CACHE) >= _SCALE_CACHE_SIZE:
            _SCALE_CACHE.pop(next(iter(_SCALE_CACHE)))
        _SCALE_CACHE[key] = t
    return t


# --------------------------------------------------------------------------- #
# Triton kernels
# --------------------------------------------------------------------------- #
@triton.jit
def _spectral_filter_forward_kernel(
    spec_ptr, lam_ptr, out_ptr, scale_ptr,
    N, C, ss_b, ss_c, bc_start,
    LAM_COMPLEX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # axis 0: BLOCK spectral positions of the flattened (Pd, Ph, Q) grid;
    # axis 1: one (b, c).  Pointers are to interleaved real data; strides in reals.
    pid = tl.program_id(0).to(tl.int64)
    bc = tl.program_id(1).to(tl.int64) + bc_start
    b = bc // C
    c = bc % C
    s = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    ok = s < N
    two = tl.arange(0, 2).to(tl.int64)
    ok2 = ok[:, None] & (two[None, :] < 2)
    e = s[:, None] * 2 + two[None, :]

    x = tl.load(spec_ptr + b * ss_b + c * ss_c + e, mask=ok2, other=0)
    sc = tl.load(scale_ptr)
    if LAM_COMPLEX:
        lam = tl.load(lam_ptr + e, mask=ok2, other=0)
        xr, xi = tl.split(x)
        lr, li = tl.split(lam)
        y = tl.join((xr * lr - xi * li) * sc, (xr * li + xi * lr) * sc)
    else:
        lam = tl.load(lam_ptr + s, mask=ok, other=0)
        y = x * lam[:, None] * sc
    tl.store(out_ptr + bc * N * 2 + e, y, mask=ok2)


@triton.jit
def _spectral_filter_backward_kernel(
    gout_ptr, spec_ptr, lam_ptr, gspec_ptr, glam_ptr, scale_ptr,
    N, BC, C, sg_b, sg_c, ss_b, ss_c, bc_start, bc_per_prog,
    LAM_COMPLEX: tl.constexpr,
    NEED_GS: tl.constexpr,
    NEED_GL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # axis 1 holds chunks of (b, c); with NEED_GL one program loops over all of
    # them so grad_lam is a deterministic in-register reduction (no atomics).
    pid = tl.program_id(0).to(tl.int64)
    bc_lo, bc_hi = bc_span(bc_per_prog, bc_start, BC)
    s = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    ok = s < N
    two = tl.arange(0, 2).to(tl.int64)
    ok2 = ok[:, None] & (two[None, :] < 2)
    e = s[:, None] * 2 + two[None, :]
    sc = tl.load(scale_ptr)
    if LAM_COMPLEX:
        lam = tl.load(lam_ptr + e, mask=ok2, other=0)
        lr, li = tl.split(lam)
    else:
        lr = tl.load(lam_ptr + s, mask=ok, other=0)

    acc_r = tl.full([BLOCK], 0, dtype=gout_ptr.dtype.element_ty)
    acc_i = tl.full([BLOCK], 0, dtype=gout_ptr.dtype.element_ty)
    for bc in range(bc_lo, bc_hi):
        b = bc // C
        c = bc % C
        g = tl.load(gout_ptr + b * sg_b + c * sg_c + e, mask=ok2, other=0)
        if NEED_GS:
            if LAM_COMPLEX:
                gr, gi = tl.split(g)
                # g * conj(lam)
                gs = tl.join((gr * lr + gi * li) * sc, (gi * lr - gr * li) * sc)
            else:
                gs = g * lr[:, None] * sc
            tl.store(gspec_ptr + bc * N * 2 + e, gs, mask=ok2)
        if NEED_GL:
            x = tl.load(spec_ptr + b * ss_b + c * ss_c + e, mask=ok2, other=0)
            gr2, gi2 = tl.split(g)
            xr, xi = tl.split(x)
            # g * conj(x)
            acc_r += gr2 * xr + gi2 * xi
            if LAM_COMPLEX:
                acc_i += gi2 * xr - gr2 * xi
    if NEED_GL:
        if LAM_COMPLEX:
            tl.store(glam_ptr + e, tl.join(acc_r * sc, acc_i * sc), mask=ok2)
        else:
            tl.store(glam_ptr + s, acc_r * sc, mask=ok)


# --------------------------------------------------------------------------- #
# launchers
# --------------------------------------------------------------------------- #
def spectral_filter_forward(spec: torch.Tensor, lam: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Triton launcher: new contiguous ``spec * lam * scale``."""
    scale = float(scale)
    spec = _inner_contig(spec)
    lam = _inner_contig(lam)
    B, C = spec.shape[:2]
    N = spec.shape[2] * spec.shape[3] * spec.shape[4]
    out = torch.empty(spec.shape, dtype=spec.dtype, device=spec.device)
    if out.numel() == 0:
        return out
    spec_r, out_r = torch.view_as_real(spec), torch.view_as_real(out)
    lam_r = torch.view_as_real(lam) if lam.is_complex() else lam
    sc = _scale_tensor(scale, spec)
    grid0 = triton.cdiv(N, _BLOCK)
    with device_ctx(spec):
        for start, count in chunks(B * C):
            _spectral_filter_forward_kernel[(grid0, count)](
                spec_r, lam_r, out_r, sc, N, C, spec_r.stride(0), spec_r.stride(1), start,
                LAM_COMPLEX=lam.is_complex(), BLOCK=_BLOCK, num_warps=8,
            )
    return out


def spectral_filter_backward(grad_out: torch.Tensor, spec: torch.Tensor, lam: torch.Tensor, scale: float = 1.0,
                             need_spec_grad: bool = True, need_lam_grad: bool = True):
    """Triton launcher of the backward. Returns ``(grad_spec | None, grad_lam | None)``."""
    scale = float(scale)
    grad_out, spec, lam = _inner_contig(grad_out), _inner_contig(spec), _inner_contig(lam)
    B, C = spec.shape[:2]
    N = spec.shape[2] * spec.shape[3] * spec.shape[4]
    gs = torch.empty(spec.shape, dtype=spec.dtype, device=spec.device) if need_spec_grad else None
    gl = torch.empty(lam.shape, dtype=lam.dtype, device=lam.device) if need_lam_grad else None
    if not (need_spec_grad or need_lam_grad) or N == 0:
        return gs, gl
    if B * C == 0:
        if gl is not None:
            gl.zero_()
        return gs, gl
    g_r, spec_r = torch.view_as_real(grad_out), torch.view_as_real(spec)
    lam_r = torch.view_as_real(lam) if lam.is_complex() else lam
    gs_r = torch.view_as_real(gs) if gs is not None else g_r
    gl_t = gl if gl is not None else lam
    gl_r = torch.view_as_real(gl_t) if gl_t.is_complex() else gl_t
    sc = _scale_tensor(scale, spec)
    per_prog, launches = bc_launches(B * C, reduce=need_lam_grad)
    with device_ctx(spec):
        for start, count in launches:
            _spectral_filter_backward_kernel[(triton.cdiv(N, _BLOCK), count)](
                g_r, spec_r, lam_r, gs_r, gl_r, sc,
                N, B * C, C, g_r.stride(0), g_r.stride(1), spec_r.stride(0), spec_r.stride(1), start, per_prog,
                LAM_COMPLEX=lam.is_complex(), NEED_GS=need_spec_grad, NEED_GL=need_lam_grad,
                BLOCK=_BLOCK, num_warps=8,
            )
    return gs, gl


# --------------------------------------------------------------------------- #
# pure PyTorch twins
# --------------------------------------------------------------------------- #
def spectral_filter_ref(spec: torch.Tensor, lam: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Reference twin (differentiable by autograd): ``spec * lam * scale``."""
    return (spec * lam * scale).contiguous()


def spectral_filter_backward_ref(grad_out: torch.Tensor, spec: torch.Tensor, lam: torch.Tensor, scale: float = 1.0,
                                 need_spec_grad: bool = True, need_lam_grad: bool = True):
    """Reference twin of :func:`spectral_filter_backward`."""
    gs = (grad_out * torch.conj_physical(lam) * scale).contiguous() if need_spec_grad else None
    gl: Optional[torch.Tensor] = None
    if need_lam_grad:
        gl = (grad_out * torch.conj_physical(spec)).sum(dim=(0, 1)) * scale
        gl = (gl if lam.is_complex() else gl.real).contiguous()
    return gs, gl
