"""Volumes on disk: read and write ``(D, H, W)`` volumes with their voxel size, format by extension.

Every format stores the array ``[z, y, x]`` = ``(D, H, W)`` of the package (see
:mod:`unrolled3d.geometry`) and the voxel size ``(sz, sy, sx)`` in mm:

============================  ====================================================================
extension                     layout
============================  ====================================================================
``.npy``                      the array as is; voxel size in a sidecar ``<name>.json``
                              (``{"voxel_size_zyx_mm": [sz, sy, sx], "shape": [D, H, W],
                              "affine_xyz": ..., "data": ...}``, the same sidecar as
                              :func:`unrolled3d.io.save_volume`); no sidecar on reading means
                              1 mm voxels. The pair is written as one, and read only when the
                              sidecar's record of the data (size, SHA-256) is the file's
                              (:mod:`unrolled3d.io.npy_pair`).
``.nii``, ``.nii.gz``         NIfTI-1 (nibabel). NIfTI's data array is indexed ``(i, j, k)`` with
                              ``i`` varying fastest; we store ``i = x`` (W), ``j = y`` (H),
                              ``k = z`` (D), i.e. the NIfTI array is ``volume.permute(2, 1, 0)`` and
                              the zooms (``pixdim[1:4]``) are ``(sx, sy, sz)``; the affine is
                              ``diag(sx, sy, sz, 1)`` (sform code 2), or the ``spatial`` one given
                              (sform and qform, with its frame code); the spatial unit is mm.
                              Reading applies the same mapping by index and does **not** reorient
                              by the affine (:func:`read_spatial` returns it).
                              Trailing singleton dimensions (``(x, y, z, 1)``) are accepted.
``.h5``, ``.hdf5``            HDF5 (h5py): dataset ``volume`` ``[z, y, x]`` in chunks of up to
                              ``64^3``, gzip level 4 with byte shuffling, with attributes
                              ``voxel_size = (sz, sy, sx)``, ``affine`` (4 x 4, index ``(x, y, z)``
                              to world mm), ``frame_code``, ``axes = "zyx"``, ``unit = "mm"``; no
                              attribute on reading means 1 mm voxels. Read safely
                              (:mod:`unrolled3d.io.hdf5`: nothing outside the file, no plug-in
                              filters, sizes and chunk layouts costed before reading).
``.tif``, ``.tiff``           one multi-page TIFF (tifffile), page ``k`` = slice ``z = k``. float32
                              volumes are ImageJ hyperstacks: Fiji opens them as z-stacks with
                              their voxel size (``spacing = sz``, X/YResolution ``1/sx``, ``1/sy``,
                              ``unit = mm``, ``x/y/zorigin`` for an axis-aligned affine), and the
                              description also holds ``unrolled3d = {JSON}`` with the exact voxel
                              size and affine. ImageJ has no float64: float64 volumes (and voxel
                              sizes outside 1e-9 to 1e9 mm) keep tifffile's "shaped" JSON description
                              ``{"shape": [D, H, W], "voxel_size_zyx_mm": [sz, sy, sx], ...}``.
                              On reading: our JSON, else ImageJ's ``spacing`` and resolution (as
                              Fiji writes them), else 1 mm.
``.pt``                       ``torch.save({"volume": tensor, "voxel_size": tensor(sz, sy, sx),
                              "affine": tensor (4, 4), "frame_code": int})``, the format
                              :func:`unrolled3d.io.save_volume` writes.
============================  ====================================================================

Values: float32 and float64 volumes round-trip exactly in every format. Other real dtypes are
written as float32; readers return float64 for float64 data and float32 for every other real
dtype (integers, float16, bool). NIfTI-1 keeps the zooms as float32: the reader returns the
shortest decimal that rounds to that float32, so decimal voxel sizes such as 0.1 or 0.1496 come
back exactly, and any other value to float32 precision (about 6e-8 relative).

Writes are atomic and durable (:func:`unrolled3d.io.atomic_path`): a temporary file beside the
target, synced, renamed over it, the folder synced; a crash never leaves a half-written volume,
and a full disk is one ``OSError`` line, "no space left on the device writing FILE". Readers check
a file's declared size against the machine's memory before allocating anything for it.
A symbolic link is written through, a replaced file keeps its mode, a read-only file is refused
(``PermissionError``), and an ``X.json`` that is not a voxel-size sidecar is never replaced by the
sidecar of ``X.npy`` (``FileExistsError``); ``force=True`` allows both. Readers check what they
read and raise :class:`~unrolled3d.errors.FileFormatError` (a ``ValueError``) naming the file and
the problem (truncated or corrupt file, bytes of another format than the ending says, wrong
number of dimensions, missing dataset, non-numeric dtype), ``FileNotFoundError`` for a missing
file. A ``.json`` beside an ``.npy`` that is not a sidecar (no voxel size key) is ignored with a
warning. The format libraries (tifffile, h5py, nibabel) are imported only when used.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import FileFormatError, first_line
from . import hdf5
from .atomic import atomic_path, check_not_input, resolve_output
from .limits import check_declared_size
from .npy_pair import SIDECAR_KEY, is_our_sidecar, read_record, sidecar_of, write_pair, write_sidecar
from .spatial import Spatial

__all__ = ["read_volume", "write_volume", "read_spatial", "volume_format", "volume_files", "check_volume_target",
           "sniff_format", "write_npy_sidecar", "check_tensor_size", "describe_load_error", "SUPPORTED_EXTENSIONS"]

#: File name endings understood by :func:`read_volume` and :func:`write_volume`.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".npy", ".nii", ".nii.gz", ".h5", ".hdf5", ".tif", ".tiff", ".pt")

_SIDECAR_KEY = SIDECAR_KEY

VoxelSize = tuple[float, float, float]


# --------------------------------------------------------------------------- helpers
def _format_of(path: Path) -> str:
    """The format key for ``path`` from its (case-insensitive) ending."""
    name = path.name.lower()
    # ".nii.gz" first: Path.suffix would only see ".gz".
    for ext, fmt in ((".nii.gz", "nifti"), (".nii", "nifti"), (".npy", "npy"), (".h5", "hdf5"), (".hdf5", "hdf5"),
                     (".tif", "tiff"), (".tiff", "tiff"), (".pt", "pt")):
        if name.endswith(ext):
            return fmt
    raise ValueError(f"unknown volume file type {path.name!r}: supported endings are {', '.join(SUPPORTED_EXTENSIONS)}")


def _import(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"reading/writing this volume format needs the package {module!r}: "
                          f"pip install {module}") from None


def _check_voxel_size(voxel_size: Any, where: str = "voxel_size") -> VoxelSize:
    """Three finite positive floats ``(sz, sy, sx)``; a single number means cubic voxels."""
    if isinstance(voxel_size, torch.Tensor):
        voxel_size = voxel_size.detach().cpu().reshape(-1).tolist()
    elif isinstance(voxel_size, np.ndarray):
        voxel_size = voxel_size.reshape(-1).tolist()
    if isinstance(voxel_size, (int, float, np.integer, np.floating)) and not isinstance(voxel_size, bool):
        voxel_size = (voxel_size,) * 3
    try:
        vs = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise TypeError(f"{where} must be a number or 3 numbers (sz, sy, sx) in mm, got {voxel_size!r}") from None
    if len(vs) != 3:
        raise ValueError(f"{where} must have 3 entries (sz, sy, sx), got {len(vs)}")
    if not all(math.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"{where} must be finite and positive, got {vs}")
    return vs  # a 3-tuple: its length is checked above


def _file_voxel_size(path: Path, value: Any, what: str) -> VoxelSize:
    """A voxel size read from a file: any problem is the file's, so a ValueError naming it."""
    try:
        return _check_voxel_size(value, what)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(path, f"{exc}") from None


