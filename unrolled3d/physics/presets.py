"""Standard scan set-ups used by the demo, the command line and the benchmarks."""
from __future__ import annotations

import math

from .._validation import integer
from ..geometry import ConeBeamGeometry

__all__ = ["standard_cone_beam", "scan_for_volume"]


def standard_cone_beam(size: int, n_views: int, scan: str = "full") -> ConeBeamGeometry:
    """A circular cone-beam scan of a ``size^3`` volume of 1 mm voxels.

    Source-axis distance ``4 size`` mm, axis-detector ``2 size`` mm (magnification 1.5), a
    ``1.25 size x 1.5 size`` detector of 1.5 mm pixels that sees the whole volume.
    """
    size = integer("size", size, 4)
    det = (int(round(1.25 * size)), int(round(1.5 * size)))
    return ConeBeamGeometry.circular(n_views, 4.0 * size, 2.0 * size, det, 1.5, (size,) * 3, scan=scan)


def scan_for_volume(vol_shape, voxel_size, n_views: int, scan: str = "full") -> ConeBeamGeometry:
    """A circular cone-beam scan that sees the whole of a given volume (used by ``unrolled3d simulate --volume``).

    The proportions of :func:`unrolled3d.physics.presets.standard_cone_beam`, scaled to the
    volume's largest physical extent ``L`` (mm): source-axis ``4 L``, axis-detector ``2 L``,
    detector pixels of 1.5 times the smallest voxel edge (the magnification), and enough of them
    that the shadow of the volume's bounding cylinder ends at least one pixel before the edge.
    """
    (d, h, w), (sz, sy, sx) = vol_shape, voxel_size
    extent = max(d * sz, h * sy, w * sx)
    sod, odd = 4.0 * extent, 2.0 * extent
    pitch = 1.5 * min(voxel_size)
    r_xy, half_z = 0.5 * math.hypot(h * sy, w * sx), 0.5 * d * sz
    # Half-widths of the shadow on the detector: in-plane tangent to the cylinder, and its
    # top edge at the point closest to the source (largest magnification).
    half_u = r_xy * (sod + odd) / math.sqrt(sod**2 - r_xy**2)
    half_v = half_z * (sod + odd) / (sod - r_xy)
    # Even counts: ceil(half / pitch) pixels on each side of the centre cover the shadow, plus
    # one empty pixel at each edge.
    det = (2 * math.ceil(half_v / pitch) + 2, 2 * math.ceil(half_u / pitch) + 2)
    return ConeBeamGeometry.circular(n_views, sod, odd, det, pitch, vol_shape, voxel_size=voxel_size, scan=scan)
