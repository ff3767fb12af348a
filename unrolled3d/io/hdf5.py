r"""HDF5 volumes read safely: nothing outside the file, no plug-in filters, reads costed before they run.

An HDF5 file can make a reader do much more than read it: a dataset with *external storage*, a
*virtual dataset* or an *external link* reads another file of the machine (its bytes would come
back as the volume); a *filter* that HDF5 does not build in loads a plug-in library; a 1.4 KB
file can declare 10^15 voxels in 8^3 chunks, and a strided read of it (a percentile's sample)
then visits millions of chunks for minutes. Every HDF5 read of the package goes through here:

* :func:`dataset` refuses external links, external storage, virtual datasets with a source in
  another file, and filters other than HDF5's own (deflate, shuffle, Fletcher-32, SZIP, N-bit,
  scale-offset) and h5py's built-in LZF;
* :func:`read_whole` refuses a dataset larger than the machine's memory before reading;
* :func:`read_region` refuses a block read that would touch more than :data:`MAX_READ_CHUNKS`
  chunks or decode more than :data:`MAX_READ_BYTES` (a layout of tiny chunks: rechunk the file);
* :func:`sample` reads a regular sub-sample of at most ``max_voxels`` values touching at most
  :data:`MAX_SAMPLE_CHUNKS` chunks and decoding at most :data:`MAX_SAMPLE_BYTES`: every ``k``-th
  voxel where that is cheap, else whole chunks on a regular grid of chunks (about 0.1 s per 4096
  chunks here, against ~100 us per chunk that a strided read visits).

Every problem is a :class:`~unrolled3d.errors.FileFormatError` naming the file.
"""
from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FileFormatError, first_line
from .limits import check_declared_size, human_bytes

__all__ = ["open_file", "dataset", "check_safe", "read_whole", "read_region", "sample", "BUILTIN_FILTERS",
           "MAX_READ_CHUNKS", "MAX_READ_BYTES", "MAX_SAMPLE_CHUNKS", "MAX_SAMPLE_BYTES"]

#: filters compiled into HDF5 (1-6) and into h5py (LZF): anything else would load a plug-in library
BUILTIN_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset", 32000: "lzf"}
#: chunks a block read may touch (about 6 s at the ~100 us a chunk costs here)
MAX_READ_CHUNKS = 65536
#: bytes a block read may decode (every chunk it touches is decoded whole)
MAX_READ_BYTES = 4 * 2**30
#: chunks a sample may touch (about 1 s)
MAX_SAMPLE_CHUNKS = 8192
#: bytes a sample may decode
MAX_SAMPLE_BYTES = 2**30

Region = tuple[slice, ...]


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading/writing this volume format needs the package 'h5py': pip install h5py") from None
    return h5py


def open_file(path: str | os.PathLike):
    """``path`` opened read-only with h5py, or a ``FileFormatError`` naming it."""
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except Exception as exc:
        raise FileFormatError(path, f"not a readable HDF5 file (truncated or corrupt: {first_line(exc)})") from None


def dataset(path: str | os.PathLike, f: Any, key: str | None, default: str | None = "volume",
            chooser: str = "the HDF5 key"):
    """The dataset ``key`` of the open file ``f`` (``None``: ``default``, or with ``default=None``
    the file's only dataset), checked by :func:`check_safe`; a ``FileFormatError`` saying what the
    file holds and how to choose (``chooser``: the argument's name where the caller has one)."""
    h5py = _h5py()
    name = default if key is None else key
    if name is None:
        names = [k for k in f.keys() if isinstance(f.get(k, getlink=True), h5py.HardLink)
                 and isinstance(f[k], h5py.Dataset)]
        if len(names) != 1:
            raise FileFormatError(path, f"the file holds {len(names)} datasets {names}: choose one with {chooser}")
        name = names[0]
    try:
        link = f.get(name, getlink=True)  # the link itself: an external one is not followed here
    except Exception as exc:
        raise FileFormatError(path, f"{name!r} cannot be looked up ({first_line(exc)})") from None
    if link is None:
        raise FileFormatError(path, f"no dataset {name!r} (the file holds {sorted(f.keys()) or 'nothing'}; "
                                    f"choose one with {chooser})")
    if isinstance(link, h5py.ExternalLink):
        raise FileFormatError(path, f"{name!r} is an external link to {link.filename!r}: refused (a volume file is "
                                    f"read from itself only)")
    try:
        ds = f[name]
    except Exception as exc:  # a dangling soft link, a corrupt object header
        raise FileFormatError(path, f"{name!r} cannot be opened ({first_line(exc)})") from None
    if not isinstance(ds, h5py.Dataset):
        raise FileFormatError(path, f"{name!r} is a group, expected a dataset")
    check_safe(path, ds)
    return ds


def check_safe(path: str | os.PathLike, ds: Any) -> None:
    """Refuse a dataset whose read would leave the file or load a plug-in (module docstring)."""
    name = ds.name
    if ds.external:
        files = sorted({os.fsdecode(e[0]) for e in ds.external})
        raise FileFormatError(path, f"dataset {name!r} keeps its data in other files ({', '.join(files)[:200]}): "
                                    f"external storage is refused (a volume file is read from itself only)")
    if ds.is_virtual:
        outside = sorted({m.file_name for m in ds.virtual_sources() if m.file_name != "."})
        if outside:
            raise FileFormatError(path, f"dataset {name!r} is a virtual dataset reading other files "
                                        f"({', '.join(outside)[:200]}): refused (a volume file is read from itself only)")
    dcpl = ds.id.get_create_plist()
    for i in range(dcpl.get_nfilters()):
        code, _, _, label = dcpl.get_filter(i)
        if code not in BUILTIN_FILTERS:
            what = label.decode(errors="replace") if isinstance(label, bytes) else str(label)
            raise FileFormatError(path, f"dataset {name!r} is encoded with the filter {code}"
                                        f"{' (' + what + ')' if what else ''}, which is not built into HDF5 or h5py: "
                                        f"refused (plug-in filters load libraries; re-save it with gzip, e.g. "
                                        f"h5repack -f GZIP=4)")