def _as_array(volume: Any) -> np.ndarray:
    """The writer's input as a C-contiguous float32/float64 ``(D, H, W)`` array."""
    if isinstance(volume, torch.Tensor):
        if volume.is_complex():
            raise TypeError(f"volume must be real, got dtype {volume.dtype}")
        t = volume.detach().cpu()
        if t.dtype not in (torch.float32, torch.float64):
            t = t.to(torch.float32)  # numpy has no bfloat16; every other real dtype becomes float32
        arr = t.numpy()
    elif isinstance(volume, np.ndarray):
        arr = volume
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"volume must have a real numeric dtype, got {arr.dtype}")
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float32)
    else:
        raise TypeError(f"volume must be a torch.Tensor or numpy.ndarray, got {type(volume).__name__}")
    # [1, 1, D, H, W] (a network output) is accepted; a real batch is not.
    if arr.ndim < 3 or any(n != 1 for n in arr.shape[:-3]):
        raise ValueError(f"volume must have shape (D, H, W) (leading singleton dimensions allowed), "
                         f"got {tuple(arr.shape)}")
    arr = arr.reshape(arr.shape[-3:])
    if 0 in arr.shape:
        raise ValueError(f"volume must not be empty, got shape {tuple(arr.shape)}")
    # Native byte order: some formats (NIfTI) would otherwise store a byte-swapped copy.
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))


def _to_tensor(path: Path, arr: np.ndarray, keep_float64: bool | None = None) -> torch.Tensor:
    """A checked 3D array read from ``path`` as a float32/float64 tensor."""
    if arr.dtype.kind not in "biuf":
        raise FileFormatError(path, f"the volume has a non-numeric or complex dtype {arr.dtype} "
                         f"(expected real numbers)")
    if arr.ndim != 3:
        raise FileFormatError(path, f"expected a 3D volume (D, H, W), got {arr.ndim} dimensions {tuple(arr.shape)}")
    if 0 in arr.shape:
        raise FileFormatError(path, f"the volume is empty, shape {tuple(arr.shape)}")
    f64 = arr.dtype == np.float64 if keep_float64 is None else keep_float64
    out = np.ascontiguousarray(arr, dtype=np.float64 if f64 else np.float32)
    # A memory map (nibabel maps uncompressed .nii files) or a read-only buffer must not back
    # the returned tensor: copy those; fresh arrays are handed over without a copy.
    if not out.flags.writeable or isinstance(out, np.memmap):
        out = np.array(out)
    return torch.from_numpy(out)


