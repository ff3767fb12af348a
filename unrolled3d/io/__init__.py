"""Files: volumes in common formats, the command line's measurement and model files, atomic writes.

* :mod:`.atomic` - :func:`atomic_path` (write to a temporary file, fsync, rename over the target,
  fsync the folder), and the rules of outputs (symbolic links, read-only files, inputs);
* :mod:`.volumes` - :func:`read_volume` / :func:`write_volume` (npy, NIfTI, HDF5, TIFF, pt) with
  the voxel size, and :func:`read_spatial` (the affine, :class:`Spatial`, from :mod:`.spatial`);
* :mod:`.npy_pair` - an ``.npy`` volume and its ``.json`` sidecar written as one;
* :mod:`.hdf5` - HDF5 read safely (nothing outside the file, no plug-in filters, costed reads);
* :mod:`.limits` - a file's declared size against the machine's memory;
* :mod:`.lazy` - :class:`LazyVolume`: regions of a volume file read without reading the file;
* :mod:`.files` - measurements (+ geometry) and trained model files;
* :mod:`.kspace_files` - MRI k-space files (+ coil maps, mask, the volume's grid).
"""
from .atomic import (atomic_path, check_not_input, fsync_folder, remove_stale_temporaries, resolve_output,
                     stale_temporaries)
from .files import (check_pt_name, load_measurements, load_model, load_torch_file, load_volume, save_measurements,
                    save_model, save_volume)
from .kspace_files import KSPACE_FORMAT, KspaceScan, file_kind, load_kspace, save_kspace
from .lazy import LazyVolume
from .spatial import Spatial
from .volumes import (SUPPORTED_EXTENSIONS, check_volume_target, read_spatial, read_volume, sniff_format,
                      volume_files, volume_format, write_volume)

__all__ = [
    "atomic_path", "fsync_folder", "resolve_output", "check_not_input", "stale_temporaries",
    "remove_stale_temporaries", "read_volume", "write_volume", "volume_format", "volume_files", "check_volume_target",
    "sniff_format",
    "SUPPORTED_EXTENSIONS", "save_measurements", "load_measurements", "save_volume", "load_volume", "save_model",
    "load_model", "load_torch_file", "check_pt_name", "LazyVolume", "Spatial", "read_spatial",
    "save_kspace", "load_kspace", "file_kind", "KspaceScan", "KSPACE_FORMAT",
]
