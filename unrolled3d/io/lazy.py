"""Volume files read region by region: a sub-volume of a large file without reading the file.

:func:`~unrolled3d.io.read_volume` loads a whole volume; training on random sub-volumes of large
scans needs only a crop of each, so :class:`LazyVolume` opens a file, reads its header (shape,
dtype, voxel size) and then reads regions ``[z0:z1, y0:y1, x0:x1]`` (optionally strided) through
each format's own partial access, so that memory stays flat in the size of the file:

=========  ======================================================================================
format     how a region is read
=========  ======================================================================================
npy        ``np.load(mmap_mode="r")``: a memory map, only the region's pages are touched
NIfTI      nibabel's ``dataobj`` array proxy, sliced (``.nii``: a memory map; ``.nii.gz``: the
           stream is decompressed up to the region, in chunks, never held whole)
HDF5       the h5py dataset sliced (only the chunks holding the region are read; a read that would
           touch too many chunks is refused, see :mod:`unrolled3d.io.hdf5`)
TIFF       the region's pages only (``tifffile``, ``key=`` the page numbers), then cropped
pt         ``torch.load(mmap=True, weights_only=True)``: the tensor's storage is mapped
=========  ======================================================================================

The layouts, axis orders and voxel sizes are those of :mod:`unrolled3d.io.volumes` (a region of
``LazyVolume(p)`` equals the same crop of ``read_volume(p)[0]``, as float32). HDF5 files hold
the volume in the dataset ``key`` (default ``"volume"``, as :func:`~unrolled3d.io.write_volume`
writes it); a ``.pt`` file holds ``{"volume": tensor, "voxel_size": ...}`` or a bare tensor.
Files are opened anew for every read (no handle kept: the object pickles into DataLoader
workers, and a file replaced between reads is seen as it is now).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._validation import int_triple, int_tuple
from ..errors import FileFormatError, first_line
from . import hdf5
from .volumes import (VoxelSize, _check_magic, _check_tiff_pages, _file_voxel_size, _float32_decimal,
                      _format_of, _h5_dataset, _h5_open, _import, _npy_voxel_size, _quiet_logger, _require_file,
                      _tiff_stack, _tiff_voxel_size, describe_load_error, read_spatial)
from .spatial import Spatial

__all__ = ["LazyVolume"]

Region = tuple[slice, slice, slice]


def _check_header(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int, int]:
    if dtype.kind not in "biuf":
        raise FileFormatError(path, f"the volume has a non-numeric or complex dtype {dtype} (expected real numbers)")
    if len(shape) != 3:
        raise FileFormatError(path, f"expected a 3D volume (D, H, W), got {len(shape)} dimensions {tuple(shape)}")
    if 0 in shape:
        raise FileFormatError(path, f"the volume is empty, shape {tuple(shape)}")
    d, h, w = shape  # 3 entries, checked above
    return int(d), int(h), int(w)


# --------------------------------------------------------------------------- per format: header, region
def _npy_map(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # truncated ("mmap length is greater than file size"), object dtype, corrupt header
        raise FileFormatError(path, f"not a readable .npy volume (truncated or corrupt: {first_line(exc)})") from None
    if not isinstance(arr, np.ndarray):
        raise FileFormatError(path, "not a single .npy array")
    return arr


def _npy_header(path: Path, key: str | None) -> tuple[tuple[int, int, int], np.dtype, VoxelSize]:
    arr = _npy_map(path)
    shape = _check_header(path, arr.shape, arr.dtype)
    return shape, arr.dtype, _npy_voxel_size(path, shape)


def _npy_region(path: Path, key: str | None, region: Region) -> np.ndarray:
    return np.array(_npy_map(path)[region], dtype=np.float32)  # copies only the region out of the map


def _nifti_image(path: Path):
    nib = _import("nibabel")
    try:
        return nib.load(str(path))  # header only: the data stay behind img.dataobj
    except Exception as exc:
        raise FileFormatError(path, f"not a readable NIfTI volume (truncated or corrupt: {first_line(exc)})") from None


def _nifti_spatial(path: Path, shape: tuple[int, ...]) -> int:
    """How many trailing singleton axes follow the 3 spatial ones (``(x, y, z, 1)`` is a volume)."""
    extra = len(shape) - 3
    if extra < 0 or any(n != 1 for n in shape[3:]):
        raise FileFormatError(path, f"expected a 3D volume, got a NIfTI array of shape {tuple(shape)}")
    return extra


def _nifti_header(path: Path, key: str | None) -> tuple[tuple[int, int, int], np.dtype, VoxelSize]:
    img = _nifti_image(path)
    _nifti_spatial(path, img.shape)
    sx, sy, sz = img.shape[:3]
    shape = _check_header(path, (sz, sy, sx), img.get_data_dtype())
    zooms = img.header.get_zooms()
    if len(zooms) < 3:
        raise FileFormatError(path, f"the NIfTI header has {len(zooms)} zooms, expected 3")
    zx, zy, zz = (_float32_decimal(z) for z in zooms[:3])
    return shape, img.get_data_dtype(), _file_voxel_size(path, (zz, zy, zx), "NIfTI zooms")


def _nifti_region(path: Path, key: str | None, region: Region) -> np.ndarray:
    img = _nifti_image(path)
    extra = _nifti_spatial(path, img.shape)
    zs, ys, xs = region
    try:  # NIfTI's array is (x, y, z): the region reversed, scaling (scl_slope) applied by nibabel
        block = img.dataobj[(xs, ys, zs) + (0,) * extra]
    except Exception as exc:
        raise FileFormatError(path, f"the NIfTI data cannot be read (truncated or corrupt: {first_line(exc)})") from None
    return np.ascontiguousarray(np.asarray(block).transpose(2, 1, 0), dtype=np.float32)


def _h5_header(path: Path, key: str | None) -> tuple[tuple[int, int, int], np.dtype, VoxelSize]:
    with _h5_open(path) as f:
        ds = _h5_dataset(path, f, key)
        shape = _check_header(path, ds.shape, ds.dtype)
        raw_vs = ds.attrs.get("voxel_size", (1.0, 1.0, 1.0))
        return shape, ds.dtype, _file_voxel_size(path, raw_vs, "attribute voxel_size")


def _h5_region(path: Path, key: str | None, region: Region) -> np.ndarray:
    with _h5_open(path) as f:
        # h5py reads the chunks of the region only; a layout of tiny chunks is refused, not waited on
        return np.asarray(hdf5.read_region(path, _h5_dataset(path, f, key), region), dtype=np.float32)


def _tiff_header(path: Path, key: str | None) -> tuple[tuple[int, int, int], np.dtype, VoxelSize]:
    tifffile = _import("tifffile")
    try:
        with _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
            series, shaped, page_shape, ij_vs = _tiff_stack(tif)
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
    except Exception as exc:
        raise FileFormatError(path, f"not a readable TIFF stack (truncated or corrupt: {first_line(exc)})") from None
    _check_tiff_pages(path, page_shape)
    return _check_header(path, shape, dtype), dtype, _tiff_voxel_size(path, shaped, ij_vs)


def _tiff_region(path: Path, key: str | None, region: Region) -> np.ndarray:
    tifffile = _import("tifffile")
    zs, ys, xs = region
    try:
        with _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
            pages = range(tif.series[0].shape[0])[zs]
            # one page at a time, cropped at once: never more than one full page in memory
            out = [np.asarray(tif.asarray(key=int(k), series=0)[ys, xs], dtype=np.float32) for k in pages]
    except Exception as exc:
        raise FileFormatError(path, f"the TIFF stack cannot be read (truncated or corrupt: {first_line(exc)})") from None
    return np.stack(out)


def _pt_load(path: Path) -> tuple[torch.Tensor, Any]:
    """The mapped volume tensor of a ``.pt`` file and its raw voxel size (``None``: not stated)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a legacy (non-zip) file cannot be mapped, a truncated zip, ...
        raise FileFormatError(path, f"not a memory-mappable .pt volume (an old non-zip torch file, or "
                                    f"{describe_load_error(exc)})") from None
    vol = obj.get("volume") if isinstance(obj, dict) else obj
    if not isinstance(vol, torch.Tensor):
        raise FileFormatError(path, "expected a tensor, or a dict with a tensor 'volume' (as write_volume saves it)")
    return vol, obj.get("voxel_size") if isinstance(obj, dict) else None