def _read(path: str | os.PathLike, ds: Any, region: Any) -> np.ndarray:
    try:
        return np.asarray(ds[region])
    except MemoryError:
        raise FileFormatError(path, f"dataset {ds.name!r}: not enough memory to read {region!r}"[:300]) from None
    except Exception as exc:
        raise FileFormatError(path, f"dataset {ds.name!r} cannot be read (corrupt: {first_line(exc)})") from None


def read_whole(path: str | os.PathLike, ds: Any) -> np.ndarray:
    """The whole dataset, after checking that its declared size fits the machine's memory."""
    check_declared_size(path, f"dataset {ds.name!r}", ds.shape, ds.dtype.itemsize)
    return _read(path, ds, ())


def _chunk_indices(sl: slice, n: int, c: int) -> int:
    """How many chunks of edge ``c`` the slice ``sl`` of an axis of length ``n`` touches."""
    start, stop, step = sl.indices(n)
    if step >= c:  # every index in its own chunk
        return len(range(start, stop, step))
    return len(range(start // c, (max(stop, start + 1) - 1) // c + 1)) if stop > start else 0


def _cost(ds: Any, region: Region) -> tuple[int, int]:
    """``(chunks touched, bytes decoded)`` of reading ``region`` (chunked datasets; 0, 0 otherwise)."""
    if ds.chunks is None:
        return 0, 0
    touched = math.prod(_chunk_indices(sl, n, c) for sl, n, c in zip(region, ds.shape, ds.chunks))
    return touched, touched * math.prod(ds.chunks) * ds.dtype.itemsize


def _rechunk_hint(ds: Any) -> str:
    edge = "x".join(str(min(64, n)) for n in ds.shape)
    return f"rechunk the file (e.g. h5repack -l {ds.name.lstrip('/')}:CHUNK={edge} in.h5 out.h5)"


def read_region(path: str | os.PathLike, ds: Any, region: Region) -> np.ndarray:
    """``ds[region]`` after checking what it costs (chunks touched, bytes decoded)."""
    touched, decoded = _cost(ds, region)
    if touched > MAX_READ_CHUNKS or decoded > MAX_READ_BYTES:
        chunks = "x".join(map(str, ds.chunks))
        raise FileFormatError(path, f"reading a block of dataset {ds.name!r} would decode {touched} chunks of {chunks} "
                                    f"voxels ({human_bytes(decoded)}; a read may touch at most {MAX_READ_CHUNKS} chunks "
                                    f"and decode {human_bytes(MAX_READ_BYTES)}): {_rechunk_hint(ds)}")
    return _read(path, ds, region)


def _stride(shape: tuple[int, ...], limit: int) -> int:
    """The smallest ``k`` for which every ``k``-th index on each axis gives at most ``limit`` values."""
    k = max(1, int((math.prod(shape) / max(limit, 1)) ** (1 / len(shape))))
    while k > 1 and math.prod(-(-n // (k - 1)) for n in shape) <= limit:
        k -= 1
    while math.prod(-(-n // k) for n in shape) > limit:
        k += 1
    return k


def sample(path: str | os.PathLike, ds: Any, max_voxels: int) -> np.ndarray:
    """At most ``max_voxels`` values spread regularly over the dataset, float32, costed (module
    docstring): ``(d, h, w)`` for every ``k``-th voxel, ``(1, 1, n)`` for whole chunks on a grid."""
    shape = tuple(int(n) for n in ds.shape)
    k = _stride(shape, max_voxels)
    regular = (slice(None, None, k),) * len(shape)
    touched, decoded = _cost(ds, regular)
    if touched <= MAX_SAMPLE_CHUNKS and decoded <= MAX_SAMPLE_BYTES:
        return np.asarray(_read(path, ds, regular), dtype=np.float32)
    chunks = tuple(int(c) for c in ds.chunks)
    chunk_voxels = math.prod(chunks)
    chunk_bytes = chunk_voxels * ds.dtype.itemsize
    if chunk_bytes > MAX_SAMPLE_BYTES:
        raise FileFormatError(path, f"dataset {ds.name!r} has chunks of {'x'.join(map(str, chunks))} voxels "
                                    f"({human_bytes(chunk_bytes)} each, more than the {human_bytes(MAX_SAMPLE_BYTES)} a "
                                    f"sample may decode): {_rechunk_hint(ds)}")
    wanted = max(1, min(MAX_SAMPLE_CHUNKS, MAX_SAMPLE_BYTES // chunk_bytes, max_voxels // chunk_voxels))
    grid = tuple(-(-n // c) for n, c in zip(shape, chunks))
    m = _stride(grid, wanted)  # every m-th chunk on each axis
    picked = [range(0, g, m) for g in grid]
    count = math.prod(len(r) for r in picked)
    s = _stride(chunks, max(1, max_voxels // count))  # voxels kept inside each chunk
    parts = []
    for index in itertools.product(*picked):
        block = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, shape))
        parts.append(np.asarray(_read(path, ds, block)[(slice(None, None, s),) * len(shape)],
                                dtype=np.float32).reshape(-1))
    return np.concatenate(parts).reshape(1, 1, -1)


def has_hdf5_ending(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an HDF5 file (``.h5``, ``.hdf5``)."""
    return Path(path).name.lower().endswith((".h5", ".hdf5"))
