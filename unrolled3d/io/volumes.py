"""Volumes on disk: read and write ``(D, H, W)`` volumes with their voxel size, format by extension.

Every format stores the array ``[z, y, x]`` = ``(D, H, W)`` of the package (see
:mod:`unrolled3d.geometry`) and the voxel size ``(sz, sy, sx)`` in mm:

============================  ====================================================================
extension                     layout
============================  ====================================================================
``.npy``                      the array as is; voxel size in a sidecar ``<name>.json``
                              (``{"voxel_size_zyx_mm": [sz, sy, sx], "shape": [D, H, W]}``, the
                              same sidecar as :func:`unrolled3d.io.save_volume`); no sidecar on
                              reading means 1 mm voxels.
``.nii``, ``.nii.gz``         NIfTI-1 (nibabel). NIfTI's data array is indexed ``(i, j, k)`` with
                              ``i`` varying fastest; we store ``i = x`` (W), ``j = y`` (H),
                              ``k = z`` (D), i.e. the NIfTI array is ``volume.permute(2, 1, 0)`` and
                              the zooms (``pixdim[1:4]``) are ``(sx, sy, sz)``; the affine is
                              ``diag(sx, sy, sz, 1)`` and the spatial unit is mm. Reading applies
                              the same mapping by index and does **not** reorient by the affine.
                              Trailing singleton dimensions (``(x, y, z, 1)``) are accepted.
``.h5``, ``.hdf5``            HDF5 (h5py): dataset ``volume`` ``[z, y, x]`` with attribute
                              ``voxel_size = (sz, sy, sx)`` (and ``axes = "zyx"``, ``unit = "mm"``);
                              no attribute on reading means 1 mm voxels.
``.tif``, ``.tiff``           one multi-page TIFF (tifffile), page ``k`` = slice ``z = k``. The voxel
                              size is a JSON object in the first page's ImageDescription, written by
                              tifffile's "shaped" metadata:
                              ``{"shape": [D, H, W], "voxel_size_zyx_mm": [sz, sy, sx], ...}``
                              (exact floats, float32 and float64 pages). On reading, stacks without
                              it but with ImageJ metadata (``spacing`` for ``sz``, X/YResolution
                              for ``sx``/``sy``, as Fiji writes them) use those; otherwise 1 mm.
``.pt``                       ``torch.save({"volume": tensor, "voxel_size": tensor(sz, sy, sx)})``,
                              the format :func:`unrolled3d.io.save_volume` writes.
============================  ====================================================================

Values: float32 and float64 volumes round-trip exactly in every format. Other real dtypes are
written as float32; readers return float64 for float64 data and float32 for every other real
dtype (integers, float16, bool). NIfTI-1 keeps the zooms as float32: the reader returns the
shortest decimal that rounds to that float32, so decimal voxel sizes such as 0.1 or 0.1496 come
back exactly, and any other value to float32 precision (about 6e-8 relative).

Writes are atomic and durable (:func:`unrolled3d.io.atomic_path`): a temporary file beside the
target, synced, renamed over it, the folder synced; a crash never leaves a half-written volume.
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
import json
import logging
import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import FileFormatError, first_line
from .atomic import atomic_path, check_not_input, resolve_output

__all__ = ["read_volume", "write_volume", "volume_format", "volume_files", "check_volume_target", "sniff_format",
           "SUPPORTED_EXTENSIONS"]

#: File name endings understood by :func:`read_volume` and :func:`write_volume`.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".npy", ".nii", ".nii.gz", ".h5", ".hdf5", ".tif", ".tiff", ".pt")

_SIDECAR_KEY = "voxel_size_zyx_mm"

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
    return vs  # type: ignore[return-value]


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
def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _is_our_sidecar(side: Path) -> bool:
    """``side`` holds a voxel-size sidecar (JSON object with our key), not some other JSON file."""
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):  # unreadable, not JSON, not UTF-8
        return False
    return isinstance(meta, dict) and _SIDECAR_KEY in meta


def _check_sidecar_target(path: Path, force: bool) -> None:
    """Writing ``X.npy`` also writes ``X.json``: refuse when that name holds an unrelated file."""
    side = _sidecar(path)
    if side.exists() and not force and not _is_our_sidecar(side):
        raise FileExistsError(f"{side} exists and is not the voxel-size sidecar of {path.name}: writing {path.name} "
                              f"would replace it (remove or rename it, choose another name, or force the "
                              f"replacement)")


def _write_npy(path: Path, arr: np.ndarray, vs: VoxelSize, force: bool = False) -> None:
    _check_sidecar_target(path, force)
    resolve_output(_sidecar(path), replace_read_only=force)  # a read-only sidecar fails before the volume
    with atomic_path(path, replace_read_only=force) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    # Always (re)write the sidecar, so a stale one from an older volume never survives.
    write_npy_sidecar(path, vs, arr.shape, force)


def write_npy_sidecar(path: str | os.PathLike, voxel_size: Sequence[float], shape: Sequence[int],
                      force: bool = False) -> None:
    """The voxel-size sidecar ``X.json`` of the volume ``X.npy`` (e.g. one written block by block)."""
    with atomic_path(_sidecar(Path(path)), replace_read_only=force) as tmp:
        tmp.write_text(json.dumps({_SIDECAR_KEY: [float(v) for v in voxel_size], "shape": [int(n) for n in shape],
                                   "axes": "zyx", "unit": "mm"}))


def _read_npy(path: Path) -> tuple[torch.Tensor, VoxelSize]:
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise FileFormatError(path, f"not a .npy file (no NumPy header: corrupt or another format)")
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


def _npy_voxel_size(path: Path, shape: tuple[int, ...]) -> VoxelSize:
    """The voxel size an ``.npy`` file's sidecar states (1 mm without one), checked against its shape."""
    side = _sidecar(path)
    if not side.exists():
        return (1.0, 1.0, 1.0)
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(side, f"not a valid voxel-size sidecar of {path.name}: expected JSON with "
                                    f"{_SIDECAR_KEY!r} ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or _SIDECAR_KEY not in meta:
        # Some other JSON file that happens to share the name (the writer never replaces one):
        # not a sidecar, so the file says nothing about the voxel size.
        warnings.warn(f"{side} is not a voxel-size sidecar (no {_SIDECAR_KEY!r}): reading {path.name} with "
                      f"1 mm voxels", stacklevel=4)
        return (1.0, 1.0, 1.0)
    vs_raw = meta[_SIDECAR_KEY]
    if "shape" in meta and (not isinstance(meta["shape"], list) or meta["shape"] != list(shape)):
        raise FileFormatError(side, f"describes a volume of shape {meta['shape']} but {path.name} has "
                         f"{list(shape)} (stale sidecar?)")
    return _file_voxel_size(side, vs_raw, _SIDECAR_KEY)


# --------------------------------------------------------------------------- NIfTI
def _write_nifti(path: Path, arr: np.ndarray, vs: VoxelSize, force: bool = False) -> None:
    nib = _import("nibabel")
    sz, sy, sx = vs
    # (D, H, W) = (z, y, x) -> NIfTI (i, j, k) = (x, y, z): reverse the axes.
    img = nib.Nifti1Image(arr.transpose(2, 1, 0), np.diag([sx, sy, sz, 1.0]))
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


def _read_nifti(path: Path) -> tuple[torch.Tensor, VoxelSize]:
    nib = _import("nibabel")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)  # forces the read: truncation shows here
        disk_dtype = img.get_data_dtype()
        zooms = img.header.get_zooms()
    except Exception as exc:  # ImageFileError, OSError, EOFError, zlib errors...
        raise FileFormatError(path, f"not a readable NIfTI volume (truncated or corrupt: {first_line(exc)})") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:  # (x, y, z, 1) as some tools write 3D volumes
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise FileFormatError(path, f"expected a 3D volume, got a NIfTI array of shape {tuple(arr.shape)}")
    if disk_dtype.kind not in "biuf" or arr.dtype.kind not in "biuf":
        raise FileFormatError(path, f"the volume has a non-numeric or complex dtype {disk_dtype} (expected real numbers)")
    if len(zooms) < 3:
        raise FileFormatError(path, f"the NIfTI header has {len(zooms)} zooms, expected 3")
    sx, sy, sz = (_float32_decimal(z) for z in zooms[:3])
    # Scaled integer data come out of nibabel as float64: keep float64 only for float64 files.
    vol = _to_tensor(path, arr.transpose(2, 1, 0), keep_float64=disk_dtype == np.float64)
    return vol, _file_voxel_size(path, (sz, sy, sx), "NIfTI zooms")