def _pt_header(path: Path, key: str | None) -> tuple[tuple[int, int, int], np.dtype, VoxelSize]:
    vol, raw_vs = _pt_load(path)
    if vol.is_complex() or vol.dtype in (torch.bfloat16, torch.float16):
        dtype = np.dtype("complex64") if vol.is_complex() else np.dtype("float16")  # numpy has no bfloat16
    else:
        dtype = torch.empty(0, dtype=vol.dtype).numpy().dtype
    shape = _check_header(path, tuple(vol.shape), dtype)
    if raw_vs is None:
        raw_vs = (1.0, 1.0, 1.0)
    elif isinstance(raw_vs, torch.Tensor) and raw_vs.dtype == torch.float32:
        raw_vs = [_float32_decimal(v) for v in raw_vs.reshape(-1).tolist()]  # as read_volume gives it back
    return shape, dtype, _file_voxel_size(path, raw_vs, "voxel_size")


def _pt_region(path: Path, key: str | None, region: Region) -> np.ndarray:
    # slicing the mapped tensor is a view; .to(float32) copies the region only
    return _pt_load(path)[0][region].to(torch.float32).clone(memory_format=torch.contiguous_format).numpy()


_HEADERS = {"npy": _npy_header, "nifti": _nifti_header, "hdf5": _h5_header, "tiff": _tiff_header, "pt": _pt_header}
_REGIONS = {"npy": _npy_region, "nifti": _nifti_region, "hdf5": _h5_region, "tiff": _tiff_region, "pt": _pt_region}


