"""Synthetic data: analytic ellipsoid phantoms (Shepp-Logan, balls, random blobs), complex MRI volumes."""
from .complex_phantoms import ComplexPhantomDataset, smooth_phase
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
    "ComplexPhantomDataset",
    "Ellipsoid",
    "ball",
    "line_integrals",
    "phantom_volume_integral",
    "random_ellipsoids",
    "shepp_logan_3d",
    "smooth_phase",
    "voxelize",
]
