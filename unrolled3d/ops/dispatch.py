"""Which implementation the fused ops run: the Triton launchers or their PyTorch twins.

``"auto"`` (default): Triton on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1``
was set before :mod:`unrolled3d.kernels` was imported (the Triton CPU interpreter); the PyTorch
reference twins otherwise. ``"reference"``: always the twins. ``"triton"``: always Triton (an
error where it cannot run). The environment variable ``UNROLLED3D_FUSED_BACKEND`` sets the
starting value. The choice is read when an op runs, also inside compiled graphs (the ops are
opaque custom ops).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator, Optional

import torch

from .. import kernels
from .._build import extension_status
from ._extension import op_schemas

__all__ = ["set_backend", "get_backend", "use_backend", "triton_enabled_for", "use_triton", "or_empty", "BACKENDS",
           "backend_table"]

BACKENDS = ("auto", "reference", "triton")
_backend = os.environ.get("UNROLLED3D_FUSED_BACKEND", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"UNROLLED3D_FUSED_BACKEND must be one of {BACKENDS}, got {_backend!r}")
_warned_interp = False


def set_backend(name: str) -> None:
    """Select the implementation of the fused ops: ``"auto"``, ``"reference"`` or ``"triton"``.

    Examples
    --------
    >>> from unrolled3d.ops import get_backend, set_backend
    >>> previous = get_backend()
    >>> set_backend("reference"); get_backend()
    'reference'
    >>> set_backend(previous)
    """
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    """The current choice (see :func:`set_backend`)."""
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Select the implementation inside a ``with`` block, then restore the previous one."""
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


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op on ``t`` runs the Triton launcher (``True``) or the PyTorch twin."""
    if _backend == "reference":
        return False
    ok = triton_enabled_for(t.device)
    if _backend == "triton" and not ok:
        raise RuntimeError(f"backend 'triton' cannot run on {t.device} tensors (CUDA, or CPU with "
                           "TRITON_INTERPRET=1 set before import, is required)")
    return ok


def or_empty(t: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Custom ops cannot return ``None``: unused gradient slots are 0-element tensors."""
    return t if t is not None else like.new_empty(0)


#: the registered ops of each kind, as ``unrolled3d info`` lists them (the compiled extension's:
#: those csrc/schemas.h declares)
PROJECTOR_OPS = tuple(op_schemas())
FUSED_OPS = ("masked_gather", "spectral_filter", "masked_scatter_add")


def backend_table() -> dict[str, dict[str, str]]:
    """Which implementation each registered op runs on each device, in words (``unrolled3d info``).

    Returns
    -------
    dict
        ``{op: {"cpu": ..., "cuda": ...}}``.
    """
    status = extension_status()
    source = status["source"]
    cpp = {"prebuilt": "C++/OpenMP (prebuilt extension)", "jit": "C++/OpenMP (extension built on first use)",
           "twins": "PyTorch twin (no compiled extension)"}[source]
    if source == "twins":
        cuda = "PyTorch twin (no compiled extension)"
    elif status["cuda_built"]:
        cuda = "CUDA kernel"
    else:
        cuda = f"none: the extension has no CUDA twin ({status['cuda_status']})"
    table = {op: {"cpu": cpp, "cuda": cuda} for op in PROJECTOR_OPS}
    if _backend == "reference":
        fused_cpu = fused_cuda = "PyTorch twin (backend 'reference')"
    else:
        # Triton runs CUDA tensors; CPU tensors only under its interpreter, else the twins
        interpreted = os.environ.get("TRITON_INTERPRET") == "1" and kernels.INTERPRETED
        fused_cpu = ("Triton (CPU interpreter, TRITON_INTERPRET=1)" if interpreted
                     else "PyTorch twin (Triton runs only on CUDA tensors, or under TRITON_INTERPRET=1)")
        fused_cuda = "Triton"
    table.update({op: {"cpu": fused_cpu, "cuda": fused_cuda} for op in FUSED_OPS})
    return table
