"""Autograd-aware, ``torch.library``-registered fused ops for patch-wise FFT filtering.

User-facing functions (validate, then call ``torch.ops.unrolled3d.<op>``)::

    masked_gather(volume, offset, patch_shape, pad_shape, mask=None) -> out
    spectral_filter(spec, lam, scale=1.0) -> spec * lam * scale
    masked_scatter_add(dest, src, offset, patch_shape, mask=None, window=None, weight=None)
        -> (out, out_weight | None)
    masked_scatter_add_(dest, src, offset, patch_shape, mask=None, window=None, weight=None)
        -> (dest, weight)            # in place, inference only (no autograd)

Registered ops (namespace ``unrolled3d``): ``masked_gather``, ``masked_gather_backward``,
``spectral_filter``, ``spectral_filter_backward``, ``masked_scatter_add``,
``masked_scatter_add_backward`` and the mutating ``masked_scatter_add_``.

Why ``torch.library.custom_op`` and not ``triton_op`` + ``wrap_triton``
------------------------------------------------------------------------
* Each op picks its implementation at run time (Triton launcher on CUDA or under
  the CPU interpreter, otherwise the PyTorch twin; see :func:`use_backend`).  A
  ``triton_op`` body is traced by torch.compile, so that device/env dispatch and
  the launchers' Python-side work (grid chunking, ``.contiguous()`` fallbacks,
  scale-as-tensor) would have to be traceable; a ``custom_op`` is opaque, so the
  same Python code runs eagerly and compiled, on every device.
* ``triton_op`` pays off when Inductor can fuse *around* the kernel.  These
  kernels are already the fused, memory-bound unit (gather*mask*pad,
  complex multiply, crop*mask*window+add), and their neighbours are FFTs, which
  Inductor cannot fuse anyway, so opacity costs nothing measurable.
* ``custom_op`` + ``register_fake`` + ``register_autograd`` is the path that
  ``torch.library.opcheck``, ``torch.compile(fullgraph=True)`` and AOTAutograd
  support uniformly across torch 2.11 .. 2.14, including for the Triton CPU
  interpreter, which ``wrap_triton`` tracing does not target.

Backward formulas use only these registered ops: each forward op's backward is a
fused ``*_backward`` op, and each ``*_backward`` op is itself differentiable, its
own backward being built from the forward/backward ops (they are mutual
adjoints), so double backward dispatches exactly like the forward.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor


def _import_kernels():
    """``unrolled3d.kernels`` is the top-level ``kernels/`` folder, mapped by the
    package install (``package_dir={'unrolled3d.kernels': 'kernels'}``).  In a plain
    source checkout without that install, load it from the repository root."""
    try:
        import unrolled3d.kernels as k  # noqa: PLC0415

        return k
    except ModuleNotFoundError as exc:
        if exc.name not in ("unrolled3d.kernels", "unrolled3d"):
            raise
    init = Path(__file__).resolve().parents[2] / "kernels" / "__init__.py"
    if not init.is_file():
        raise ModuleNotFoundError("unrolled3d.kernels is not installed and no source kernels/ folder was found")
    spec = importlib.util.spec_from_file_location("unrolled3d.kernels", init,
                                                  submodule_search_locations=[str(init.parent)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["unrolled3d.kernels"] = mod
    spec.loader.exec_module(mod)
    parent = sys.modules.get("unrolled3d")
    if parent is not None:
        setattr(parent, "kernels", mod)
    return mod


kernels = _import_kernels()
_mg = kernels.masked_gather
_sf = kernels.spectral_filter
_ms = kernels.masked_scatter

__all__ = [
    "masked_gather",
    "spectral_filter",
    "masked_scatter_add",
    "masked_scatter_add_",
    "use_backend",
    "set_backend",
    "get_backend",
    "triton_enabled_for",
]

# --------------------------------------------------------------------------- #
# dispatch
# --------------------------------------------------------------------------- #
_BACKENDS = ("auto", "reference", "triton")
_backend = os.environ.get("UNROLLED3D_FUSED_BACKEND", "auto")
if _backend not in _BACKENDS:
    raise ValueError(f"UNROLLED3D_FUSED_BACKEND must be one of {_BACKENDS}, got {_backend!r}")
_warned_interp = False


def set_backend(name: str) -> None:
    """``"auto"`` (default): Triton on CUDA, and on CPU when ``TRITON_INTERPRET=1``;
    PyTorch twins otherwise.  ``"reference"``: always the PyTorch twins.
    ``"triton"``: always Triton (error where it cannot run)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str):
    """Temporarily select the implementation used by the ops (read at run time,
    also inside compiled graphs, since the ops are opaque custom ops)."""
    old = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def triton_enabled_for(device: torch.device) -> bool:
    """Whether the ``"auto"`` rule sends tensors on ``device`` to the Triton launchers."""
    global _warned_interp
    if device.type == "cuda":
        return True
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        if kernels.INTERPRETED:
            return True
        if not _warned_interp:
            warnings.warn("TRITON_INTERPRET=1 was set after unrolled3d.kernels was imported, so its kernels were "
                          "built for a GPU; CPU tensors use the PyTorch reference twins", RuntimeWarning)
            _warned_interp = True
    return False


