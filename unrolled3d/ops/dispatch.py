"""Which implementation the fused ops run: the Triton launchers or their PyTorch twins.

The words are those of every backend switch of the package (:data:`unrolled3d._build.BACKENDS`):
``"auto"`` (default): Triton on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` was
set before :mod:`unrolled3d.kernels` was imported (the Triton CPU interpreter); the PyTorch
reference twins otherwise. ``"reference"``: always the twins. ``"compiled"``: always Triton (an
error where it cannot run). ``"triton"``, the previous release's word for ``"compiled"``, still
works with a ``DeprecationWarning``.

The environment variable ``UNROLLED3D_FUSED_BACKEND`` sets the starting value, read at import
like the projector's ``UNROLLED3D_EXTENSION``; :func:`set_backend` / :func:`use_backend` switch it
later. The choice is read when an op runs, also inside compiled graphs (the ops are opaque
custom ops).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable, Iterator

import torch

from .._build import BACKENDS, backend_word, extension_status
from ..kernels import INTERPRETED  # fixed when the kernels were imported
from ._extension import op_schemas

__all__ = ["set_backend", "get_backend", "use_backend", "triton_enabled_for", "use_triton", "implementation",
           "BACKENDS", "backend_table", "backend_switches"]

_backend = backend_word(os.environ.get("UNROLLED3D_FUSED_BACKEND", "auto"), "UNROLLED3D_FUSED_BACKEND")
_warned_interp = False


def set_backend(name: str) -> None:
    """Select the implementation of the fused ops: ``"auto"``, ``"compiled"`` or ``"reference"``.

    Examples
    --------
    >>> from unrolled3d.ops import get_backend, set_backend
    >>> previous = get_backend()
    >>> set_backend("reference"); get_backend()
    'reference'
    >>> set_backend(previous)
    """
    global _backend
    _backend = backend_word(name, "backend")


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
        if INTERPRETED:
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
    if _backend == "compiled" and not ok:
        raise RuntimeError(f"backend 'compiled' (Triton) cannot run on {t.device} tensors (CUDA, or CPU with "
                           "TRITON_INTERPRET=1 set before import, is required)")
    return ok


def implementation(t: torch.Tensor, triton_fn: Callable, reference_fn: Callable) -> Callable:
    """The launcher an op on ``t`` runs: ``triton_fn`` or its PyTorch twin ``reference_fn``
    (see :func:`use_triton`)."""
    return triton_fn if use_triton(t) else reference_fn


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
        interpreted = os.environ.get("TRITON_INTERPRET") == "1" and INTERPRETED
        fused_cpu = ("Triton (CPU interpreter, TRITON_INTERPRET=1)" if interpreted
                     else "PyTorch twin (Triton runs only on CUDA tensors, or under TRITON_INTERPRET=1)")
        fused_cuda = "Triton"
    table.update({op: {"cpu": fused_cpu, "cuda": fused_cuda} for op in FUSED_OPS})
    return table


def backend_switches() -> dict[str, dict[str, str]]:
    """The two backend switches, both taking the words of :data:`BACKENDS`, and where each stands
    (``unrolled3d info``).

    Returns
    -------
    dict
        ``{"projector": {...}, "fused": {...}}``, each with ``variable`` (the environment
        variable), ``value`` (in effect now) and ``read`` (when it is read, and what else it takes).

    Examples
    --------
    >>> from unrolled3d.ops.dispatch import backend_switches
    >>> backend_switches()["fused"]["variable"]
    'UNROLLED3D_FUSED_BACKEND'
    """
    return {
        "projector": {"variable": "UNROLLED3D_EXTENSION", "value": extension_status()["mode"],
                      "read": "once, at import (also prebuilt | jit: compiled, from that source only)"},
        "fused": {"variable": "UNROLLED3D_FUSED_BACKEND", "value": _backend,
                  "read": "at import; unrolled3d.ops.set_backend / use_backend switch it later, per call"},
    }
