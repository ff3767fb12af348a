"""Low precision and autocast for the registered ops: float16/bfloat16 data run in float32.

The ops accumulate sums along rays and over overlapping patches; in float16/bfloat16 (8 or 11
significant bits) those sums lose several digits and the C++ projector does not take them at
all. So every public op computes in float32 and

* outside autocast, returns the input's dtype: a bfloat16 volume gives a bfloat16 projection,
  the float32 result rounded once;
* inside ``torch.autocast`` (for the input's device type), returns float32, as PyTorch's own
  float32-policy ops do (norms, losses, ...): the data-consistency arithmetic of an unrolled
  network then stays in float32 while its denoiser runs in low precision.

The registered ops (``torch.ops.unrolled3d.*``) also get an autocast rule
(:func:`register_float32_autocast`): under autocast their floating-point inputs are cast to
float32 (float64 is left alone) and they run with autocast off, for callers of the raw ops and
for graphs captured by ``torch.compile``/``torch.export``.
"""
from __future__ import annotations

from typing import overload

import torch

from .._validation import LOW_PRECISION_DTYPES

__all__ = ["LOW_PRECISION", "COMPLEX_LOW_PRECISION", "is_low", "compute_dtype", "companions", "upcast", "output_dtype",
           "register_float32_autocast"]

#: real dtypes taken at the public boundary and computed in float32
LOW_PRECISION = LOW_PRECISION_DTYPES
#: the complex counterpart (complex32 = two float16), computed in complex64
COMPLEX_LOW_PRECISION = (torch.complex32,)


def is_low(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is computed in (complex) float32 instead of itself."""
    return dtype in LOW_PRECISION or dtype in COMPLEX_LOW_PRECISION


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an op computes in for data of ``dtype``: float32 (complex64) for low precision."""
    if dtype in LOW_PRECISION:
        return torch.float32
    if dtype in COMPLEX_LOW_PRECISION:
        return torch.complex64
    return dtype


@overload
def upcast(t: torch.Tensor) -> torch.Tensor: ...
@overload
def upcast(t: None) -> None: ...
@overload
def upcast(t: torch.Tensor | None) -> torch.Tensor | None: ...
def upcast(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` in its compute dtype (differentiable; no copy when it is already there)."""
    if t is None:
        return None
    return t.to(compute_dtype(t.dtype))


def companions(dtype: torch.dtype) -> tuple[torch.dtype, ...]:
    """Dtypes accepted, besides the data's own, for the other tensors of an op (masks, windows,
    filters, ``src``) when the data has ``dtype``: its compute dtype, for low precision."""
    return (compute_dtype(dtype),) if is_low(dtype) else ()


def output_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype an op returns for the data input ``t``: its own, or float32 (complex64) under
    ``torch.autocast`` for ``t``'s device type (see the module docstring)."""
    if is_low(t.dtype) and torch.is_autocast_enabled(t.device.type):
        return compute_dtype(t.dtype)
    return t.dtype


def register_float32_autocast(qualname: str) -> None:
    """Under ``torch.autocast`` on CPU or CUDA, run the functional op ``qualname`` in float32."""
    for device_type in ("cpu", "cuda"):
        if torch._C._is_autocast_available(device_type):
            torch.library.register_autocast(qualname, device_type, torch.float32)
