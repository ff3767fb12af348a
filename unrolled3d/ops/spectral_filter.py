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
from ._func import Static, register_folding_vmap, sum_terms
from ._precision import COMPLEX_LOW_PRECISION, LOW_PRECISION, output_dtype, register_float32_autocast, upcast
from .dispatch import or_empty, use_triton

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


# --------------------------------------------------------------------------- autograd
# As in ops/masked_gather.py: autograd.Functions with a separate setup_context (torch.func-safe,
# used by the public function) and the same formulas registered on the raw ops. The op is
# bilinear in (spec, lam): its jvp is the product rule. Non-tensor arguments travel as one
# Static (ops/_func.py).
class _SpectralFilter(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(spec, lam, scale):
        return torch.ops.unrolled3d.spectral_filter(spec, lam, scale.args[0])

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec, lam, scale = inputs
        _sf_save(ctx, spec, lam, scale)

    @staticmethod
    def backward(ctx, grad):
        return _sf_grads(ctx, grad, ctx.needs_input_grad[0], ctx.needs_input_grad[1]) + (None,)

    @staticmethod
    def jvp(ctx, t_spec, t_lam, _scale):
        spec, lam = ctx.saved_tensors
        terms = []
        if t_spec is not None:
            terms.append((_SpectralFilter.apply(t_spec, lam, ctx.scale),))
        if t_lam is not None:
            terms.append((_SpectralFilter.apply(spec, t_lam, ctx.scale),))
        return sum_terms(terms, [spec.shape], spec)[0]


def _sf_save(ctx, spec, lam, scale):
    ctx.scale = scale
    ctx.save_for_backward(spec, lam)
    ctx.save_for_forward(spec, lam)


def _sf_grads(ctx, grad, need_s, need_l):
    spec, lam = ctx.saved_tensors
    if not (need_s or need_l):
        return None, None
    gs, gl = _SpectralFilterBackward.apply(grad, spec, lam, Static(ctx.scale.args[0], need_s, need_l))
    return (gs if need_s else None), (gl if need_l else None)


class _SpectralFilterBackward(torch.autograd.Function):
    # gs = s G conj(L),  gl = s sum_bc G conj(S)  (Re if L real); adjoints w.r.t. the
    # real inner product Re<a, b> (PyTorch's convention) give:
    #   dG = s h_s L + s S h_l,  dS = s G conj(h_l),  dL = s sum_bc G conj(h_s)
    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, spec, lam, args):
        scale, need_s, need_l = args.args
        return torch.ops.unrolled3d.spectral_filter_backward(grad_out, spec, lam, scale, need_s, need_l)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, spec, lam, args = inputs
        _sfb_save(ctx, grad_out, spec, lam, args, output)

    @staticmethod
    def backward(ctx, h_s, h_l):
        return _sfb_grads(ctx, h_s, h_l, *ctx.needs_input_grad[:3]) + (None,)

    @staticmethod
    def jvp(ctx, t_G, t_S, t_L, _args):
        # gs is R-bilinear in (G, L), gl in (G, S) (conj and Re are R-linear): the product rule
        G, S, L = ctx.saved_tensors
        scale, need_s, need_l = ctx.args.args
        terms = []
        if t_G is not None:
            terms.append(_SpectralFilterBackward.apply(t_G, S, L, ctx.args))
        if t_L is not None and need_s:
            terms.append((_SpectralFilterBackward.apply(G, S, t_L, Static(scale, True, False))[0], None))
        if t_S is not None and need_l:
            terms.append((None, _SpectralFilterBackward.apply(G, t_S, L, Static(scale, False, True))[1]))
        return sum_terms(terms, ctx.out_shapes, G)


def _sfb_save(ctx, grad_out, spec, lam, args, output):
    ctx.args = args
    ctx.out_shapes = [o.shape for o in output]
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_out, spec, lam)
    ctx.save_for_forward(grad_out, spec, lam)


def _sfb_grads(ctx, h_s, h_l, need_G, need_S, need_L):
    G, S, L = ctx.saved_tensors
    sc, need_s, need_l = ctx.args.args
    h_s = h_s if need_s else None
    h_l = h_l if need_l else None
    scale = Static(sc)
    dG = dS = dL = None
    if need_G:
        if h_s is not None:
            dG = _SpectralFilter.apply(h_s, L, scale)
        if h_l is not None:
            t = _SpectralFilter.apply(S, h_l, scale)
            dG = t if dG is None else dG + t
    if need_S and h_l is not None:
        dS = _SpectralFilter.apply(G, torch.conj_physical(h_l), scale)
    if need_L and h_s is not None:
        dL = _SpectralFilterBackward.apply(G, h_s, L, Static(sc, False, True))[1]
    return dG, dS, dL


# the same formulas on the raw ops (argument order of their schemas)
def _sf_op_setup(ctx, inputs, output):
    spec, lam, scale = inputs
    _sf_save(ctx, spec, lam, Static(scale))


def _sf_op_backward(ctx, grad):
    return _sf_grads(ctx, grad, ctx.needs_input_grad[0], ctx.needs_input_grad[1]) + (None,)


def _sfb_op_setup(ctx, inputs, output):
    grad_out, spec, lam, scale, need_s, need_l = inputs
    _sfb_save(ctx, grad_out, spec, lam, Static(scale, need_s, need_l), output)


def _sfb_op_backward(ctx, h_s, h_l):
    return _sfb_grads(ctx, h_s, h_l, *ctx.needs_input_grad[:3]) + (None,) * 3


_spectral_filter_op.register_autograd(_sf_op_backward, setup_context=_sf_op_setup)
_spectral_filter_backward_op.register_autograd(_sfb_op_backward, setup_context=_sfb_op_setup)
# vmap: the vmapped dimension joins B, except where lam's gradient sums over B (ops/_func.py)
register_folding_vmap("unrolled3d::spectral_filter", batch_args=(0,), batch_outputs=True)
register_folding_vmap("unrolled3d::spectral_filter_backward", batch_args=(0, 1), batch_outputs=(True, False),
                      can_fold=lambda *args: not args[5])
for _name in ("unrolled3d::spectral_filter", "unrolled3d::spectral_filter_backward"):
    register_float32_autocast(_name)


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
    spec_c, lam_c = upcast(spec), upcast(lam)
    if torch.compiler.is_compiling():  # see ops/_func.py: the raw op, same formulas, no jvp
        out = torch.ops.unrolled3d.spectral_filter(spec_c, lam_c, float(scale))
    else:
        out = _SpectralFilter.apply(spec_c, lam_c, Static(float(scale)))
    return out.to(output_dtype(spec))
