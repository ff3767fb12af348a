r"""An ``.npy`` volume and its ``.json`` sidecar, written as one and read only as a matching pair.

``X.npy`` cannot hold its voxel size, so it lives in ``X.json``. Two files cannot be renamed at
once; this module makes the pair behave as if they were:

1. the array is written to a temporary file beside ``X.npy`` (its SHA-256 computed on the way);
2. ``X.json`` is replaced (atomically) by a sidecar that records the new data's **identity**
   (size, SHA-256, modification time, inode) and, under ``"previous"``, the record of the volume
   still in ``X.npy`` (when the old pair matched);
3. the temporary file is renamed onto ``X.npy``.

A reader uses the record whose identity is the data's: the new one after step 3, the previous
one when a ``kill -9`` or a power cut struck between 2 and 3 (the old volume keeps its old voxel
size); a disk full in step 2 leaves the old pair untouched. A data file that matches neither
record (replaced by another program, or a sidecar copied from another volume) is refused with a
:class:`~unrolled3d.errors.FileFormatError` naming both files, never read with a voxel size that
belongs to another volume. The check is a ``stat`` when the file is the one written (same inode,
size and time); a copied file (new inode or time) is hashed once.

Sidecars written before identities were recorded (no ``"data"`` entry) are read as before.

Examples
--------
>>> import os, tempfile, numpy as np
>>> from unrolled3d.io.npy_pair import write_pair, read_record
>>> path = os.path.join(tempfile.mkdtemp(), "v.npy")
>>> write_pair(path, np.zeros((2, 3, 4), np.float32), {"voxel_size_zyx_mm": [2.0, 1.0, 1.0], "shape": [2, 3, 4]})
>>> read_record(path)["voxel_size_zyx_mm"]
[2.0, 1.0, 1.0]
>>> np.save(path, np.ones((2, 3, 4), np.float32))    # replaced behind the sidecar's back
>>> read_record(path)                                 # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
unrolled3d.errors.FileFormatError: .../v.json: describes another version of v.npy ...
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FileFormatError
from .atomic import atomic_path

__all__ = ["SIDECAR_KEY", "sidecar_of", "write_pair", "write_sidecar", "read_record", "is_our_sidecar",
           "sha256_of"]

#: the key every voxel-size sidecar holds (what tells it from an unrelated JSON file)
SIDECAR_KEY = "voxel_size_zyx_mm"
_BLOCK = 8 * 2**20


def sidecar_of(path: str | os.PathLike, reading: bool = False) -> Path:
    """``X.json`` for ``X.npy``: beside the data, so for a symbolic link beside the file it points to
    (writes go through links). ``reading``: a link's own ``X.json`` where its target has none (what
    versions that wrote the sidecar beside the link left)."""
    path = Path(path)
    if not path.is_symlink():
        return path.with_suffix(".json")
    beside_data = Path(os.path.realpath(path)).with_suffix(".json")
    if reading and not beside_data.exists() and path.with_suffix(".json").exists():
        return path.with_suffix(".json")
    return beside_data


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in blocks (memory flat in its size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _identity(path: Path, sha256: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"bytes": st.st_size, "sha256": sha256, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _same_file(ident: dict[str, Any], st: os.stat_result) -> bool:
    """Whether ``st`` is the very file ``ident`` was taken of (not modified since): no hashing."""
    return (ident.get("bytes") == st.st_size and ident.get("mtime_ns") == st.st_mtime_ns
            and ident.get("inode") == st.st_ino)


def is_our_sidecar(side: str | os.PathLike) -> bool:
    """``side`` holds a voxel-size sidecar (JSON object with :data:`SIDECAR_KEY`), not some other JSON file."""
    try:
        meta = json.loads(Path(side).read_text())
    except (OSError, ValueError):  # unreadable, not JSON, not UTF-8
        return False
    return isinstance(meta, dict) and SIDECAR_KEY in meta


def _load_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar of ``path`` as a dict; ``None`` when there is none or it is another JSON file
    (with a warning); a ``FileFormatError`` when it is not JSON."""
    side = sidecar_of(path, reading=True)
    if not side.exists():
        return None
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(side, f"not a valid voxel-size sidecar of {path.name}: expected JSON with "
                                    f"{SIDECAR_KEY!r} ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or SIDECAR_KEY not in meta:
        # some other JSON file that happens to share the name (the writer never replaces one)
        warnings.warn(f"{side} is not a voxel-size sidecar (no {SIDECAR_KEY!r} key): ignored, {path.name} is read "
                      f"with 1 mm voxels", stacklevel=4)
        return None
    return meta


def _records(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The sidecar's own record, then the previous volume's (if recorded)."""
    previous = meta.get("previous")
    own = {k: v for k, v in meta.items() if k != "previous"}
    return [own] + ([previous] if isinstance(previous, dict) else [])


def _check_identity(side: Path, record: dict[str, Any]) -> dict[str, Any]:
    ident = record.get("data")
    if not (isinstance(ident, dict) and isinstance(ident.get("bytes"), int) and isinstance(ident.get("sha256"), str)):
        raise FileFormatError(side, f"the sidecar's 'data' entry is malformed (expected the size and SHA-256 of the "
                                    f"volume), got {str(ident)[:200]}")
    return ident


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar record that describes the ``.npy`` file at ``path`` as it is now.

    ``None`` without a sidecar (or with an unrelated JSON file of that name); the sidecar itself
    for one written before identities were recorded. Raises a :class:`FileFormatError` when the
    sidecar describes another file (module docstring).
    """
    path = Path(path)
    meta = _load_sidecar(path)
    if meta is None or "data" not in meta:
        return meta
    side = sidecar_of(path, reading=True)
    records = _records(meta)
    idents = [_check_identity(side, r) for r in records]
    st = os.stat(path)
    for record, ident in zip(records, idents):
        if _same_file(ident, st):
            return record
    digest = sha256_of(path) if any(i["bytes"] == st.st_size for i in idents) else None
    for record, ident in zip(records, idents):
        if digest is not None and ident["sha256"] == digest:
            return record
    own = idents[0]
    raise FileFormatError(side, f"describes another version of {path.name} ({own['bytes']} bytes, SHA-256 "
                                f"{own['sha256'][:12]}...), not the {st.st_size}-byte file there now (a stale sidecar): the pair was not "
                                f"written together (an interrupted write, or {path.name} replaced by another program); "
                                f"write the volume again, or remove {side.name} to read it with 1 mm voxels")


def _current_record(path: Path) -> dict[str, Any] | None:
    """The record of the volume at ``path`` now, if its sidecar states it and the file is the one
    written (a ``stat``, no hashing: this runs before every write)."""
    if not path.exists():
        return None
    try:
        meta = _load_sidecar(path)
    except FileFormatError:
        return None
    if meta is None or "data" not in meta:
        return None
    st = os.stat(path)
    for record in _records(meta):
        ident = record.get("data")
        if isinstance(ident, dict) and _same_file(ident, st):
            return record
    return None


def write_sidecar(path: str | os.PathLike, record: dict[str, Any], data_file: str | os.PathLike | None = None,
                  sha256: str | None = None, force: bool = False) -> None:
    """Replace ``X.json`` (atomically) by ``record`` plus the identity of ``data_file`` (the data
    that will be ``X.npy``, default ``X.npy`` itself; ``sha256`` if already known) and the record
    of the volume in ``X.npy`` now."""
    path = Path(path)
    data_file = path if data_file is None else Path(data_file)
    ident = _identity(data_file, sha256 if sha256 is not None else sha256_of(data_file))
    previous = _current_record(path) if Path(data_file) != path else None
    side = {**record, "data": ident}
    if previous is not None:
        side["previous"] = previous
    with atomic_path(sidecar_of(path), replace_read_only=force) as tmp:
        tmp.write_text(json.dumps(side))


def write_pair(path: str | os.PathLike, arr: np.ndarray, record: dict[str, Any], force: bool = False) -> None:
    """Write ``arr`` to ``X.npy`` and ``record`` to ``X.json`` as one (module docstring)."""
    path = Path(path)
    arr = np.ascontiguousarray(arr)
    with atomic_path(path, replace_read_only=force) as tmp:
        with open(tmp, "wb") as raw:
            np.save(raw, arr, allow_pickle=False)  # numpy's direct write (no chunk copies)
        # the file's SHA-256 from its header and the array's memory: the bytes just written, not read back
        with open(tmp, "rb") as f:
            digest = hashlib.sha256(f.read(os.path.getsize(tmp) - arr.nbytes))
        digest.update(arr.data.cast("B"))  # arr.data: the memoryview of the (C-contiguous) array
        # the sidecar lands first, naming both the new data and the old: a crash before the data's
        # rename leaves the old volume with its own record
        write_sidecar(path, record, data_file=tmp, sha256=digest.hexdigest(), force=force)