def _use_triton(t: Tensor) -> bool:
    if _backend == "reference":
        return False
    ok = triton_enabled_for(t.device)
    if _backend == "triton" and not ok:
        raise RuntimeError(f"backend 'triton' cannot run on {t.device} tensors (CUDA, or CPU with "
                           "TRITON_INTERPRET=1 set before import, is required)")
    return ok


def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    # custom ops cannot return None; unused gradient slots are 0-element tensors
    return t if t is not None else like.new_empty(0)


def _req(t: Optional[Tensor]) -> bool:
    return t is not None and t.requires_grad


# --------------------------------------------------------------------------- #
# masked_gather
# --------------------------------------------------------------------------- #
@torch.library.custom_op("unrolled3d::masked_gather", mutates_args=())
def _masked_gather_op(volume: Tensor, offset: List[int], patch_shape: List[int], pad_shape: List[int],
                      mask: Optional[Tensor]) -> Tensor:
    fn = _mg.masked_gather_forward if _use_triton(volume) else _mg.masked_gather_ref
    return fn(volume, offset, patch_shape, pad_shape, mask)


@_masked_gather_op.register_fake
def _(volume, offset, patch_shape, pad_shape, mask):
    return volume.new_empty((volume.shape[0], volume.shape[1], *pad_shape))


@torch.library.custom_op("unrolled3d::masked_gather_backward", mutates_args=())
def _masked_gather_backward_op(grad_out: Tensor, volume: Tensor, mask: Optional[Tensor], offset: List[int],
                               patch_shape: List[int], need_volume_grad: bool,
                               need_mask_grad: bool) -> Tuple[Tensor, Tensor]:
    fn = _mg.masked_gather_backward if _use_triton(volume) else _mg.masked_gather_backward_ref
    gv, gm = fn(grad_out, volume, offset, patch_shape, mask, need_volume_grad, need_mask_grad)
    return _or_empty(gv, volume), _or_empty(gm, volume)


@_masked_gather_backward_op.register_fake
def _(grad_out, volume, mask, offset, patch_shape, need_volume_grad, need_mask_grad):
    gv = volume.new_empty(volume.shape) if need_volume_grad else volume.new_empty(0)
    gm = volume.new_empty(tuple(patch_shape)) if need_mask_grad else volume.new_empty(0)
    return gv, gm


def _mg_setup(ctx, inputs, output):
    volume, offset, patch_shape, pad_shape, mask = inputs
    ctx.geom = (list(offset), list(patch_shape))
    ctx.save_for_backward(volume, mask)


def _mg_backward(ctx, grad):
    volume, mask = ctx.saved_tensors
    need_v = ctx.needs_input_grad[0]
    need_m = mask is not None and ctx.needs_input_grad[4]
    if not (need_v or need_m):
        return None, None, None, None, None
    gv, gm = torch.ops.unrolled3d.masked_gather_backward(grad, volume, mask, *ctx.geom, need_v, need_m)
    return (gv if need_v else None), None, None, None, (gm if need_m else None)


_masked_gather_op.register_autograd(_mg_backward, setup_context=_mg_setup)


def _mgb_setup(ctx, inputs, output):
    grad_out, volume, mask, offset, patch_shape, need_v, need_m = inputs
    ctx.geom = (list(offset), list(patch_shape))
    ctx.need = (need_v, need_m)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_out, volume, mask)


