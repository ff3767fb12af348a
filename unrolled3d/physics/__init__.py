"""Physics: cone-beam geometry, the deepinv ``ConeBeamCT`` operator and FDK."""
from .cone_beam import ConeBeamCT, from_astra_layout, to_astra_layout
from .fdk import FDK_WINDOWS, fdk, ramp_filter_response
from ..geometry import CircularTrajectory, ConeBeamGeometry

__all__ = [
    "ConeBeamGeometry", "CircularTrajectory", "ConeBeamCT", "fdk", "ramp_filter_response", "FDK_WINDOWS",
    "to_astra_layout", "from_astra_layout",
]