# The first bytes of each format, to refuse a file whose content contradicts its ending (a torch
# zip named .npy, a NumPy array named .pt) with a message that says so.
_MAGIC: tuple[tuple[str, bytes], ...] = (
    ("npy", b"\x93NUMPY"), ("pt", b"PK\x03\x04"), ("hdf5", b"\x89HDF\r\n\x1a\n"), ("tiff", b"II*\x00"),
    ("tiff", b"MM\x00*"), ("tiff", b"II+\x00"), ("tiff", b"MM\x00+"), ("nifti", b"\x1f\x8b"),
)
_FORMAT_NAMES = {"npy": "a NumPy .npy array", "pt": "a torch/zip archive", "hdf5": "an HDF5 file",
                 "tiff": "a TIFF image", "nifti": "a gzip stream (.nii.gz)"}


def sniff_format(path: str | os.PathLike) -> str | None:
    """The format the first bytes of a file show (``"npy"``, ``"pt"`` for any zip archive,
    ``"hdf5"``, ``"tiff"``, ``"nifti"`` for gzip), ``None`` when they show none of these."""
    with open(path, "rb") as f:
        head = f.read(8)
    for fmt, magic in _MAGIC:
        if head.startswith(magic):
            return fmt
    return None


def _check_magic(path: Path, fmt: str) -> None:
    found = sniff_format(path)
    if found is not None and found != fmt:
        raise FileFormatError(path, f"holds {_FORMAT_NAMES[found]}, not the {fmt} format its ending names "
                                    f"(renamed file?)")


def _require_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"volume file {path} does not exist")
    if not path.is_file():
        raise FileFormatError(path, "not a file")


# --------------------------------------------------------------------------- .npy (+ .json)
def _sidecar(path: Path, reading: bool = False) -> Path:
    return sidecar_of(path, reading)


def _is_our_sidecar(side: Path) -> bool:
    """``side`` holds a voxel-size sidecar (JSON object with our key), not some other JSON file."""
    return is_our_sidecar(side)


def _check_sidecar_target(path: Path, force: bool) -> None:
    """Writing ``X.npy`` also writes ``X.json``: refuse when that name holds an unrelated file."""
    side = _sidecar(path)
    if side.exists() and not force and not _is_our_sidecar(side):
        raise FileExistsError(f"{side} exists and is not the voxel-size sidecar of {path.name}: writing {path.name} "
                              f"would replace it (remove or rename it, choose another name, or force the "
                              f"replacement)")


def _sidecar_record(spatial: Spatial, shape: Sequence[int]) -> dict[str, Any]:
    """What an ``.npy`` volume's sidecar says of it (its identity is added by :mod:`.npy_pair`)."""
    return {**spatial.to_dict(), "shape": [int(n) for n in shape], "axes": "zyx", "unit": "mm"}


def _write_npy(path: Path, arr: np.ndarray, spatial: Spatial, force: bool = False) -> None:
    _check_sidecar_target(path, force)
    resolve_output(_sidecar(path), replace_read_only=force)  # a read-only sidecar fails before the volume
    # the sidecar is always (re)written, so a stale one from an older volume never survives
    write_pair(path, arr, _sidecar_record(spatial, arr.shape), force=force)


def write_npy_sidecar(path: str | os.PathLike, voxel_size: Sequence[float] | None, shape: Sequence[int],
                      force: bool = False, spatial: Spatial | None = None,
                      data_file: str | os.PathLike | None = None) -> None:
    """The voxel-size sidecar ``X.json`` of the volume ``X.npy`` (e.g. one written block by block),
    recording the identity of ``data_file`` (default ``X.npy``: the data that is, or is about to
    be renamed to, ``X.npy``; see :mod:`unrolled3d.io.npy_pair`). ``spatial`` replaces
    ``voxel_size`` when the volume's affine is known."""
    spatial = _spatial_of(voxel_size, spatial)
    write_sidecar(path, _sidecar_record(spatial, shape), data_file=data_file, force=force)


