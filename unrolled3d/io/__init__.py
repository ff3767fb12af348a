"""Files: volumes in common formats, the command line's measurement and model files, atomic writes.

* :mod:`.atomic` - :func:`atomic_path` (write to a temporary file, rename over the target);
* :mod:`.volumes` - :func:`read_volume` / :func:`write_volume` (npy, NIfTI, HDF5, TIFF, pt) with
  the voxel size;
* :mod:`.files` - measurements (+ geometry) and trained model files.
"""
from .atomic import atomic_path
from .files import load_measurements, load_model, load_volume, save_measurements, save_model, save_volume
from .volumes import SUPPORTED_EXTENSIONS, read_volume, volume_format, write_volume

__all__ = [
    "atomic_path", "read_volume", "write_volume", "volume_format", "SUPPORTED_EXTENSIONS", "save_measurements",
    "load_measurements", "save_volume", "load_volume", "save_model", "load_model",
]
