r"""Arrays larger than memory, read and written region by region: Zarr, ``.npy`` and in-memory arrays.

A reconstruction of a 512^3-2048^3 volume cannot hold the volume (0.5-32 GB in float32), let alone
its intermediate estimates, in memory. :class:`ArrayStore` gives the streamed reconstruction
(:mod:`unrolled3d.partition.streamed`) one interface to an array of any of these kinds:

==================  ==================================================================================
kind                how a region is read and written
==================  ==================================================================================
``.zarr``           a Zarr v3 array (the ``zarr`` package): chunked and compressed; a region touches
                    only its chunks, decoded into fresh buffers (nothing stays mapped)
``.npy``            a memory map opened for each access and closed after it, so that the pages of a
                    region leave the resident set with the access (a map kept open would count every
                    page ever touched as resident memory)
array-like          anything sliced like NumPy: ``numpy.ndarray``, ``h5py.Dataset``, ``zarr.Array``,
                    ``torch.Tensor`` (CPU)
==================  ==================================================================================

Regions are given as ``start`` and ``size`` tuples of the array's rank; reads return float32
copies. :func:`create_store` makes a new Zarr or ``.npy`` array under a temporary name, and
:meth:`ArrayStore.commit` moves it into place atomically (the data synced, then renamed, then the
folder synced), so that an interrupted run leaves no half-written output under the final name; a
new ``.npy`` output gets its voxel-size sidecar before its rename, as one pair
(:mod:`unrolled3d.io.npy_pair`), and a Zarr output its :class:`~unrolled3d.io.Spatial` as
attributes. The leftovers of killed writers of the same output are removed first
(:func:`~unrolled3d.io.atomic.remove_stale_leftovers`); the disk space of a new ``.npy`` file is
reserved when it is made (a full disk is then an error at once, not a crash of the memory map
later), and a full disk is one line naming the output (:class:`~unrolled3d.errors.DiskFullError`).

Examples
--------
>>> import numpy as np
>>> from unrolled3d.io.stores import ArrayStore
>>> s = ArrayStore(np.zeros((4, 5, 6), dtype=np.float32))
>>> s.add((1, 1, 1), np.ones((2, 2, 2), dtype=np.float32)); s.add((2, 2, 2), np.ones((2, 2, 2)))
>>> float(s.read((0, 0, 0), (4, 5, 6)).sum()), float(s.read((2, 2, 2), (1, 1, 1))[0, 0, 0])
(16.0, 2.0)
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from .._validation import int_tuple
from ..errors import FileFormatError, first_line
from .atomic import fsync_folder, no_space_left, put_in_place, remove_stale_leftovers, resolve_output
from .spatial import Spatial

__all__ = ["ArrayStore", "AffineStore", "NpyStore", "ZarrStore", "open_store", "create_store", "store_kind", "STORE_ENDINGS",
           "default_chunks", "settle_pending_writes", "remove_own_temporary_stores"]

#: file endings of the stores that :func:`open_store` and :func:`create_store` handle by name
STORE_ENDINGS = (".zarr", ".npy")


def store_kind(path: str | os.PathLike) -> str | None:
    """``"zarr"`` or ``"npy"`` from a path's ending (``None`` for any other)."""
    name = str(path).rstrip("/").lower()
    if name.endswith(".zarr"):
        return "zarr"
    if name.endswith(".npy"):
        return "npy"
    return None


