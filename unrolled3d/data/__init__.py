"""Data: analytic phantoms made on the fly, datasets of phantoms and of volume files, and the
reader of the Walnut cone-beam CT data.

* :mod:`.phantoms` - ellipsoid phantoms (Shepp-Logan, balls, random blobs), their voxelisation
  and exact line integrals;
* :mod:`.complex_phantoms` - complex MRI volumes (magnitude times a smooth phase);
* :mod:`.datasets` - :class:`PhantomDataset`, :class:`VolumeFileDataset`;
* :mod:`.crops` - :class:`RandomCropDataset`: random sub-volumes of volume files, read lazily;
* :mod:`.normalization` - :class:`IntensityNormalization` (attenuation, HU, percentile);
* :mod:`.augment` - :class:`Augmentation` (flips, quarter turns, intensity scaling);
* :mod:`.sources` - :func:`expand_volume_paths` (files, folders, globs), :func:`split_by_file`;
* :mod:`.walnut` - the Walnut CBCT projections and geometry.
"""
from .augment import Augmentation
from .complex_phantoms import ComplexPhantomDataset, smooth_phase
from .crops import Crop, RandomCropDataset
from .datasets import PhantomDataset, VolumeFileDataset
from .phantoms import (
    Ellipsoid,
    ball,
    line_integrals,
    phantom_volume_integral,
    random_ellipsoids,
    shepp_logan_3d,
    voxelize,
)
from .normalization import IntensityNormalization
from .sources import expand_volume_paths, split_by_file
from .walnut import read_walnut, read_walnut_geometry

__all__ = [
    "Augmentation",
    "ComplexPhantomDataset",
    "Crop",
    "IntensityNormalization",
    "RandomCropDataset",
    "expand_volume_paths",
    "split_by_file",
    "Ellipsoid",
    "PhantomDataset",
    "VolumeFileDataset",
    "ball",
    "line_integrals",
    "phantom_volume_integral",
    "random_ellipsoids",
    "read_walnut",
    "read_walnut_geometry",
    "shepp_logan_3d",
    "smooth_phase",
    "voxelize",
]