def _mgb_backward(ctx, h_v, h_m):
    # Linear algebra: with P = patch extraction, Z = zero-pad,
    #   gv = P^T(Z^T G * M),  gm = sum_bc Z^T G * P V
    G, V, M = ctx.saved_tensors
    offset, patch = ctx.geom
    h_v = h_v if ctx.need[0] else None
    h_m = h_m if ctx.need[1] else None
    pad = list(G.shape[2:])
    dG = dV = dM = None
    if ctx.needs_input_grad[0]:
        if h_v is not None:
            dG = torch.ops.unrolled3d.masked_gather(h_v, offset, patch, pad, M)
        if h_m is not None:
            t = torch.ops.unrolled3d.masked_gather(V, offset, patch, pad, h_m)
            dG = t if dG is None else dG + t
    if ctx.needs_input_grad[1] and h_m is not None:
        dV = torch.ops.unrolled3d.masked_gather_backward(G, V, h_m, offset, patch, True, False)[0]
    if ctx.needs_input_grad[2] and h_v is not None:
        dM = torch.ops.unrolled3d.masked_gather_backward(G, h_v, M, offset, patch, False, True)[1]
    return dG, dV, dM, None, None, None, None


_masked_gather_backward_op.register_autograd(_mgb_backward, setup_context=_mgb_setup)


def masked_gather(volume: Tensor, offset, patch_shape, pad_shape, mask: Optional[Tensor] = None) -> Tensor:
    """Gather ``volume[..., od:od+pd, oh:oh+ph, ow:ow+pw] * mask`` into the start of a
    zero ``(B, C, *pad_shape)`` buffer (voxels outside the volume read as 0).

    Args:
        volume: ``(B, C, D, H, W)`` float32/float64.
        offset: ``(od, oh, ow)`` ints; may be negative / make the patch stick out.
        patch_shape: ``(pd, ph, pw)`` positive ints.
        pad_shape: ``(Pd, Ph, Pw)`` with each ``>=`` the patch size (FFT buffer size).
        mask: ``(pd, ph, pw)`` of volume's dtype/device, or None (ones).

    Differentiable w.r.t. ``volume`` and ``mask`` (any order).
    """
    offset, patch, pad = _mg.check_masked_gather_args(volume, offset, patch_shape, pad_shape, mask)
    return torch.ops.unrolled3d.masked_gather(volume, list(offset), list(patch), list(pad), mask)


# --------------------------------------------------------------------------- #
# spectral_filter
# --------------------------------------------------------------------------- #
@torch.library.custom_op("unrolled3d::spectral_filter", mutates_args=())
def _spectral_filter_op(spec: Tensor, lam: Tensor, scale: float) -> Tensor:
    fn = _sf.spectral_filter_forward if _use_triton(spec) else _sf.spectral_filter_ref
    return fn(spec, lam, scale)


@_spectral_filter_op.register_fake
def _(spec, lam, scale):
    return spec.new_empty(spec.shape)


@torch.library.custom_op("unrolled3d::spectral_filter_backward", mutates_args=())
def _spectral_filter_backward_op(grad_out: Tensor, spec: Tensor, lam: Tensor, scale: float,
                                 need_spec_grad: bool, need_lam_grad: bool) -> Tuple[Tensor, Tensor]:
    fn = _sf.spectral_filter_backward if _use_triton(spec) else _sf.spectral_filter_backward_ref
    gs, gl = fn(grad_out, spec, lam, scale, need_spec_grad, need_lam_grad)
    return _or_empty(gs, spec), _or_empty(gl, lam)


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
    """``spec * lam * scale`` for an rFFT half-spectrum.

    Args:
        spec: complex64/complex128 ``(B, C, Pd, Ph, Q)``.
        lam: shape exactly ``(Pd, Ph, Q)``; real (float32/float64) or complex of the
            matching precision; broadcast over ``(B, C)``.
        scale: real Python number.

    Differentiable w.r.t. ``spec`` and ``lam`` (PyTorch complex convention; for a
    real ``lam`` its gradient is real).
    """
    scale = _sf.check_spectral_filter_args(spec, lam, scale)
    return torch.ops.unrolled3d.spectral_filter(spec, lam, scale)


