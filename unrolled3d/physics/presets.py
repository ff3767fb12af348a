"""Standard scan set-ups used by the demo, the command line and the benchmarks."""
from __future__ import annotations

from ..geometry import ConeBeamGeometry

__all__ = ["standard_cone_beam"]


def standard_cone_beam(size: int, n_views: int, scan: str = "full") -> ConeBeamGeometry:
    """A circular cone-beam scan of a ``size^3`` volume of 1 mm voxels.

    Source-axis distance ``4 size`` mm, axis-detector ``2 size`` mm (magnification 1.5), a
    ``1.25 size x 1.5 size`` detector of 1.5 mm pixels that sees the whole volume.
    """
    if not isinstance(size, int) or size < 4:
        raise ValueError(f"size must be an integer >= 4, got {size!r}")
    det = (int(round(1.25 * size)), int(round(1.5 * size)))
    return ConeBeamGeometry.circular(n_views, 4.0 * size, 2.0 * size, det, 1.5, (size,) * 3, scan=scan)
