"""``spectral_filter``: ``spec * lam * scale`` on an FFT spectrum, as a registered op.

``torch.ops.unrolled3d.spectral_filter`` and its differentiable backward run the Triton launcher
or the PyTorch twin of :mod:`unrolled3d.kernels.spectral_filter` (see
:mod:`unrolled3d.ops.dispatch`). This module holds their kernels' calls, fake kernels and
derivative formulas (the rest is :func:`~unrolled3d.ops._define.define_op`'s), and the public
:func:`spectral_filter`, which validates once.
"""
from __future__ import annotations

import numbers
from typing import Tuple

import torch
from torch import Tensor

from .._validation import check_tensor
from ..kernels import spectral_filter as _kernel
from ._define import Fold, RegisteredOp, define_bilinear_backward, define_op, or_empty, product_rule
from ._precision import COMPLEX_LOW_PRECISION, LOW_PRECISION
from .dispatch import implementation

__all__ = ["spectral_filter"]

_COMPLEX_DTYPES = (torch.complex64, torch.complex128, *COMPLEX_LOW_PRECISION)
# lam's dtypes per spec dtype: the matching precision; low precision (computed in float32 /
# complex64) goes with complex64 and complex32 spectra
_LOW = (*LOW_PRECISION, *COMPLEX_LOW_PRECISION)
_LAM_DTYPES = {
    torch.complex64: (torch.float32, torch.complex64, *_LOW),
    torch.complex32: (torch.float32, torch.complex64, *_LOW),
    torch.complex128: (torch.float64, torch.complex128),
}


# --------------------------------------------------------------------------- kernels' calls
def _filter(spec: Tensor, lam: Tensor, scale: float) -> Tensor:
    return implementation(spec, _kernel.spectral_filter_forward, _kernel.spectral_filter_ref)(spec, lam, scale)


def _filter_fake(spec, lam, scale):
    torch._check(tuple(lam.shape) == tuple(spec.shape[2:]), lambda: "lam must have spec's last three dims")
    return spec.new_empty(spec.shape)


def _filter_backward(grad_out: Tensor, spec: Tensor, lam: Tensor, scale: float, need_spec_grad: bool,
                     need_lam_grad: bool) -> Tuple[Tensor, Tensor]:
    fn = implementation(spec, _kernel.spectral_filter_backward, _kernel.spectral_filter_backward_ref)
    gs, gl = fn(grad_out, spec, lam, scale, need_spec_grad, need_lam_grad)
    return or_empty(gs, spec), or_empty(gl, lam)


def _filter_backward_fake(grad_out, spec, lam, scale, need_spec_grad, need_lam_grad):
    gs = spec.new_empty(spec.shape) if need_spec_grad else spec.new_empty(0)
    gl = lam.new_empty(lam.shape) if need_lam_grad else lam.new_empty(0)
    return gs, gl


# --------------------------------------------------------------------------- formulas
# out = s S L is bilinear in (S, L); its backward (PyTorch's complex convention) is
# gs = s G conj(L),  gl = s sum_bc G conj(S)  (its real part if L is real).
def _filter_vjp(a, need, grad):
    gs, gl = _FILTER_BACKWARD(grad, a.spec, a.lam, a.scale, need.spec, need.lam)
    return {"spec": gs if need.spec else None, "lam": gl if need.lam else None}


# vmap: the vmapped dimension joins B, except where lam's gradient sums over B
_FILTER: RegisteredOp = define_op(
    "spectral_filter", _filter, fake=_filter_fake, saves=("spec", "lam"), vjp=_filter_vjp,
    jvp=lambda a, t: (product_rule(_FILTER, a, t, "spec", "lam"),), vmap=Fold(("spec",)),
    outputs_like=("spec",))
_FILTER_BACKWARD = define_bilinear_backward(
    "spectral_filter_backward", _filter_backward, fake=_filter_backward_fake, pair=("spec", "lam"),
    forward=lambda a, spec, lam: _FILTER(spec, lam, a.scale), saves=("grad_out", "spec", "lam"),
    vmap=Fold(("grad_out", "spec"), (True, False), can_fold=lambda a: not a.need_lam_grad))


def spectral_filter(spec: Tensor, lam: Tensor, scale: float = 1.0) -> Tensor:
    """``spec * lam * scale``, ``lam`` broadcast over batch and channels.

    Parameters
    ----------
    spec : torch.Tensor
        complex64/complex128 ``(B, C, Pd, Ph, Q)``: an rFFT half-spectrum (``Q = Pw // 2 + 1``)
        or a full spectrum (``Q = Pw``); complex32 is computed in complex64.
    lam : torch.Tensor
        Shape exactly ``(Pd, Ph, Q)``; real (float32/float64) or complex of the matching
        precision; with a complex64/complex32 ``spec`` also float16/bfloat16/complex32
        (computed in float32/complex64).
    scale : float
        Real Python number.

    Returns
    -------
    torch.Tensor
        Like ``spec`` (complex64 under ``torch.autocast`` for a complex32 ``spec``), contiguous.
        Differentiable w.r.t. ``spec`` and ``lam`` (PyTorch's complex convention; for a real
        ``lam`` its gradient is real), also under ``torch.func`` (``grad``, ``jvp``, ``vmap``,
        ``jacrev``, ``jacfwd``).

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
        names = "/".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"lam must have dtype {names} to match spec ({spec.dtype}), got {lam.dtype}")
    if lam.device != spec.device:
        raise ValueError(f"lam must be on the same device as spec ({spec.device}), got {lam.device}")
    if tuple(lam.shape) != tuple(spec.shape[2:]):
        raise ValueError(f"lam must have shape (Pd, Ph, Q) = {tuple(spec.shape[2:])} (spec's last three dims), "
                         f"got {tuple(lam.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real Python number, got {type(scale).__name__}")
    return _FILTER.compute(spec, lam, float(scale))
