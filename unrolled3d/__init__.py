"""unrolled3d: memory-efficient unrolled networks for large 3D inverse problems.

Cone-beam CT and 3D multi-coil MRI reconstruction whose memory does not grow with the volume:
domain partitioning, a learned diagonal-circulant approximation of the normal operator, and
fused GPU kernels. See README.md.

The shortest path: ``unrolled3d.reconstruct(y, geometry, model="heads_ct")``
(:func:`unrolled3d.api.reconstruct`) and ``unrolled3d.load_pretrained("heads_ct")``.
"""
from __future__ import annotations

from typing import Any

from ._build import backends

__version__ = "0.1.0"

__all__ = ["backends", "__version__", "load_pretrained", "reconstruct", "check_measurement_scale"]

#: the high-level API (unrolled3d.api), imported on first use: ``import unrolled3d`` stays cheap
_API = ("load_pretrained", "reconstruct", "check_measurement_scale")


def __getattr__(name: str) -> Any:
    if name in _API or name == "api":
        from .api import check_measurement_scale, load_pretrained, reconstruct

        found = {"check_measurement_scale": check_measurement_scale, "load_pretrained": load_pretrained,
                 "reconstruct": reconstruct}
        return found.get(name) or globals()["api"]  # the submodule, bound to the package by its import
    raise AttributeError(f"module 'unrolled3d' has no attribute {name!r}")
