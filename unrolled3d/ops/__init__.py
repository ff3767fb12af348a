"""Autograd-compatible, ``torch.library``-registered operators (tensors in, tensors out).

One module per op, each with its kernels' calls, fake (shape-only) kernels, derivative formulas
and public, validating function:

* :mod:`.projector` - the C++/CUDA cone-beam projector pair ``cone_project`` /
  ``cone_backproject`` (exact transposes), and :mod:`.fdk_backproject` - FDK's weighted
  backprojection (C++/CUDA); their PyTorch twins are :mod:`.projector_ref`, their schemas
  ``csrc/schemas.h`` (read by :mod:`._extension`);
* :mod:`.masked_gather`, :mod:`.spectral_filter`, :mod:`.masked_scatter_add` - the fused Triton
  kernels of the normal-operator approximation (twins in :mod:`unrolled3d.kernels`);
* :mod:`.dispatch` - which implementation the fused ops run (Triton or the PyTorch twins);
* :mod:`._define` - what turns a fused op's calls and formulas into a registered op with
  autograd, ``torch.func`` rules, vmap and autocast, for eager and compiled callers alike.
"""
from .dispatch import get_backend, set_backend, triton_enabled_for, use_backend
from .masked_gather import masked_gather
from .masked_scatter_add import masked_scatter_add, masked_scatter_add_
from .projector import cone_backproject, cone_project
from .spectral_filter import spectral_filter

__all__ = [
    "cone_project", "cone_backproject", "masked_gather", "spectral_filter", "masked_scatter_add",
    "masked_scatter_add_", "set_backend", "get_backend", "use_backend", "triton_enabled_for",
]