def _region(start: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """The slices of ``[start, start + size)``, checked to lie inside ``shape``."""
    if len(start) != len(shape) or len(size) != len(shape):
        raise ValueError(f"a region of a {len(shape)}-D array needs {len(shape)} starts and sizes, got "
                         f"{tuple(start)} and {tuple(size)}")
    out = []
    for s, n, full in zip(start, size, shape):
        s, n = int(s), int(n)
        if s < 0 or n < 0 or s + n > full:
            raise ValueError(f"region start {tuple(start)} size {tuple(size)} lies outside the array {tuple(shape)}")
        out.append(slice(s, s + n))
    return tuple(out)


def _as_numpy(block: Any) -> np.ndarray:
    if isinstance(block, torch.Tensor):
        block = block.detach().cpu().numpy()
    return np.asarray(block, dtype=np.float32)


class ArrayStore:
    """An array read and written region by region (see the module docstring for the kinds).

    Parameters
    ----------
    array : array-like
        Sliced like NumPy (``shape``, ``arr[region]``, ``arr[region] = block``).
    path : path, optional
        Where it lives (for messages and :meth:`commit`).

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype

    Examples
    --------
    >>> import numpy as np
    >>> from unrolled3d.io.stores import ArrayStore
    >>> s = ArrayStore(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    >>> s.read((1, 1, 1), (1, 2, 2)).tolist()
    [[[17.0, 18.0], [21.0, 22.0]]]
    """

    def __init__(self, array: Any, path: str | os.PathLike | None = None) -> None:
        if not hasattr(array, "shape") or not hasattr(array, "__getitem__"):
            raise TypeError(f"an array store needs an array-like (shape and slicing), got {type(array).__name__}")
        self._array = array
        self.path = None if path is None else Path(path)
        self.shape = tuple(int(n) for n in array.shape)
        dtype = array.dtype
        self.dtype = np.dtype(str(dtype).replace("torch.", "")) if isinstance(dtype, torch.dtype) else np.dtype(dtype)
        self._final: Path | None = None  # where commit() moves a store made by create_store

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path is not None else ""
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}{where})"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    # ------------------------------------------------------------------ access
    def _get(self, region: tuple[slice, ...]) -> Any:
        return self._array[region]

    def _set(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        if isinstance(self._array, torch.Tensor):
            self._array[region] = torch.from_numpy(block).to(self._array.dtype)
        else:
            self._array[region] = block

    def read(self, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """A float32 copy of the region ``[start, start + size)``."""
        got = self._get(_region(start, size, self.shape))
        if isinstance(got, torch.Tensor):
            got = got.detach().cpu().numpy()
        return np.array(got, dtype=np.float32)

    def write(self, start: Sequence[int], block: Any) -> None:
        """Store ``block`` at ``start`` (its shape is the region's size)."""
        block = _as_numpy(block)
        try:
            self._set(_region(start, block.shape, self.shape), block)
        except OSError as exc:
            full = no_space_left(exc, self._final or self.path or "an array store")
            if full is None:
                raise
            raise full from None

    def add(self, start: Sequence[int], block: Any) -> None:
        """Add ``block`` to the region at ``start`` (read, add, write)."""
        block = _as_numpy(block)
        self.write(start, self.read(start, block.shape) + block)

    def fill(self, value: float = 0.0, slab: int | None = None) -> None:
        """Set every element to ``value``, a slab of the first axis at a time."""
        step = slab or max(1, (64 * 2**20) // max(1, math.prod(self.shape[1:]) * 4))
        for s in range(0, self.shape[0], step):
            n = min(step, self.shape[0] - s)
            self.write((s, *[0] * (len(self.shape) - 1)), np.full((n, *self.shape[1:]), value, dtype=np.float32))

    # ------------------------------------------------------------------ lifetime
    @property
    def destination(self) -> Path | None:
        """Where the array will be once committed (its path when it is in place already)."""
        return self._final or self.path

    def commit(self) -> Path | None:
        """Move a store made by :func:`create_store` under its final name (atomically: synced,
        renamed or swapped with the store it replaces, the folder synced: see
        :func:`~unrolled3d.io.atomic.put_in_place`); a no-op for any other store. Returns the final path."""
        if self._final is None or self.path is None:
            return self.path
        _sync_tree(self.path)
        final = self._final
        self._before_rename(final)
        put_in_place(self.path, final)  # create_store checked that an old one may be replaced
        _OWN_TEMPORARY_STORES.discard(self.path)
        self.path, self._final = final, None
        self._reopen()
        return final

    def discard(self) -> None:
        """Delete a store made by :func:`create_store` that was not committed (after the writes an
        interrupted call left running have finished: they would recreate what is deleted)."""
        if self._final is not None and self.path is not None:
            settle_pending_writes()
            _remove(self.path)
            _OWN_TEMPORARY_STORES.discard(self.path)
            self._final = None

    def _reopen(self) -> None:
        """Point at ``self.path`` after a rename (stores that keep a handle)."""

    def _before_rename(self, final: Path) -> None:
        """What must be in place before the data takes its final name (an ``.npy`` file's sidecar)."""


class AffineStore(ArrayStore):
    """Another store seen through an affine map: it reads ``scale * stored + shift`` and writes
    ``(value - shift) / scale`` (e.g. measurements brought to a model's units on the fly, or a
    reconstruction written back in the measurements' units).

    Examples
    --------
    >>> import numpy as np
    >>> from unrolled3d.io.stores import AffineStore, ArrayStore
    >>> raw = ArrayStore(np.full((2, 2), 4.0, dtype=np.float32))
    >>> view = AffineStore(raw, scale=0.5, shift=1.0)
    >>> float(view.read((0, 0), (1, 1))[0, 0]); view.write((0, 0), np.full((1, 1), 2.0)); float(raw.read((0, 0), (1, 1))[0, 0])
    3.0
    2.0
    """

    def __init__(self, store: ArrayStore, scale: float = 1.0, shift: float = 0.0) -> None:
        if not scale or not math.isfinite(scale) or not math.isfinite(shift):
            raise ValueError(f"an affine view needs a finite non-zero scale and a finite shift, got {scale}, {shift}")
        super().__init__(np.empty((0,) * len(store.shape)), store.path)
        self.shape, self.dtype = store.shape, store.dtype
        self.inner, self.scale, self.shift = store, float(scale), float(shift)

    def read(self, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        block = self.inner.read(start, size)
        block *= self.scale
        block += self.shift
        return block

    def write(self, start: Sequence[int], block: Any) -> None:
        self.inner.write(start, (_as_numpy(block) - self.shift) / self.scale)


class NpyStore(ArrayStore):
    """A ``.npy`` file mapped for each access only (see the module docstring).

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from unrolled3d.io.stores import NpyStore
    >>> path = os.path.join(tempfile.mkdtemp(), "v.npy"); np.save(path, np.zeros((2, 3, 4), np.float32))
    >>> s = NpyStore(path, writable=True); s.add((0, 0, 0), np.ones((1, 1, 4))); float(np.load(path).sum())
    4.0
    """

    def __init__(self, path: str | os.PathLike, writable: bool = False) -> None:
        self.writable = writable
        arr = self._map(Path(path), "r")
        super().__init__(arr, path)
        del arr
        self._array = None
        self.spatial: Spatial | None = None  # a new output's sidecar, written at commit

    def _before_rename(self, final: Path) -> None:
        if self.spatial is None:
            return
        from .volumes import write_npy_sidecar

        # the pair as one: the sidecar names this data (and the volume it replaces), then the rename
        write_npy_sidecar(final, None, self.shape, force=True, spatial=self.spatial, data_file=self.path)

    @staticmethod
    def _map(path: Path, mode: Literal["r", "r+"]) -> np.memmap:
        try:
            arr = np.load(path, mmap_mode=mode, allow_pickle=False)
        except FileNotFoundError:
            raise
        except Exception as exc:  # truncated, corrupt header, object dtype
            raise FileFormatError(path, f"not a readable .npy array ({first_line(exc)})") from None
        if not isinstance(arr, np.memmap):  # np.load maps a .npy file as a memmap (an .npz is no array)
            raise FileFormatError(path, "not a single .npy array")
        return arr

    def _file(self) -> Path:
        assert self.path is not None  # an NpyStore is its file: constructed from it, moved by commit()
        return self.path

    def _get(self, region: tuple[slice, ...]) -> np.ndarray:
        arr = self._map(self._file(), "r")
        try:
            return np.array(arr[region], dtype=np.float32)
        finally:
            del arr  # unmapped: the region's pages leave the resident set

    def _set(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        if not self.writable:
            raise PermissionError(f"{self.path} is open for reading only")
        arr = self._map(self._file(), "r+")
        try:
            arr[region] = block
            arr.flush()
        finally:
            del arr


class ZarrStore(ArrayStore):
    """A Zarr v3 array (``zarr.open_array``); its attributes are :attr:`attrs`.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from unrolled3d.io.stores import create_store
    >>> s = create_store(os.path.join(tempfile.mkdtemp(), "v.zarr"), (8, 8, 8), attrs={"voxel_size": [1, 1, 1]})
    >>> s.write((0, 0, 0), np.ones((2, 8, 8))); final = s.commit()
    >>> type(s).__name__, final.name, s.attrs["voxel_size"], float(s.read((0, 0, 0), (8, 8, 8)).sum())
    ('ZarrStore', 'v.zarr', [1, 1, 1], 128.0)
    """

    #: chunks Zarr reads or writes at once for one region (its default is 10). Each chunk in flight holds
    #: its encoded and decoded bytes outside the memory plan: with 10, FDK of a 256^3 scan under a
    #: 16.9 MiB budget grew the process by 18-22 MiB; with 2 by 9.5 MiB, in the same CPU time
    #: (tests/test_streamed.py::test_streamed_reconstruction_stays_within_the_budget)
    CONCURRENCY = 2

    def __init__(self, array: Any, path: str | os.PathLike | None = None) -> None:
        super().__init__(array, path)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._array.attrs)

    def _get(self, region: tuple[slice, ...]) -> Any:
        with _zarr().config.set({"async.concurrency": self.CONCURRENCY}):
            return self._array[region]

    def _set(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        with _zarr().config.set({"async.concurrency": self.CONCURRENCY}):
            self._array[region] = block

    def _reopen(self) -> None:
        zarr = _zarr()
        self._array = zarr.open_array(str(self.path), mode="r+")


def settle_pending_writes(timeout: float = 120.0) -> None:
    """Wait until the writes that Zarr still runs in its I/O thread are done.

    Zarr 3 runs every read and write as a task on its own event loop in another thread, and the
    calling thread merely waits: a Ctrl-C or SIGTERM raised in the caller ends the wait, not the
    task, which then goes on writing chunks into a store being deleted (leaving it half there).
    Called before a store is discarded; a no-op where Zarr was never used.
    """
    import asyncio
    import sys

    sync = sys.modules.get("zarr.core.sync")
    loop = getattr(sync, "loop", [None])[0] if sync is not None else None
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def others_done() -> None:
        me = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not me]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    asyncio.run_coroutine_threadsafe(others_done(), loop).result(timeout + 5.0)


#: the temporary stores (:func:`create_store` with ``temporary``, ``create_scan``) this process has made
#: and neither committed nor discarded. A signal can land where no ``except`` covers a new one yet (just
#: after it is made, before its caller holds it): :func:`remove_own_temporary_stores` removes what such a
#: signal left.
_OWN_TEMPORARY_STORES: set[Path] = set()


def remove_own_temporary_stores() -> list[str]:
    """Remove this process's temporary stores that were neither committed nor discarded, once Zarr's
    pending writes are done; returns their names. The command line calls it when a command is stopped by
    Ctrl-C, SIGTERM or SIGHUP (as :func:`~unrolled3d.io.atomic.remove_own_temporaries` for files)."""
    removed = []
    if _OWN_TEMPORARY_STORES:
        settle_pending_writes()
    for path in sorted(_OWN_TEMPORARY_STORES):
        if path.exists() or path.is_symlink():
            _remove(path)
            removed.append(str(path))
        _OWN_TEMPORARY_STORES.discard(path)
    return removed


def _zarr():
    try:
        import zarr
    except ImportError:
        raise ImportError("Zarr stores need the zarr package (v3): pip install 'zarr>=3'") from None
    if int(zarr.__version__.split(".")[0]) < 3:
        raise ImportError(f"Zarr stores need zarr >= 3, found {zarr.__version__}")
    return zarr


def default_chunks(shape: Sequence[int], target_bytes: int = 2**17) -> tuple[int, ...]:
    """Chunks of about ``target_bytes`` (float32), cubic-ish: equal edges, each at most the array's.

    Small chunks (32^3 floats, 128 KiB, by default) keep the memory of a region's read or
    read-modify-write close to the region's own: Zarr decodes whole chunks, several at a time.

    Examples
    --------
    >>> from unrolled3d.io.stores import default_chunks
    >>> default_chunks((512, 512, 512)), default_chunks((30, 640, 768))
    ((32, 32, 32), (30, 32, 32))
    """
    edge = max(1, int(round((target_bytes / 4) ** (1 / len(shape)))))
    edge = max(16, edge - edge % 16) if edge >= 16 else edge
    return tuple(min(n, edge) for n in shape)


def open_store(path: str | os.PathLike, writable: bool = False) -> ArrayStore:
    """The Zarr array or ``.npy`` file at ``path``.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    FileFormatError
        Not a readable array of that kind (a Zarr group is not an array: open its member).
    ValueError
        Another ending than ``.zarr`` / ``.npy``.
    """
    p = Path(path)
    kind = store_kind(p)
    if kind is None:
        raise ValueError(f"{p}: a store's name ends in .zarr or .npy")
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if kind == "npy":
        return NpyStore(p, writable=writable)
    zarr = _zarr()
    try:
        arr = zarr.open_array(str(p), mode="r+" if writable else "r")
    except Exception as exc:
        raise FileFormatError(p, f"not a readable Zarr array ({first_line(exc)})") from None
    return ZarrStore(arr, p)


def create_store(path: str | os.PathLike, shape: Sequence[int], chunks: Sequence[int] | None = None,
                 attrs: dict[str, Any] | None = None, force: bool = False, temporary: bool = True,
                 compressed: bool = True, spatial: Spatial | None = None) -> ArrayStore:
    """A new float32 array at ``path`` (``.zarr`` or ``.npy``), zero-filled.

    Parameters
    ----------
    path : path
        The final name. With ``temporary`` (default) the array is made under a hidden temporary
        name beside it, and :meth:`ArrayStore.commit` moves it into place.
    shape : tuple of int
    chunks : tuple of int, optional
        Zarr chunks (default :func:`default_chunks`); ignored for ``.npy``.
    attrs : dict, optional
        JSON attributes (Zarr attributes; a ``.npy`` file keeps none and refuses them).
    force : bool
        Allow replacing an existing file or store at ``path`` (at :meth:`~ArrayStore.commit`).
    compressed : bool
        Zarr only: Zstandard-compress the chunks (off for scratch arrays, read and written often).
    spatial : Spatial, optional
        The volume's voxel size and affine: Zarr attributes (``voxel_size``, ``affine``,
        ``frame_code``, ``axes``, ``unit``); for a new ``.npy`` output (``temporary``), its sidecar
        (written at :meth:`~ArrayStore.commit`, 1 mm voxels without ``spatial``).
    """
    kind = store_kind(path)
    if kind is None:
        raise ValueError(f"{path}: a store's name ends in .zarr or .npy")
    final = _check_target(Path(path), kind, force)
    shape = int_tuple("shape", shape, len(shape))
    if spatial is not None and not isinstance(spatial, Spatial):
        raise TypeError(f"spatial must be an unrolled3d.io.Spatial, got {type(spatial).__name__}")
    target = final.with_name(f".{final.name}.tmp-{os.getpid()}") if temporary else final
    if temporary:
        remove_stale_leftovers(final)  # what killed writers of this output left
        _OWN_TEMPORARY_STORES.add(target)  # before it exists: see remove_own_temporary_stores
    _remove(target)
    if kind == "npy":
        if attrs:
            raise ValueError(f"{final}: a .npy file keeps no attributes (use a .zarr store)")
        _new_npy(target, shape, final)
        store: ArrayStore = NpyStore(target, writable=True)
        if temporary:
            store.spatial = spatial or Spatial.from_voxel_size(1.0)  # type: ignore[attr-defined]
    else:
        zarr = _zarr()
        chunks = tuple(chunks) if chunks is not None else default_chunks(shape)
        kwargs: dict[str, Any] = {"compressors": None} if not compressed else {}
        attrs = {**(attrs or {}), **(_spatial_attrs(spatial) if spatial is not None else {})}
        try:
            arr = zarr.create_array(str(target), shape=shape, chunks=chunks, dtype="float32", fill_value=0.0,
                                    attributes=json.loads(json.dumps(attrs)), overwrite=True, **kwargs)
        except BaseException as exc:  # an interrupt too: the caller has no store to discard yet
            settle_pending_writes()
            _remove(target)
            _OWN_TEMPORARY_STORES.discard(target)
            if isinstance(exc, OSError):
                raise no_space_left(exc, final) or exc
            raise
        store = ZarrStore(arr, target)
    if temporary:
        store._final = final
    return store


def _spatial_attrs(spatial: Spatial) -> dict[str, Any]:
    """A volume's place in space as Zarr attributes (the HDF5 writer's names)."""
    return {"voxel_size": list(spatial.voxel_size), "affine": [list(r) for r in spatial.affine],
            "frame_code": spatial.code, "axes": "zyx", "unit": "mm"}


def _new_npy(target: Path, shape: tuple[int, ...], final: Path) -> None:
    """A zero-filled float32 ``.npy`` file whose blocks are reserved on the disk now: writing through
    a memory map into a full disk would kill the process (SIGBUS) instead of raising an error."""
    try:
        np.lib.format.open_memmap(target, mode="w+", dtype=np.float32, shape=shape).flush()
        fd = os.open(target, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # no reservation on this system
                raise
        finally:
            os.close(fd)
    except BaseException as exc:  # an interrupt too: the caller has no store to discard yet
        _remove(target)
        full = no_space_left(exc, final) if isinstance(exc, OSError) else None
        if full is None:
            raise
        raise full from None


def _check_target(path: Path, kind: str, force: bool) -> Path:
    """The path a new store may take: nothing there, or (with ``force``) a store of its kind."""
    if kind == "npy":
        final = resolve_output(path, replace_read_only=force)
        from .volumes import _check_sidecar_target

        _check_sidecar_target(final, force)  # an unrelated X.json is never replaced by X.npy's sidecar
    else:
        final = Path(os.path.realpath(path)) if path.is_symlink() else path
        if final.exists() and not (final.is_dir() and (final / "zarr.json").is_file()):
            raise ValueError(f"{path} exists and is not a Zarr store: not replaced")
    if final.exists() and not force:
        raise FileExistsError(f"{path} exists: choose another name, or allow replacing it (--force)")
    return final


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _sync_tree(path: Path) -> None:
    """fsync every file under ``path`` (or ``path`` itself), then the folders."""
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_folder(root)
    else:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