# --------------------------------------------------------------------------- #
# masked_scatter_add (functional) and masked_scatter_add_ (in place)
# --------------------------------------------------------------------------- #
@torch.library.custom_op("unrolled3d::masked_scatter_add", mutates_args=())
def _masked_scatter_add_op(dest: Tensor, src: Tensor, offset: List[int], patch_shape: List[int],
                           mask: Optional[Tensor], window: Optional[Tensor],
                           weight: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    fn = _ms.masked_scatter_add_forward if _use_triton(dest) else _ms.masked_scatter_add_ref
    out, out_w = fn(dest, src, offset, patch_shape, mask, window, weight)
    return out, _or_empty(out_w, dest)


@_masked_scatter_add_op.register_fake
def _(dest, src, offset, patch_shape, mask, window, weight):
    out_w = weight.new_empty(weight.shape) if weight is not None else dest.new_empty(0)
    return dest.new_empty(dest.shape), out_w


@torch.library.custom_op("unrolled3d::masked_scatter_add_backward", mutates_args=())
def _masked_scatter_add_backward_op(grad_out: Tensor, src: Tensor, mask: Optional[Tensor],
                                    window: Optional[Tensor], offset: List[int], patch_shape: List[int],
                                    need_src_grad: bool, need_mask_grad: bool) -> Tuple[Tensor, Tensor]:
    fn = _ms.masked_scatter_add_backward if _use_triton(src) else _ms.masked_scatter_add_backward_ref
    gs, gm = fn(grad_out, src, offset, patch_shape, mask, window, need_src_grad, need_mask_grad)
    return _or_empty(gs, src), _or_empty(gm, src)


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
    fn = _ms.masked_scatter_add_forward if _use_triton(dest) else _ms.masked_scatter_add_ref
    fn(dest, src, offset, patch_shape, mask, window, weight, inplace=True)


@_masked_scatter_add_inplace_op.register_fake
def _(dest, src, offset, patch_shape, mask, window, weight):
    return None


def _check_window_nograd(window):
    if window is not None and window.requires_grad and torch.is_grad_enabled():
        raise ValueError("window is not differentiable but requires grad; pass window.detach()")


def masked_scatter_add(dest: Tensor, src: Tensor, offset, patch_shape, mask: Optional[Tensor] = None,
                       window: Optional[Tensor] = None,
                       weight: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """Functional overlap-add of one patch.

    ``out = dest`` plus ``src[..., :pd, :ph, :pw] * mask * window`` added at ``offset``
    (voxels outside the volume skipped); ``out_weight = weight`` plus ``window``
    (ones if None) added at the same place, or None if ``weight`` is None.

    Args:
        dest: ``(B, C, D, H, W)`` float32/float64.
        src: ``(B, C, Pd, Ph, Pw)`` with ``P* >= patch``, e.g. a padded inverse FFT.
        offset, patch_shape: as in :func:`masked_gather`.
        mask, window: ``(pd, ph, pw)`` or None (ones).
        weight: ``(D, H, W)`` or None.

    Returns new tensors; differentiable w.r.t. ``dest``, ``src``, ``mask`` and
    ``weight`` (``window`` is not differentiable and must not require grad).
    """
    offset, patch = _ms.check_masked_scatter_args(dest, src, offset, patch_shape, mask, window, weight)
    _check_window_nograd(window)
    out, out_w = torch.ops.unrolled3d.masked_scatter_add(dest, src, list(offset), list(patch), mask, window, weight)
    return out, (out_w if weight is not None else None)


def masked_scatter_add_(dest: Tensor, src: Tensor, offset, patch_shape, mask: Optional[Tensor] = None,
                        window: Optional[Tensor] = None,
                        weight: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """In-place fast path of :func:`masked_scatter_add` for inference.

    Adds into ``dest`` (and ``weight``) directly: no copy of the volume, only a
    read-modify-write of the patch region.  It has no autograd: call it under
    ``torch.no_grad()`` / ``torch.inference_mode()`` (a RuntimeError is raised if
    grad mode is on and any input requires grad).  ``dest``/``weight`` must not be
    expanded views and must not overlap ``src``/``mask``/``window`` in memory.
    Returns ``(dest, weight)``.
    """
    offset, patch = _ms.check_masked_scatter_args(dest, src, offset, patch_shape, mask, window, weight)
    if torch.is_grad_enabled() and any(_req(t) for t in (dest, src, mask, window, weight)):
        raise RuntimeError("masked_scatter_add_ is inference-only (no autograd); call it under torch.no_grad() "
                           "or use the functional masked_scatter_add")
    torch.ops.unrolled3d.masked_scatter_add_(dest, src, list(offset), list(patch), mask, window, weight)
    return dest, weight
