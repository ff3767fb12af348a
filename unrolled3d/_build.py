"""Loading of the compiled extension and the report of which backends are available."""
from __future__ import annotations

import importlib
import os
from typing import Any

_CUDA_REASONS = {
    0: "built",
    1: "not built: NO_CUDA=1 was set at build time",
    2: "not built: torch was a CPU-only build at build time",
    3: "not built: no CUDA toolkit (nvcc / CUDA_HOME) was found at build time",
}

_REBUILD = (
    "Rebuild it from the repository root with `pip install --no-build-isolation -e .` "
    "(torch must be installed first; see README)."
)


def load_extension() -> Any:
    """Import ``unrolled3d._C`` (which registers the ``torch.ops.unrolled3d`` C++ ops).

    Raises
    ------
    ImportError
        With instructions to rebuild when the extension is missing or was built against
        another torch.
    """
    try:
        return importlib.import_module("unrolled3d._C")
    except ImportError as exc:  # flash-attention style: say how to fix it
        raise ImportError(f"unrolled3d's C++ extension could not be loaded ({exc}). {_REBUILD}") from exc


def backends() -> dict[str, Any]:
    """Which compute backends this installation can use, and why one is missing.

    Returns
    -------
    dict
        ``cpp_cpu`` (bool), ``openmp`` (bool), ``cuda_built`` (bool), ``cuda_status`` (str),
        ``cuda_device`` (bool: a GPU is visible now), ``triton`` (bool), ``triton_interpret`` (bool).
    """
    import torch

    info: dict[str, Any] = {"cpp_cpu": False, "openmp": False, "cuda_built": False}
    try:
        built = load_extension().build_info()
        info.update(cpp_cpu=True, openmp=bool(built["openmp"]), cuda_built=bool(built["cuda"]))
        info["cuda_status"] = _CUDA_REASONS.get(int(built["cuda_reason"]), "unknown")
    except ImportError as exc:
        info["cuda_status"] = f"extension not loaded: {exc}"
    info["cuda_device"] = torch.cuda.is_available()
    try:
        import triton  # noqa: F401

        info["triton"] = True
    except ImportError:
        info["triton"] = False
    info["triton_interpret"] = os.environ.get("TRITON_INTERPRET") == "1"
    return info