def _npy_record(path: Path, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """The sidecar record of an ``.npy`` file (``None``: none), checked against its shape."""
    record = read_record(path)
    if record is None:
        return None
    side = _sidecar(path, True)
    if "shape" in record and (not isinstance(record["shape"], list) or record["shape"] != list(shape)):
        raise FileFormatError(side, f"describes a volume of shape {record['shape']} but {path.name} has "
                                    f"{list(shape)} (stale sidecar?)")
    return record


def _npy_voxel_size(path: Path, shape: tuple[int, ...]) -> VoxelSize:
    """The voxel size an ``.npy`` file's sidecar states (1 mm without one), checked against its shape."""
    record = _npy_record(path, shape)
    if record is None:
        return (1.0, 1.0, 1.0)
    return _file_voxel_size(_sidecar(path, True), record[_SIDECAR_KEY], _SIDECAR_KEY)


def _npy_spatial(path: Path, shape: tuple[int, ...]) -> Spatial:
    record = _npy_record(path, shape)
    if record is None:
        return Spatial.from_voxel_size(1.0)
    vs = _file_voxel_size(_sidecar(path, True), record[_SIDECAR_KEY], _SIDECAR_KEY)
    return _stated_spatial(_sidecar(path, True), vs, record.get("affine_xyz"), record.get("frame_code", 0))


def _read_npy(path: Path) -> tuple[torch.Tensor, VoxelSize]:
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise FileFormatError(path, f"not a .npy file (no NumPy header: corrupt or another format)")
    _npy_declared_shape(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise FileFormatError(path, f"the array holds Python objects, a non-numeric dtype (expected real numbers)") from None
        raise FileFormatError(path, f"not a readable .npy volume (truncated or corrupt: {exc})") from None
    except Exception as exc:  # EOFError, OSError, UnpicklingError...
        raise FileFormatError(path, f"not a readable .npy volume (truncated or corrupt: "
                         f"{type(exc).__name__}: {exc})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive saved under a .npy name
        raise FileFormatError(path, f"not a single .npy array")
    vol = _to_tensor(path, arr)
    return vol, _npy_voxel_size(path, tuple(vol.shape))


def _npy_declared_shape(path: Path) -> tuple[int, ...] | None:
    """The shape an ``.npy`` header declares, checked against the file's size before anything is
    allocated (``None`` when the header cannot be parsed: ``np.load`` says why)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = np.lib.format._read_array_header(f, version)  # type: ignore[attr-defined]
            offset = f.tell()
    except Exception:
        return None
    if dtype.hasobject:
        return None
    need = math.prod(shape) * dtype.itemsize
    have = os.path.getsize(path) - offset
    if need > have:
        raise FileFormatError(path, f"the header declares {' x '.join(map(str, shape)) or 'one'} values of {dtype} "
                                    f"({need} bytes) but the file holds {have} bytes of data (truncated or corrupt)")
    return tuple(shape)


# --------------------------------------------------------------------------- spatial records
def _spatial_of(voxel_size: Any, spatial: Spatial | None) -> Spatial:
    """The :class:`Spatial` a writer stores: ``spatial`` (checked against ``voxel_size`` when both
    are given), or plain voxels of ``voxel_size`` (1 mm when neither is)."""
    if spatial is None:
        return Spatial.from_voxel_size(_check_voxel_size((1.0, 1.0, 1.0) if voxel_size is None else voxel_size))
    if not isinstance(spatial, Spatial):
        raise TypeError(f"spatial must be an unrolled3d.io.Spatial, got {type(spatial).__name__}")
    return spatial if voxel_size is None else spatial.with_voxel_size(_check_voxel_size(voxel_size))


def _stated_spatial(path: Path, vs: VoxelSize, affine: Any, code: Any) -> Spatial:
    """A file's voxel size and (optional) affine as a :class:`Spatial`; a malformed affine is the file's error."""
    if affine is None:
        return Spatial.from_voxel_size(vs)
    try:
        return Spatial(vs, affine, int(code) if isinstance(code, (int, np.integer)) else code)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(path, f"invalid affine ({exc})") from None


# --------------------------------------------------------------------------- NIfTI
def _orthonormal_columns(m: np.ndarray) -> bool:
    """Whether a 3 x 3 matrix is a rotation (or reflection) times axis scalings: what a qform states."""
    q = m / np.linalg.norm(m, axis=0)
    return bool(np.allclose(q.T @ q, np.eye(3), atol=1e-6))


def _write_nifti(path: Path, arr: np.ndarray, spatial: Spatial, force: bool = False) -> None:
    nib = _import("nibabel")
    sz, sy, sx = spatial.voxel_size
    # (D, H, W) = (z, y, x) -> NIfTI (i, j, k) = (x, y, z): reverse the axes.
    img = nib.Nifti1Image(arr.transpose(2, 1, 0), spatial.matrix)
    if spatial.code:  # the input's frame: both forms where the qform can state it, the sform always
        img.set_sform(spatial.matrix, code=spatial.code)
        if _orthonormal_columns(spatial.matrix[:3, :3]):
            img.set_qform(spatial.matrix, code=spatial.code)
    img.set_data_dtype(arr.dtype)
    img.header.set_zooms((sx, sy, sz))
    img.header.set_xyzt_units(xyz="mm")
    with atomic_path(path, replace_read_only=force) as tmp:
        # Through a file object: the temporary name does not end in .nii.gz, so nibabel could not
        # pick the compression from it; we choose it from the target's name instead (no file name
        # or time stamp in the gzip header: the temporary name is meaningless, the bytes reproducible).
        with open(tmp, "wb") as raw:
            if path.name.lower().endswith(".gz"):
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
                    img.to_file_map({"image": nib.FileHolder(fileobj=f)})
            else:
                img.to_file_map({"image": nib.FileHolder(fileobj=raw)})


def _float32_decimal(z: float) -> float:
    """The shortest decimal that rounds to the float32 ``z`` (NIfTI-1 zooms are float32)."""
    # numpy prints a float32 with the fewest digits that round back to it (0.1, not 0.10000000149).
    return float(str(np.float32(z)))


def _nifti_load(path: Path):
    nib = _import("nibabel")
    try:
        return nib.load(str(path))  # the header only: the data stay behind img.dataobj
    except Exception as exc:  # ImageFileError, OSError, EOFError, zlib errors...
        raise FileFormatError(path, f"not a readable NIfTI volume (truncated or corrupt: {first_line(exc)})") from None


def _nifti_zooms(path: Path, img: Any) -> VoxelSize:
    zooms = img.header.get_zooms()
    if len(zooms) < 3:
        raise FileFormatError(path, f"the NIfTI header has {len(zooms)} zooms, expected 3")
    sx, sy, sz = (_float32_decimal(z) for z in zooms[:3])
    return _file_voxel_size(path, (sz, sy, sx), "NIfTI zooms")


def _nifti_spatial(path: Path) -> Spatial:
    img = _nifti_load(path)
    vs = _nifti_zooms(path, img)
    header = img.header
    code = int(header["sform_code"]) if int(header["sform_code"]) > 0 else int(header["qform_code"])
    if code == 0 or code not in (1, 2, 3, 4, 5):  # no frame stated: nibabel's fallback affine is a guess
        return Spatial.from_voxel_size(vs)
    return _stated_spatial(path, vs, img.affine, code)


def _read_nifti(path: Path) -> tuple[torch.Tensor, VoxelSize]:
    img = _nifti_load(path)
    check_declared_size(path, "the NIfTI header", img.shape, img.get_data_dtype().itemsize)
    try:
        arr = np.asanyarray(img.dataobj)  # forces the read: truncation shows here
        disk_dtype = img.get_data_dtype()
    except Exception as exc:  # OSError, EOFError, zlib errors...
        raise FileFormatError(path, f"not a readable NIfTI volume (truncated or corrupt: {first_line(exc)})") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:  # (x, y, z, 1) as some tools write 3D volumes
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise FileFormatError(path, f"expected a 3D volume, got a NIfTI array of shape {tuple(arr.shape)}")
    if disk_dtype.kind not in "biuf" or arr.dtype.kind not in "biuf":
        raise FileFormatError(path, f"the volume has a non-numeric or complex dtype {disk_dtype} (expected real numbers)")
    vs = _nifti_zooms(path, img)
    # Scaled integer data come out of nibabel as float64: keep float64 only for float64 files.
    return _to_tensor(path, arr.transpose(2, 1, 0), keep_float64=disk_dtype == np.float64), vs


# --------------------------------------------------------------------------- HDF5
def _write_hdf5(path: Path, arr: np.ndarray, spatial: Spatial, force: bool = False) -> None:
    h5py = _import("h5py")
    chunks = tuple(min(64, n) for n in arr.shape)  # 1 MiB float32 chunks: a block read decodes little
    # HDF5 is built in memory, then written as plain bytes: an HDF5 library that meets a full disk
    # mid-file leaves its objects half-closed and can crash the process later (seen with h5py 3.16)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        ds = f.create_dataset("volume", data=arr, chunks=chunks, compression="gzip", compression_opts=4,
                              shuffle=True)
        ds.attrs["voxel_size"] = np.asarray(spatial.voxel_size, dtype=np.float64)
        ds.attrs["affine"] = spatial.matrix
        ds.attrs["frame_code"] = spatial.code
        ds.attrs["axes"] = "zyx"
        ds.attrs["unit"] = "mm"
    with atomic_path(path, replace_read_only=force) as tmp:
        with open(tmp, "wb") as raw:
            raw.write(buffer.getbuffer())


# the checked access of every HDF5 read (kept under these names for the modules that import them)
_h5_open = hdf5.open_file
_h5_dataset = hdf5.dataset


def _h5_spatial(path: Path, key: str | None = None) -> Spatial:
    with _h5_open(path) as f:
        ds = _h5_dataset(path, f, key)
        vs = _file_voxel_size(path, ds.attrs.get("voxel_size", (1.0, 1.0, 1.0)), "attribute voxel_size")
        return _stated_spatial(path, vs, ds.attrs.get("affine"), ds.attrs.get("frame_code", 0))


def _read_hdf5(path: Path) -> tuple[torch.Tensor, VoxelSize]:
    with _h5_open(path) as f:
        ds = _h5_dataset(path, f, None)
        if ds.dtype.kind not in "biuf":
            raise FileFormatError(path, f"dataset 'volume' has a non-numeric or complex dtype {ds.dtype} "
                             f"(expected real numbers)")
        if ds.ndim != 3:
            raise FileFormatError(path, f"expected a 3D volume (D, H, W), dataset 'volume' has {ds.ndim} "
                             f"dimensions {tuple(ds.shape)}")
        arr = hdf5.read_whole(path, ds)
        raw_vs = ds.attrs.get("voxel_size", (1.0, 1.0, 1.0))
    return _to_tensor(path, arr), _file_voxel_size(path, raw_vs, "attribute voxel_size")


# --------------------------------------------------------------------------- TIFF stack
_TIFF_KEY = "unrolled3d"  # our JSON inside an ImageJ description


def _write_tiff(path: Path, arr: np.ndarray, spatial: Spatial, force: bool = False) -> None:
    tifffile = _import("tifffile")
    sz, sy, sx = spatial.voxel_size
    ours = {_SIDECAR_KEY: list(spatial.voxel_size), "affine_xyz": spatial.to_dict()["affine_xyz"],
            "frame_code": spatial.code, "axes": "ZYX", "unit": "mm"}
    with atomic_path(path, replace_read_only=force) as tmp:
        # ImageJ has no float64, and its resolution tags (rationals) cannot state extreme voxel sizes:
        # tifffile's JSON description keeps those exact
        if arr.dtype == np.float64 or not all(1e-9 < v < 1e9 for v in spatial.voxel_size):
            tifffile.imwrite(tmp, arr, photometric="minisblack", metadata=ours)
            return
        # an ImageJ hyperstack: Fiji opens it as a z-stack with its voxel size; ImageJ's origin is in
        # voxels, (index - origin) * size, and states axis-aligned affines only
        meta: dict[str, Any] = {"spacing": sz, "unit": "mm", "axes": "ZYX"}
        if spatial.axis_aligned and any(spatial.origin):
            meta.update(zip(("xorigin", "yorigin", "zorigin"),
                            (-o / v + 0.0 for o, v in zip(spatial.origin, (sx, sy, sz)))))
        meta[_TIFF_KEY] = json.dumps(ours)
        tifffile.imwrite(tmp, arr, imagej=True, resolution=(1.0 / sx, 1.0 / sy), metadata=meta)


def _imagej_voxel_size(tif: Any, page: Any) -> VoxelSize | None:
    """``(sz, sy, sx)`` from ImageJ metadata (spacing) and the X/YResolution tags, if complete."""
    ij = tif.imagej_metadata or {}
    try:
        sz = float(ij["spacing"])
        xres, yres = page.resolution  # pixels per unit
        return (sz, 1.0 / float(yres), 1.0 / float(xres))
    except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError):
        return None


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Mute a library's log records while we read: its complaints become our one ValueError."""
    logger = logging.getLogger(name)
    mute = logging.Filter(name="\0")  # a filter matching no logger name drops every record
    logger.addFilter(mute)
    try:
        yield
    finally:
        logger.removeFilter(mute)


def _ours_in_tiff(tif: Any) -> dict:
    """Our JSON of a TIFF we wrote: tifffile's shaped description, or the key in ImageJ's ({} if none)."""
    shaped = tif.shaped_metadata[0] if tif.shaped_metadata else {}
    if _SIDECAR_KEY in shaped:
        return dict(shaped)
    raw = (tif.imagej_metadata or {}).get(_TIFF_KEY) if tif.is_imagej else None
    try:
        ours = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        ours = {}
    return ours if isinstance(ours, dict) and _SIDECAR_KEY in ours else {}


def _tiff_stack(tif: Any) -> tuple[Any, dict, tuple[int, ...], VoxelSize | None]:
    """``(first series, our JSON description, first page's shape, ImageJ voxel size or None)`` of
    an open ``tifffile.TiffFile``; ``ValueError`` if it holds no image."""
    if not tif.series:
        raise ValueError("no image data")
    page0 = tif.pages[0]
    return tif.series[0], _ours_in_tiff(tif), tuple(page0.shape), _imagej_voxel_size(tif, page0) if tif.is_imagej else None


def _check_tiff_pages(path: Path, page_shape: tuple[int, ...]) -> None:
    if len(page_shape) != 2:  # RGB or multi-sample pages are not slices of one volume
        raise FileFormatError(path, f"expected a 3D stack of single-channel 2D pages, got pages of shape {page_shape}")


def _read_tiff(path: Path) -> tuple[torch.Tensor, VoxelSize]:
    tifffile = _import("tifffile")
    try:
        with _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
            series, ours, page_shape, ij_vs = _tiff_stack(tif)
            check_declared_size(path, "the TIFF stack", series.shape, np.dtype(series.dtype).itemsize)
            n_pages, imagej = len(tif.pages), tif.is_imagej
            declared = (tif.imagej_metadata or {}).get("images") if imagej else None
            arr = series.asarray()
    except FileFormatError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise FileFormatError(path, f"not a readable TIFF stack (truncated or corrupt: {type(exc).__name__}: {exc})") from None
    _check_tiff_pages(path, page_shape)
    if ours and imagej and isinstance(declared, int) and n_pages != declared:  # our hyperstack, cut off
        raise FileFormatError(path, f"the description says {declared} slices but the file has {n_pages} pages "
                                    f"(truncated or corrupt)")
    if arr.ndim != 3:
        raise FileFormatError(path, f"expected a 3D stack (pages = z slices), got an image of shape {tuple(arr.shape)}")
    # A stack we wrote has one page per slice: fewer pages means a cut-off IFD chain.
    if (not imagej or ours) and n_pages != arr.shape[0]:
        raise FileFormatError(path, f"the description says {arr.shape[0]} slices but the file has {n_pages} "
                         f"pages (truncated or corrupt)")
    return _to_tensor(path, arr), _tiff_voxel_size(path, ours, ij_vs)


def _tiff_voxel_size(path: Path, ours: dict, ij_vs: VoxelSize | None) -> VoxelSize:
    """The voxel size of a TIFF stack: our JSON description, else ImageJ's, else 1 mm."""
    if _SIDECAR_KEY in ours:
        return _file_voxel_size(path, ours[_SIDECAR_KEY], f"TIFF description {_SIDECAR_KEY}")
    if ij_vs is not None:
        return _file_voxel_size(path, ij_vs, "ImageJ spacing/resolution")
    return (1.0, 1.0, 1.0)


def _tiff_spatial(path: Path) -> Spatial:
    tifffile = _import("tifffile")
    try:
        with _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
            _, ours, _, ij_vs = _tiff_stack(tif)
            ij = dict(tif.imagej_metadata or {}) if tif.is_imagej else {}
    except Exception as exc:
        raise FileFormatError(path, f"not a readable TIFF stack (truncated or corrupt: {first_line(exc)})") from None
    vs = _tiff_voxel_size(path, ours, ij_vs)
    if "affine_xyz" in ours:
        return _stated_spatial(path, vs, ours["affine_xyz"], ours.get("frame_code", 0))
    origins = [ij.get(k) for k in ("xorigin", "yorigin", "zorigin")]
    if any(isinstance(o, (int, float)) for o in origins):  # Fiji's calibration origin, in voxels
        sz, sy, sx = vs
        affine = np.diag([sx, sy, sz, 1.0])
        affine[:3, 3] = [-float(o or 0.0) * v for o, v in zip(origins, (sx, sy, sz))]
        return _stated_spatial(path, vs, affine, 0)
    return Spatial.from_voxel_size(vs)


# --------------------------------------------------------------------------- torch .pt
def _write_pt(path: Path, arr: np.ndarray, spatial: Spatial, force: bool = False) -> None:
    state = {"volume": torch.from_numpy(arr), "voxel_size": torch.tensor(spatial.voxel_size, dtype=torch.float64),
             "affine": torch.tensor(spatial.matrix, dtype=torch.float64), "frame_code": spatial.code}
    with atomic_path(path, replace_read_only=force) as tmp:
        torch.save(state, tmp)


def check_tensor_size(path: str | os.PathLike, key: str, t: torch.Tensor) -> None:
    """Refuse a tensor of a loaded file whose declared size exceeds the machine's memory (a
    stride-0 tensor of a tiny file can declare 10^12 values) before anything materialises it."""
    check_declared_size(path, f"entry {key!r}", tuple(t.shape), t.element_size())


def _pt_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FileFormatError(path, f"not a readable .pt volume ({describe_load_error(exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("volume"), torch.Tensor):
        raise FileFormatError(path, f"expected a dict with a tensor 'volume' (as write_volume saves it)")
    return state


def _pt_voxel_size(path: Path, raw_vs: Any) -> VoxelSize:
    if isinstance(raw_vs, torch.Tensor) and raw_vs.dtype == torch.float32:
        # files.save_volume stores a float32 tensor: give back the decimal it came from.
        raw_vs = [_float32_decimal(v) for v in raw_vs.reshape(-1).tolist()]
    return _file_voxel_size(path, raw_vs, "voxel_size")


def _read_pt(path: Path) -> tuple[torch.Tensor, VoxelSize]:
    state = _pt_state(path)
    vol = state["volume"]
    if vol.is_complex():
        raise FileFormatError(path, f"the volume has a complex dtype {vol.dtype} (expected real numbers)")
    check_tensor_size(path, "volume", vol)
    arr = vol.to(torch.float32).numpy() if vol.dtype not in (torch.float32, torch.float64) else vol.numpy()
    return _to_tensor(path, arr), _pt_voxel_size(path, state.get("voxel_size", (1.0, 1.0, 1.0)))


def _pt_spatial(path: Path) -> Spatial:
    state = _pt_state(path)
    vs = _pt_voxel_size(path, state.get("voxel_size", (1.0, 1.0, 1.0)))
    affine = state.get("affine")
    if isinstance(affine, torch.Tensor):
        affine = affine.tolist()
    return _stated_spatial(path, vs, affine, state.get("frame_code", 0))


def describe_load_error(exc: BaseException) -> str:
    """A ``torch.load`` failure in a few words, without torch's advice (loading with
    ``weights_only=False`` would run whatever the file holds: never a fix for a file of unknown origin)."""
    text = " ".join(str(exc).split())
    if "Weights only load failed" in text or type(exc).__name__ == "UnpicklingError":
        found = re.search(r"(?:Unsupported global|Unsupported operand|GLOBAL) ([\w.]+(?: [\w.]+)?)", text)
        what = f" ({found.group(0)})" if found else ""
        return (f"it holds Python objects other than tensors and plain containers{what}, which a safe load refuses: "
                f"not a file this package wrote, or altered")
    if "central directory" in text or "zip archive" in text or isinstance(exc, EOFError):
        return "truncated or corrupt: its zip archive cannot be read"
    if "numel" in text and "overflow" in text:
        return "a tensor in it declares more values than any machine holds (a corrupt or hostile file)"
    return f"truncated or corrupt: {first_line(exc)}"


_WRITERS: dict[str, Callable[..., None]] = {
    "npy": _write_npy, "nifti": _write_nifti, "hdf5": _write_hdf5, "tiff": _write_tiff, "pt": _write_pt,
}
_READERS: dict[str, Callable[[Path], tuple[torch.Tensor, VoxelSize]]] = {
    "npy": _read_npy, "nifti": _read_nifti, "hdf5": _read_hdf5, "tiff": _read_tiff, "pt": _read_pt,
}


# --------------------------------------------------------------------------- public API
def volume_format(path: str | os.PathLike) -> str:
    """The format a volume file name selects: ``"npy"``, ``"nifti"``, ``"hdf5"``, ``"tiff"`` or ``"pt"``.

    Raises ``ValueError`` listing the supported endings for any other name (lets a command
    reject an output name before it computes anything).
    """
    return _format_of(Path(path))


def volume_files(path: str | os.PathLike) -> list[Path]:
    """Every file :func:`write_volume` writes for ``path``: the volume, and for ``.npy`` its
    ``.json`` sidecar (so that a command can check none of them is one of its inputs)."""
    path = Path(path)
    return [path, _sidecar(path)] if _format_of(path) == "npy" else [path]


def check_volume_target(path: str | os.PathLike, force: bool = False) -> None:
    """Raise now what :func:`write_volume` would raise about the target (unknown ending, a
    read-only file, a folder, an unrelated ``.json`` beside an ``.npy``), so that a command can
    refuse an output before it spends minutes computing it."""
    path = Path(path)
    if _format_of(path) == "npy":
        _check_sidecar_target(path, force)
        resolve_output(_sidecar(path), replace_read_only=force)
    resolve_output(path, replace_read_only=force)


def write_volume(path: str | os.PathLike, volume: torch.Tensor | np.ndarray,
                 voxel_size: float | Sequence[float] | None = None, force: bool = False,
                 spatial: Spatial | None = None) -> None:
    """Write a volume and its voxel size (and affine); the format follows the file name's ending.

    Parameters
    ----------
    path : str or path-like
        Target file; its ending (``.npy``, ``.nii``, ``.nii.gz``, ``.h5``, ``.hdf5``, ``.tif``,
        ``.tiff``, ``.pt``) picks the format (see the module docstring for each layout). Missing
        parent folders are created; an existing file is replaced atomically.
    volume : torch.Tensor or numpy.ndarray, shape (D, H, W) = (z, y, x)
        Real values; leading singleton dimensions (``[1, 1, D, H, W]``) are dropped. float32 and
        float64 are stored as such, any other real dtype as float32.
    voxel_size : float or (float, float, float), optional
        ``(sz, sy, sx)`` in mm (one number: cubic voxels); default ``spatial``'s, else 1 mm.
    force : bool
        Also replace a read-only file, and (``.npy``) a ``.json`` file of the same name that is
        not a voxel-size sidecar. Default: refuse both.
    spatial : Spatial, optional
        The volume's place in space (:class:`unrolled3d.io.Spatial`, e.g. :func:`read_spatial` of
        the input it was made from): NIfTI files get its affine and frame code, the other formats
        keep it as an attribute or in their description/sidecar. Its voxel size must agree with
        ``voxel_size`` when both are given.

    Raises
    ------
    ValueError
        Unknown ending (the message lists the supported ones), a shape that is not one volume,
        a non-positive voxel size, a ``spatial`` of another voxel size.
    OSError
        No space left on the device (one line naming the file; the old file, if any, is kept).
    TypeError
        ``volume`` is not a real tensor/array, ``voxel_size`` is not numbers.
    PermissionError
        The target (or its sidecar) is read-only and ``force`` is false.
    FileExistsError
        ``X.json`` exists beside ``X.npy`` and is not a voxel-size sidecar (``force`` false).
    """
    path = Path(path)
    fmt = _format_of(path)
    spatial = _spatial_of(voxel_size, spatial)
    arr = _as_array(volume)
    _WRITERS[fmt](path, arr, spatial, force=force)


def read_volume(path: str | os.PathLike) -> tuple[torch.Tensor, VoxelSize]:
    """Read a volume and its voxel size; the format follows the file name's ending.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`write_volume` or by another tool in one of the supported
        formats (see the module docstring).

    Returns
    -------
    volume : torch.Tensor, shape (D, H, W) = (z, y, x)
        float64 when the file holds float64, float32 otherwise (CPU, contiguous).
    voxel_size : (float, float, float)
        ``(sz, sy, sx)`` in mm; ``(1, 1, 1)`` when the file does not say.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Unknown ending (listing the supported ones), truncated or corrupt file, not 3D, missing
        ``volume`` dataset (HDF5), non-numeric or complex dtype, invalid voxel size; the message
        names the file.
    ImportError
        The format's library (tifffile, h5py, nibabel) is not installed.
    """
    path = Path(path)
    fmt = _format_of(path)
    _require_file(path)
    _check_magic(path, fmt)
    return _READERS[fmt](path)


_SPATIAL: dict[str, Callable[[Path], Spatial]] = {
    "npy": lambda p: _npy_spatial(p, tuple(np.load(p, mmap_mode="r", allow_pickle=False).shape)),
    "nifti": _nifti_spatial, "hdf5": _h5_spatial, "tiff": _tiff_spatial, "pt": _pt_spatial,
}


def read_spatial(path: str | os.PathLike) -> Spatial:
    """Where the volume of a file lies in space (:class:`unrolled3d.io.Spatial`), from its header.

    NIfTI: the sform (or the qform) with its code (a file stating no frame gives plain voxels);
    HDF5: the ``affine`` and ``frame_code`` attributes of ``volume``; TIFF: our description's
    affine, else Fiji's origin; ``.npy``: the sidecar's; ``.pt``: the ``affine`` entry. Without
    an affine, ``diag(sx, sy, sz, 1)`` of the file's voxel size (code 0).

    Raises
    ------
    FileNotFoundError, FileFormatError
        As :func:`read_volume` for the header.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from unrolled3d.io import Spatial, read_spatial, write_volume
    >>> lps = Spatial.from_affine([[-0.8, 0, 0, 90], [0, -0.8, 0, 120], [0, 0, 2, -50], [0, 0, 0, 1]], code=1)
    >>> path = os.path.join(tempfile.mkdtemp(), "v.h5")
    >>> write_volume(path, torch.zeros(3, 4, 5), spatial=lps)
    >>> read_spatial(path) == lps
    True
    """
    path = Path(path)
    fmt = _format_of(path)
    _require_file(path)
    _check_magic(path, fmt)
    try:
        return _SPATIAL[fmt](path)
    except FileFormatError:
        raise
    except (OSError, ValueError) as exc:  # an .npy header np.load refuses
        raise FileFormatError(path, f"not a readable volume ({first_line(exc)})") from None
