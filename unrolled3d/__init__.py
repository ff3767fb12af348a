"""unrolled3d: memory-efficient unrolled networks for large 3D inverse problems.

Cone-beam CT and 3D multi-coil MRI reconstruction whose memory does not grow with the volume:
domain partitioning, a learned diagonal-circulant approximation of the normal operator, and
fused GPU kernels. See README.md.
"""
from __future__ import annotations

from ._build import backends

__version__ = "0.1.0"

__all__ = ["backends", "__version__"]
