r"""Measurements (and their truth) as a Zarr store: a scan larger than memory, with its geometry.

A measurements store is a Zarr v3 group (a folder ``*.zarr``) holding

=============  =====================================================================================
``y``          the measurements ``(n_views, rows, cols)``, float32, chunks of one view's
               ``128 x 128`` pixels (a patch reads only the chunks of its detector windows)
``x_true``     optional: the volume that was scanned ``(D, H, W)``, float32, chunks of ``64^3``
attributes     ``format`` (:data:`MEAS_STORE_FORMAT`), ``geometry``
               (:meth:`~unrolled3d.geometry.ConeBeamGeometry.to_dict`), ``meta`` (a JSON object)
=============  =====================================================================================

:func:`open_scan` opens one (or a ``.pt`` measurements file, whose tensors are wrapped as in-memory
stores), checks that the arrays match the geometry, and names the file in every error.

Examples
--------
>>> import tempfile, os, numpy as np
>>> from unrolled3d.io.scan_stores import create_scan, open_scan
>>> from unrolled3d.physics import standard_cone_beam
>>> g = standard_cone_beam(8, 4)
>>> path = os.path.join(tempfile.mkdtemp(), "m.zarr")
>>> scan = create_scan(path, g, with_truth=False, meta={"noise": 0.0})
>>> scan.y.write((0, 0, 0), np.ones(g.sino_shape, dtype=np.float32)); _ = scan.commit()
>>> y, geometry, x_true, meta = open_scan(path)
>>> y.shape == g.sino_shape, geometry == g, x_true, meta
(True, True, None, {'noise': 0.0})
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from ..errors import FileFormatError, first_line
from ..geometry import ConeBeamGeometry
from .atomic import no_space_left, put_in_place, remove_stale_leftovers
from .stores import (_OWN_TEMPORARY_STORES, ArrayStore, ZarrStore, _check_target, _sync_tree, _zarr, settle_pending_writes,
                     store_kind)

__all__ = ["MEAS_STORE_FORMAT", "ScanStore", "create_scan", "open_scan"]

MEAS_STORE_FORMAT = "unrolled3d-measurements-zarr/1"
_Y_CHUNK = (1, 128, 128)
_X_CHUNK = (64, 64, 64)


@dataclass
class ScanStore:
    """A measurements store being written (:func:`create_scan`): fill ``y`` (and ``x_true``),
    then :meth:`commit` moves it under its final name.

    Examples
    --------
    >>> import os, tempfile
    >>> from unrolled3d.io.scan_stores import create_scan
    >>> from unrolled3d.physics import standard_cone_beam
    >>> scan = create_scan(os.path.join(tempfile.mkdtemp(), "m.zarr"), standard_cone_beam(8, 4))
    >>> scan.path.name.startswith(".m.zarr.tmp-"), scan.y.shape, scan.x_true.shape, scan.commit().name
    (True, (4, 10, 12), (8, 8, 8), 'm.zarr')
    """

    path: Path
    final: Path
    y: ArrayStore
    x_true: ArrayStore | None

    def commit(self) -> Path:
        """Sync the store, then rename it into place (replacing an old store when allowed)."""
        _sync_tree(self.path)
        put_in_place(self.path, self.final)  # swapped with an old store in one step: never neither
        _OWN_TEMPORARY_STORES.discard(self.path)
        return self.final

    def discard(self) -> None:
        """Delete the uncommitted store (once Zarr's pending writes are done: see
        :func:`~unrolled3d.io.stores.settle_pending_writes`)."""
        settle_pending_writes()
        shutil.rmtree(self.path, ignore_errors=True)
        _OWN_TEMPORARY_STORES.discard(self.path)

    def set_meta(self, meta: dict[str, Any]) -> None:
        """Replace the store's ``meta`` attribute (what is known only once the scan is made,
        e.g. its noise), before :meth:`commit`."""
        group = _zarr().open_group(str(self.path), mode="r+")
        group.attrs["meta"] = json.loads(json.dumps(meta))


def create_scan(path: str | os.PathLike, geometry: ConeBeamGeometry, with_truth: bool = True,
                meta: dict[str, Any] | None = None, force: bool = False) -> ScanStore:
    """A new measurements store for ``geometry`` under a temporary name beside ``path`` (a
    ``.zarr`` folder), its arrays zero-filled; :meth:`ScanStore.commit` puts it in place."""
    final = Path(path)
    if store_kind(final) != "zarr":
        raise ValueError(f"{final}: a measurements store's name ends in .zarr")
    if not isinstance(geometry, ConeBeamGeometry):
        raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}")
    final = _check_target(final, "zarr", force)
    remove_stale_leftovers(final)  # what killed writers of this store left beside it
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _OWN_TEMPORARY_STORES.add(tmp)  # before it exists: an interrupt just after create_scan returns leaves it there
    zarr = _zarr()
    attrs = {"format": MEAS_STORE_FORMAT, "geometry": geometry.to_dict(), "meta": json.loads(json.dumps(meta or {}))}
    try:  # an interrupt while the store is made removes what was made (the caller has no store to discard yet)
        group = zarr.open_group(str(tmp), mode="w", attributes=attrs)
        y = group.create_array("y", shape=geometry.sino_shape, dtype="float32", fill_value=0.0,
                               chunks=tuple(min(c, n) for c, n in zip(_Y_CHUNK, geometry.sino_shape)))
        x = None
        if with_truth:
            x = group.create_array("x_true", shape=geometry.vol_shape, dtype="float32", fill_value=0.0,
                                   chunks=tuple(min(c, n) for c, n in zip(_X_CHUNK, geometry.vol_shape)))
    except BaseException as exc:
        settle_pending_writes()
        shutil.rmtree(tmp, ignore_errors=True)
        _OWN_TEMPORARY_STORES.discard(tmp)
        if isinstance(exc, OSError):
            raise no_space_left(exc, final) or exc
        raise
    return ScanStore(tmp, final, ZarrStore(y, tmp / "y"), None if x is None else ZarrStore(x, tmp / "x_true"))


def open_scan(path: str | os.PathLike) -> tuple[ArrayStore, ConeBeamGeometry, ArrayStore | None, dict[str, Any]]:
    """``(y, geometry, x_true or None, meta)`` of a measurements store (``.zarr``) or file (``.pt``).

    ``y`` is ``(n_views, rows, cols)`` and ``x_true`` ``(D, H, W)``, both as
    :class:`~unrolled3d.io.stores.ArrayStore` (read region by region; a ``.pt`` file's tensors
    are in memory already).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    FileFormatError
        Not a measurements store; a geometry the package refuses; arrays whose shape or dtype
        does not match the geometry.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if store_kind(p) != "zarr":
        from .files import load_measurements

        y, geometry, x_true, meta = load_measurements(p)
        if y.shape[0] != 1 or y.shape[1] != 1:
            raise FileFormatError(p, f"a streamed reconstruction takes one scan (batch and channel 1), got "
                                     f"measurements of shape {tuple(y.shape)}")
        truth = None if x_true is None else ArrayStore(x_true.reshape(geometry.vol_shape).float().numpy(), p)
        return ArrayStore(y[0, 0].float().numpy(), p), geometry, truth, meta
    zarr = _zarr()
    try:
        group = zarr.open_group(str(p), mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:
        raise FileFormatError(p, f"not a readable Zarr group ({first_line(exc)})") from None
    if attrs.get("format") != MEAS_STORE_FORMAT:
        raise FileFormatError(p, f"not an unrolled3d measurements store (format {attrs.get('format')!r}, expected "
                                 f"{MEAS_STORE_FORMAT!r})")
    try:
        description: Any = attrs.get("geometry")  # the store's JSON: from_dict checks it
        geometry = ConeBeamGeometry.from_dict(description)
    except (TypeError, ValueError, KeyError) as exc:
        raise FileFormatError(p, f"invalid geometry ({exc})") from None
    meta = attrs.get("meta", {})
    if not isinstance(meta, dict):
        raise FileFormatError(p, f"attribute 'meta' must be a JSON object, got {type(meta).__name__}")
    y_store = _member(group, p, "y", geometry.sino_shape, "the geometry's (n_views, rows, cols)")
    x_store = _member(group, p, "x_true", geometry.vol_shape, "the geometry's volume", optional=True)
    return y_store, geometry, x_store, meta


@overload
def _member(group: Any, path: Path, name: str, shape: tuple[int, ...], what: str,
            optional: Literal[False] = False) -> ArrayStore: ...
@overload
def _member(group: Any, path: Path, name: str, shape: tuple[int, ...], what: str,
            optional: bool) -> ArrayStore | None: ...
def _member(group: Any, path: Path, name: str, shape: tuple[int, ...], what: str,
            optional: bool = False) -> ArrayStore | None:
    try:
        arr = group[name]
    except KeyError:
        if optional:
            return None
        raise FileFormatError(path, f"no array {name!r} in the store") from None
    if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
        raise FileFormatError(path, f"{name!r} is not an array")
    if tuple(arr.shape) != tuple(shape):
        raise FileFormatError(path, f"array {name!r} has shape {tuple(arr.shape)}, {what} is {tuple(shape)}")
    if str(arr.dtype) not in ("float32", "float64", "float16"):
        raise FileFormatError(path, f"array {name!r} has dtype {arr.dtype}, expected floating-point values")
    return ZarrStore(arr, path / name)
