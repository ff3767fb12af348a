"""The compiled extension's ops: their schemas, and the PyTorch twins standing in for them.

The schemas are written once, in ``csrc/schemas.h`` (shipped as ``unrolled3d/csrc/schemas.h``):
the C++ library defines the ops from that file (``TORCH_LIBRARY`` in ``csrc/bindings.cpp``), and
:func:`op_schemas` reads the same file. Importing this module makes the ops exist: it loads the
compiled extension (:func:`unrolled3d._build.load_extension`: prebuilt, built on first use, or
none) or, when none can be had, defines every op of the file with its pure-PyTorch twin
(:mod:`unrolled3d.ops.projector_ref`) as its CPU and CUDA kernel: same schemas, so the fake
kernels, autograd formulas and callers registered on top work unchanged, only slower.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Optional

import torch

from .._build import load_extension, source_dir
from .projector_ref import backproject_algo_raw, backproject_raw, fdk_backproject_raw, project_raw

__all__ = ["op_schemas", "TWINS", "twin_library"]

# one op per line `  U3D_OP(name, "schema") \`, the schema a single string literal (comments, which
# start with //, are not read)
_OP = re.compile(r'^\s*U3D_OP\(\s*(\w+)\s*,\s*"([^"]*)"\s*\)', re.M)

#: the PyTorch twin of each op of csrc/schemas.h, on the op's own arguments
TWINS: dict[str, Callable[..., torch.Tensor]] = {
    "cone_project": project_raw,
    "cone_backproject": backproject_raw,
    "cone_backproject_algo": backproject_algo_raw,
    "fdk_backproject": fdk_backproject_raw,
}


@lru_cache(maxsize=None)
def op_schemas() -> dict[str, str]:
    """``{op name: schema without the name}`` as ``csrc/schemas.h`` declares them, in its order.

    Raises
    ------
    RuntimeError
        The file declares no op (it was edited into a form this reader does not know).
    """
    path = source_dir() / "schemas.h"
    found = dict(_OP.findall(path.read_text()))
    if not found:
        raise RuntimeError(f"{path} declares no op: expected lines U3D_OP(name, \"(...) -> ...\")")
    return found


def _register_twins() -> torch.library.Library:
    """Define every op of ``csrc/schemas.h`` with its twin as its CPU and CUDA kernel."""
    schemas = op_schemas()
    missing = sorted(set(schemas) - set(TWINS))
    if missing:
        raise RuntimeError(f"csrc/schemas.h declares ops without a PyTorch twin: {missing}")
    lib = torch.library.Library("unrolled3d", "FRAGMENT")
    for name, schema in schemas.items():
        lib.define(name + schema)
        for key in ("CPU", "CUDA"):
            lib.impl(name, TWINS[name], key)
    return lib


# The compiled library registers the schemas and kernels; or (None) the twins stand in. The
# Library object must live as long as the process, or the registrations go with it.
_TWIN_LIBRARY: Optional[torch.library.Library] = _register_twins() if load_extension() is None else None


def twin_library() -> Optional[torch.library.Library]:
    """The library that defines the ops with their twins, or ``None`` when the extension does."""
    return _TWIN_LIBRARY