# --------------------------------------------------------------------------- HDF5
def _write_hdf5(path: Path, arr: np.ndarray, vs: VoxelSize, force: bool = False) -> None:
    h5py = _import("h5py")
    with atomic_path(path, replace_read_only=force) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("volume", data=arr)
            ds.attrs["voxel_size"] = np.asarray(vs, dtype=np.float64)
            ds.attrs["axes"] = "zyx"
            ds.attrs["unit"] = "mm"


def _h5_open(path: Path):
    """``path`` opened read-only with h5py, or a ``FileFormatError`` naming it."""
    h5py = _import("h5py")
    try:
        return h5py.File(path, "r")
    except Exception as exc:
        raise FileFormatError(path, f"not a readable HDF5 file (truncated or corrupt: {first_line(exc)})") from None


def _h5_dataset(path: Path, f: Any, key: str | None, default: str | None = "volume", chooser: str = "the HDF5 key"):
    """The dataset ``key`` of the open file ``f`` (``None``: ``default``, or with ``default=None``
    the file's only dataset), or a ``FileFormatError`` saying what the file holds and how to
    choose (``chooser``: the argument's name where the caller has one)."""
    h5py = _import("h5py")
    name = default if key is None else key
    if name is None:
        names = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
        if len(names) != 1:
            raise FileFormatError(path, f"the file holds {len(names)} datasets {names}: choose one with {chooser}")
        name = names[0]
    if name not in f:
        raise FileFormatError(path, f"no dataset {name!r} (the file holds {sorted(f.keys()) or 'nothing'}; "
                                    f"choose one with {chooser})")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise FileFormatError(path, f"{name!r} is a group, expected a dataset")
    return ds