# --------------------------------------------------------------------------- public
class LazyVolume:
    r"""A volume file opened for reading regions of it, not the whole (see the module docstring).

    Parameters
    ----------
    path : str or path-like
        A volume file (``.npy``, ``.nii``, ``.nii.gz``, ``.h5``/``.hdf5``, ``.tif``/``.tiff``, ``.pt``);
        its header is read and checked now.
    key : str, optional
        HDF5 only: the dataset holding the volume ``[z, y, x]`` (default ``"volume"``).

    Attributes
    ----------
    path : pathlib.Path
    format : str
        ``"npy"``, ``"nifti"``, ``"hdf5"``, ``"tiff"`` or ``"pt"``.
    shape : (int, int, int)
        ``(D, H, W)`` in voxels.
    dtype : numpy.dtype
        the dtype on disk (regions are returned as float32).
    voxel_size : (float, float, float)
        ``(sz, sy, sx)`` in mm (1 mm where the file does not say).

    Raises
    ------
    FileNotFoundError
        no such file.
    FileFormatError
        unknown ending, truncated or corrupt header, not 3D, non-numeric dtype, missing HDF5
        dataset, a ``key`` given for another format; the message names the file.

    Examples
    --------
    >>> import os, tempfile
    >>> import torch
    >>> from unrolled3d.io import LazyVolume, write_volume
    >>> path = os.path.join(tempfile.mkdtemp(), "scan.h5")
    >>> write_volume(path, torch.arange(4 * 5 * 6.0).reshape(4, 5, 6), voxel_size=(2.0, 0.5, 0.5))
    >>> vol = LazyVolume(path)
    >>> vol.shape, vol.voxel_size
    ((4, 5, 6), (2.0, 0.5, 0.5))
    >>> vol.read((1, 0, 2), (2, 2, 3)).tolist()[0]      # the block [1:3, 0:2, 2:5]
    [[32.0, 33.0, 34.0], [38.0, 39.0, 40.0]]
    """

    def __init__(self, path: str | os.PathLike, key: str | None = None) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file name (str or path), got {type(path).__name__}")
        self.path = Path(path)
        try:
            self.format = _format_of(self.path)
        except ValueError as exc:
            raise FileFormatError(self.path, str(exc)) from None
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a string (an HDF5 dataset name) or None, got {key!r}")
        if key is not None and self.format != "hdf5":
            raise FileFormatError(self.path, f"key={key!r} names an HDF5 dataset, but this is a {self.format} file")
        self.key = key
        _require_file(self.path)
        _check_magic(self.path, self.format)
        self.shape, self.dtype, self.voxel_size = _HEADERS[self.format](self.path, key)

    def __repr__(self) -> str:
        return f"LazyVolume({str(self.path)!r}, shape={self.shape}, format={self.format!r})"

    @property
    def spatial(self) -> Spatial:
        """Where the volume lies in space (:func:`unrolled3d.io.read_spatial` of the file)."""
        if self.format == "hdf5" and self.key is not None:
            from .volumes import _h5_spatial

            return _h5_spatial(self.path, self.key)
        return read_spatial(self.path)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole volume on disk (uncompressed), for reports."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def read(self, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """The block ``[z0:z0+d, y0:y0+h, x0:x0+w]`` as a new float32 array ``(d, h, w)``.

        ``start`` ``(z0, y0, x0)`` and ``size`` ``(d, h, w)`` in voxels; the block must lie
        inside the volume (``ValueError`` otherwise: nothing is clipped or padded here).
        """
        start = int_tuple("start", start, 3, minimum=0)
        size = int_triple("size", size)
        for axis, s0, n, full in zip("zyx", start, size, self.shape):
            if s0 < 0 or n < 1 or s0 + n > full:
                raise ValueError(f"the block start={tuple(start)} size={tuple(size)} leaves the volume {self.shape} "
                                 f"of {self.path} (axis {axis})")
        (z0, y0, x0), (d, h, w) = start, size
        region = (slice(z0, z0 + d), slice(y0, y0 + h), slice(x0, x0 + w))
        return _REGIONS[self.format](self.path, self.key, region)

    def sample(self, max_voxels: int = 2**21) -> np.ndarray:
        """A regular sub-sample of the whole volume (every ``k``-th voxel on each axis, the
        smallest ``k`` giving at most ``max_voxels``), float32 ``(d, h, w)``: what statistics
        such as a percentile are computed from without reading the file whole.

        A chunked HDF5 file whose chunks such a sample would visit by the thousand (tiny chunks,
        or a huge declared size) gives whole chunks on a regular grid of chunks instead, flattened
        to ``(1, 1, n)``, and a layout no sample can read in bounded time is refused
        (:func:`unrolled3d.io.hdf5.sample`)."""
        if isinstance(max_voxels, bool) or not isinstance(max_voxels, int) or max_voxels < 1:
            raise ValueError(f"max_voxels must be a positive integer, got {max_voxels!r}")
        if self.format == "hdf5":
            with _h5_open(self.path) as f:
                return hdf5.sample(self.path, _h5_dataset(self.path, f, self.key), max_voxels)
        k = 1
        while int(np.prod([-(-n // k) for n in self.shape])) > max_voxels:
            k += 1
        region = (slice(None, None, k),) * 3
        return _REGIONS[self.format](self.path, self.key, region)
