"""Cone-beam CT physics: the deepinv ``ConeBeamCT`` operator, FDK, the deepinv/ASTRA drop-in, scan
presets, and the patch operator of any physics.

* :mod:`.cone_beam` - :class:`ConeBeamCT` (``LinearPhysics`` on the C++/CUDA projector pair);
* :mod:`.fdk` - Feldkamp-Davis-Kress reconstruction (circular and vector geometries);
* :mod:`.compat` - :class:`TomographyWithAstra`, deepinv's class on our projector;
* :mod:`.presets` - standard scans of the demo, the command line and the benchmarks;
* :mod:`.patch` - ``A S^T`` of any ``LinearPhysics``.

:class:`~unrolled3d.geometry.ConeBeamGeometry` lives in :mod:`unrolled3d.geometry` (the
projector op needs it too) and is re-exported here.
"""
from ..geometry import CircularTrajectory, ConeBeamGeometry
from .compat import TomographyWithAstra, cone_beam_geometry_from_deepinv
from .cone_beam import ConeBeamCT, ConeBeamPatch, from_astra_layout, to_astra_layout
from .fdk import FDK_WINDOWS, fdk, ramp_filter_response
from .patch import ZeroPaddedPatchPhysics, patch_measurements
from .presets import scan_for_volume, standard_cone_beam

__all__ = [
    "ConeBeamGeometry", "CircularTrajectory", "ConeBeamCT", "ConeBeamPatch", "fdk", "ramp_filter_response", "FDK_WINDOWS",
    "to_astra_layout", "from_astra_layout", "TomographyWithAstra", "cone_beam_geometry_from_deepinv",
    "ZeroPaddedPatchPhysics", "patch_measurements", "standard_cone_beam", "scan_for_volume",
]
