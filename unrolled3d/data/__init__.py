"""Synthetic data: analytic ellipsoid phantoms (Shepp-Logan, balls, random blobs)."""
from .phantoms import (
    Ellipsoid,
    ball,
    line_integrals,
    phantom_volume_integral,
    random_ellipsoids,
    shepp_logan_3d,
    voxelize,
)

__all__ = [
    "Ellipsoid",
    "ball",
    "line_integrals",
    "phantom_volume_integral",
    "random_ellipsoids",
    "shepp_logan_3d",
    "voxelize",
]
