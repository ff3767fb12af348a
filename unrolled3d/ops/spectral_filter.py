"""``spectral_filter``: ``spec * lam * scale`` on an FFT spectrum, as a registered op.

``torch.ops.unrolled3d.spectral_filter`` and its differentiable backward run the Triton launcher
or the PyTorch twin of :mod:`unrolled3d.kernels.spectral_filter` (see
:mod:`unrolled3d.ops.dispatch`). The public :func:`spectral_filter` validates once.
"""
from __future__ import annotations

import numbers
from typing import Tuple

import torch
from torch import Tensor

from .._validation import check_tensor
from ..kernels import spectral_filter as _kernel
from .dispatch import or_empty, use_triton

__all__ = ["spectral_filter"]

_COMPLEX_DTYPES = (torch.complex64, torch.complex128)
_LAM_DTYPES = {
    torch.complex64: (torch.float32, torch.complex64),
    torch.complex128: (torch.float64, torch.complex128),
}


@torch.library.custom_op("unrolled3d::spectral_filter", mutates_args=())
def _spectral_filter_op(spec: Tensor, lam: Tensor, scale: float) -> Tensor:
    fn = _kernel.spectral_filter_forward if use_triton(spec) else _kernel.spectral_filter_ref
    return fn(spec, lam, scale)


@_spectral_filter_op.register_fake
def _(spec, lam, scale):
    torch._check(tuple(lam.shape) == tuple(spec.shape[2:]), lambda: "lam must have spec's last three dims")
    return spec.new_empty(spec.shape)


@torch.library.custom_op("unrolled3d::spectral_filter_backward", mutates_args=())
def _spectral_filter_backward_op(grad_out: Tensor, spec: Tensor, lam: Tensor, scale: float,
                                 need_spec_grad: bool, need_lam_grad: bool) -> Tuple[Tensor, Tensor]:
    fn = _kernel.spectral_filter_backward if use_triton(spec) else _kernel.spectral_filter_backward_ref
    gs, gl = fn(grad_out, spec, lam, scale, need_spec_grad, need_lam_grad)
    return or_empty(gs, spec), or_empty(gl, lam)


@_spectral_filter_backward_op.register_fake
def _(grad_out, spec, lam, scale, need_spec_grad, need_lam_grad):
    gs = spec.new_empty(spec.shape) if need_spec_grad else spec.new_empty(0)
    gl = lam.new_empty(lam.shape) if need_lam_grad else lam.new_empty(0)
    return gs, gl


def _sf_setup(ctx, inputs, output):
    spec, lam, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(spec, lam)


def _sf_backward(ctx, grad):
    spec, lam = ctx.saved_tensors
    need_s, need_l = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_s or need_l):
        return None, None, None
    gs, gl = torch.ops.unrolled3d.spectral_filter_backward(grad, spec, lam, ctx.scale, need_s, need_l)
    return (gs if need_s else None), (gl if need_l else None), None


_spectral_filter_op.register_autograd(_sf_backward, setup_context=_sf_setup)


def _sfb_setup(ctx, inputs, output):
    grad_out, spec, lam, scale, need_s, need_l = inputs
    ctx.scale = scale
    ctx.need = (need_s, need_l)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_out, spec, lam)


def _sfb_backward(ctx, h_s, h_l):
    # gs = s G conj(L),  gl = s sum_bc G conj(S)  (Re if L real); adjoints w.r.t. the
    # real inner product Re<a, b> (PyTorch's convention) give:
    #   dG = s h_s L + s S h_l,  dS = s G conj(h_l),  dL = s sum_bc G conj(h_s)
    G, S, L = ctx.saved_tensors
    sc = ctx.scale
    h_s = h_s if ctx.need[0] else None
    h_l = h_l if ctx.need[1] else None
    dG = dS = dL = None
    if ctx.needs_input_grad[0]:
        if h_s is not None:
            dG = torch.ops.unrolled3d.spectral_filter(h_s, L, sc)
        if h_l is not None:
            t = torch.ops.unrolled3d.spectral_filter(S, h_l, sc)
            dG = t if dG is None else dG + t
    if ctx.needs_input_grad[1] and h_l is not None:
        dS = torch.ops.unrolled3d.spectral_filter(G, torch.conj_physical(h_l), sc)
    if ctx.needs_input_grad[2] and h_s is not None:
        dL = torch.ops.unrolled3d.spectral_filter_backward(G, h_s, L, sc, False, True)[1]
    return dG, dS, dL, None, None, None


_spectral_filter_backward_op.register_autograd(_sfb_backward, setup_context=_sfb_setup)


def spectral_filter(spec: Tensor, lam: Tensor, scale: float = 1.0) -> Tensor:
    """``spec * lam * scale``, ``lam`` broadcast over batch and channels.

    Parameters
    ----------
    spec : torch.Tensor
        complex64/complex128 ``(B, C, Pd, Ph, Q)``: an rFFT half-spectrum (``Q = Pw // 2 + 1``)
        or a full spectrum (``Q = Pw``).
    lam : torch.Tensor
        Shape exactly ``(Pd, Ph, Q)``; real (float32/float64) or complex of the matching
        precision.
    scale : float
        Real Python number.

    Returns
    -------
    torch.Tensor
        Like ``spec``, contiguous. Differentiable w.r.t. ``spec`` and ``lam`` (PyTorch's complex
        convention; for a real ``lam`` its gradient is real).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.ops import spectral_filter
    >>> spec = torch.ones(1, 1, 1, 1, 2, dtype=torch.complex64)
    >>> spectral_filter(spec, torch.tensor([[[1.0, 2.0]]]), 0.5)
    tensor([[[[[0.5000+0.j, 1.0000+0.j]]]]])
    """
    check_tensor(spec, "spec", 5, _COMPLEX_DTYPES)
    if not isinstance(lam, torch.Tensor):
        raise TypeError(f"lam must be a torch.Tensor, got {type(lam).__name__}")
    allowed = _LAM_DTYPES[spec.dtype]
    if lam.dtype not in allowed:
        raise TypeError(f"lam must have dtype {allowed[0]} or {allowed[1]} to match spec ({spec.dtype}), got {lam.dtype}")
    if lam.device != spec.device:
        raise ValueError(f"lam must be on the same device as spec ({spec.device}), got {lam.device}")
    if tuple(lam.shape) != tuple(spec.shape[2:]):
        raise ValueError(f"lam must have shape (Pd, Ph, Q) = {tuple(spec.shape[2:])} (spec's last three dims), "
                         f"got {tuple(lam.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real Python number, got {type(scale).__name__}")
    return torch.ops.unrolled3d.spectral_filter(spec, lam, float(scale))