def _read_hdf5(path: Path) -> tuple[torch.Tensor, VoxelSize]:
    with _h5_open(path) as f:
        ds = _h5_dataset(path, f, None)
        if ds.dtype.kind not in "biuf":
            raise FileFormatError(path, f"dataset 'volume' has a non-numeric or complex dtype {ds.dtype} "
                             f"(expected real numbers)")
        if ds.ndim != 3:
            raise FileFormatError(path, f"expected a 3D volume (D, H, W), dataset 'volume' has {ds.ndim} "
                             f"dimensions {tuple(ds.shape)}")
        try:
            arr = ds[()]
        except Exception as exc:
            raise FileFormatError(path, f"dataset 'volume' cannot be read (corrupt: {first_line(exc)})") from None
        raw_vs = ds.attrs.get("voxel_size", (1.0, 1.0, 1.0))
    return _to_tensor(path, arr), _file_voxel_size(path, raw_vs, "attribute voxel_size")


# --------------------------------------------------------------------------- TIFF stack
def _write_tiff(path: Path, arr: np.ndarray, vs: VoxelSize, force: bool = False) -> None:
    tifffile = _import("tifffile")
    with atomic_path(path, replace_read_only=force) as tmp:
        # A 3D array is written one page per z slice; `metadata` becomes the JSON description.
        tifffile.imwrite(tmp, arr, photometric="minisblack",
                         metadata={_SIDECAR_KEY: list(vs), "axes": "ZYX", "unit": "mm"})


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


def _tiff_stack(tif: Any) -> tuple[Any, dict, tuple[int, ...], VoxelSize | None]:
    """``(first series, our JSON description, first page's shape, ImageJ voxel size or None)`` of
    an open ``tifffile.TiffFile``; ``ValueError`` if it holds no image."""
    if not tif.series:
        raise ValueError("no image data")
    page0 = tif.pages[0]
    shaped = tif.shaped_metadata[0] if tif.shaped_metadata else {}
    return tif.series[0], shaped, tuple(page0.shape), _imagej_voxel_size(tif, page0) if tif.is_imagej else None


def _check_tiff_pages(path: Path, page_shape: tuple[int, ...]) -> None:
    if len(page_shape) != 2:  # RGB or multi-sample pages are not slices of one volume
        raise FileFormatError(path, f"expected a 3D stack of single-channel 2D pages, got pages of shape {page_shape}")


def _read_tiff(path: Path) -> tuple[torch.Tensor, VoxelSize]:
    tifffile = _import("tifffile")
    try:
        with _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
            series, shaped, page_shape, ij_vs = _tiff_stack(tif)
            n_pages = len(tif.pages)
            arr = series.asarray()
    except Exception as exc:  # tifffile raises many types for damaged files
        raise FileFormatError(path, f"not a readable TIFF stack (truncated or corrupt: {type(exc).__name__}: {exc})") from None
    _check_tiff_pages(path, page_shape)
    if arr.ndim != 3:
        raise FileFormatError(path, f"expected a 3D stack (pages = z slices), got an image of shape {tuple(arr.shape)}")
    # A stack we wrote has one page per slice: fewer pages means a cut-off IFD chain.
    if not tif.is_imagej and n_pages != arr.shape[0]:
        raise FileFormatError(path, f"the description says {arr.shape[0]} slices but the file has {n_pages} "
                         f"pages (truncated or corrupt)")
    return _to_tensor(path, arr), _tiff_voxel_size(path, shaped, ij_vs)


def _tiff_voxel_size(path: Path, shaped: dict, ij_vs: VoxelSize | None) -> VoxelSize:
    """The voxel size of a TIFF stack: our JSON description, else ImageJ's, else 1 mm."""
    if _SIDECAR_KEY in shaped:
        return _file_voxel_size(path, shaped[_SIDECAR_KEY], f"TIFF description {_SIDECAR_KEY}")
    if ij_vs is not None:
        return _file_voxel_size(path, ij_vs, "ImageJ spacing/resolution")
    return (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------- torch .pt
def _write_pt(path: Path, arr: np.ndarray, vs: VoxelSize, force: bool = False) -> None:
    with atomic_path(path, replace_read_only=force) as tmp:
        torch.save({"volume": torch.from_numpy(arr), "voxel_size": torch.tensor(vs, dtype=torch.float64)}, tmp)


def _read_pt(path: Path) -> tuple[torch.Tensor, VoxelSize]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FileFormatError(path, f"not a readable .pt volume (truncated or corrupt: {type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("volume"), torch.Tensor):
        raise FileFormatError(path, f"expected a dict with a tensor 'volume' (as write_volume saves it)")
    vol = state["volume"]
    if vol.is_complex():
        raise FileFormatError(path, f"the volume has a complex dtype {vol.dtype} (expected real numbers)")
    arr = vol.to(torch.float32).numpy() if vol.dtype not in (torch.float32, torch.float64) else vol.numpy()
    raw_vs = state.get("voxel_size", (1.0, 1.0, 1.0))
    if isinstance(raw_vs, torch.Tensor) and raw_vs.dtype == torch.float32:
        # files.save_volume stores a float32 tensor: give back the decimal it came from.
        raw_vs = [_float32_decimal(v) for v in raw_vs.reshape(-1).tolist()]
    return _to_tensor(path, arr), _file_voxel_size(path, raw_vs, "voxel_size")


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
                 voxel_size: float | Sequence[float] = (1.0, 1.0, 1.0), force: bool = False) -> None:
    """Write a volume and its voxel size; the format follows the file name's ending.

    Parameters
    ----------
    path : str or path-like
        Target file; its ending (``.npy``, ``.nii``, ``.nii.gz``, ``.h5``, ``.hdf5``, ``.tif``,
        ``.tiff``, ``.pt``) picks the format (see the module docstring for each layout). Missing
        parent folders are created; an existing file is replaced atomically.
    volume : torch.Tensor or numpy.ndarray, shape (D, H, W) = (z, y, x)
        Real values; leading singleton dimensions (``[1, 1, D, H, W]``) are dropped. float32 and
        float64 are stored as such, any other real dtype as float32.
    voxel_size : float or (float, float, float)
        ``(sz, sy, sx)`` in mm (one number: cubic voxels).
    force : bool
        Also replace a read-only file, and (``.npy``) a ``.json`` file of the same name that is
        not a voxel-size sidecar. Default: refuse both.

    Raises
    ------
    ValueError
        Unknown ending (the message lists the supported ones), a shape that is not one volume,
        a non-positive voxel size.
    TypeError
        ``volume`` is not a real tensor/array, ``voxel_size`` is not numbers.
    PermissionError
        The target (or its sidecar) is read-only and ``force`` is false.
    FileExistsError
        ``X.json`` exists beside ``X.npy`` and is not a voxel-size sidecar (``force`` false).
    """
    path = Path(path)
    fmt = _format_of(path)
    vs = _check_voxel_size(voxel_size)
    arr = _as_array(volume)
    _WRITERS[fmt](path, arr, vs, force=force)


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
