r"""A training run's identity: what makes two runs the same (and a checkpoint resumable).

:func:`run_description` describes the acquisition (the physics' fingerprint), the data (the
dataset's ``describe()``, plus the SHA-256 of every file it reads), the model's architecture and
the training settings; its hash is the run's fingerprint, stored in every checkpoint. A resumed
run must have the same fingerprint; :func:`differences` names what changed when it does not.

File contents are hashed by :func:`file_sha256`: streamed (memory stays flat in the file's
size) and cached by path, size, modification and change times in ``<cache>/file_sha256.json`` (the
cache folder of :func:`unrolled3d._build.cache_dir`, ``UNROLLED3D_CACHE_DIR`` to move it), so a
large data set is read once, not at every start.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .._build import cache_dir
from ..io.atomic import atomic_path
from ..protocols import Fingerprinted

__all__ = ["run_description", "differences", "file_sha256", "HASH_CACHE_NAME"]

HASH_CACHE_NAME = "file_sha256.json"
_CACHE_ENTRIES = 100_000  # the oldest entries go beyond this
_BLOCK = 1 << 20


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, unreadable, or torn by hand: start afresh
        return {}
    return data if isinstance(data, dict) else {}


def file_sha256(paths: list[str | os.PathLike]) -> dict[str, str]:
    """``{resolved path: SHA-256}`` of the files, from the cache where a file's size and
    modification time are those cached (module docstring).

    Examples
    --------
    >>> import hashlib, tempfile, pathlib
    >>> from unrolled3d.training.identity import file_sha256
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> file_sha256([p])[str(p.resolve())] == hashlib.sha256(b"abc").hexdigest()
    True
    """
    cache_file = cache_dir() / HASH_CACHE_NAME
    cache = _read_cache(cache_file)
    out, changed = {}, False
    for p in paths:
        path = Path(p).resolve()
        st = path.stat()
        # the change time as well: a rewrite that restores the modification time still changes it
        key, stamp = str(path), [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = cache.get(key)
        if not (isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str)):
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(_BLOCK), b""):
                    digest.update(block)
            entry = cache[key] = {"stamp": stamp, "sha256": digest.hexdigest()}
            changed = True
        out[key] = entry["sha256"]
    if changed:
        cache = dict(list(cache.items())[-_CACHE_ENTRIES:])
        try:  # a cache that cannot be written (read-only home) only costs time
            with atomic_path(cache_file) as tmp:
                tmp.write_text(json.dumps(cache))
        except OSError:
            pass
    return out


def _describe_model(rec: torch.nn.Module) -> dict[str, Any]:
    """The architecture (not the weights): classes, patch layout, parameter and buffer shapes."""
    out: dict[str, Any] = {"type": type(rec).__name__}
    for attr in ("img_shape", "patch_shape", "stride", "n_sweeps", "sweep_start"):
        if hasattr(rec, attr):
            value = getattr(rec, attr)
            out[attr] = list(value) if isinstance(value, tuple) else value
    base = getattr(rec, "base", None)
    if isinstance(base, torch.nn.Module):
        out["base"] = type(base).__name__
    out["tensors"] = {k: list(v.shape) for k, v in rec.state_dict().items()}
    return out


def _describe_physics(physics: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(physics).__name__}
    if isinstance(physics, Fingerprinted):
        out["fingerprint"] = physics.fingerprint()
    for attr in ("normalize", "layout", "fdk_window"):
        value = getattr(physics, attr, None)
        if isinstance(value, (bool, str, int, float)):
            out[attr] = value
    return out


def _describe_data(dataset: Any) -> dict[str, Any]:
    describe = getattr(dataset, "describe", None)
    out = dict(describe()) if callable(describe) else {"type": type(dataset).__name__, "length": len(dataset)}
    paths = getattr(dataset, "paths", None)
    if isinstance(paths, (list, tuple)) and paths and all(isinstance(p, (str, os.PathLike)) for p in paths):
        out["sha256"] = file_sha256(list(paths))  # the values, not only the names, sizes and shapes
    return out


def run_description(rec: torch.nn.Module, physics: Any, dataset: Any, config: Any,
                    extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``(fingerprint, description)`` of a training run: everything that makes two runs the same.

    The description holds the acquisition (the physics' :meth:`fingerprint`, e.g. the geometry),
    the data (the dataset's ``describe()`` and the SHA-256 of the files it reads), the model's
    architecture (classes, patch layout, tensor shapes, not their values) and the training
    settings (:meth:`TrainConfig.identity`: not those that only say how long the run goes and how
    it reports); ``extra`` (e.g. the command line's other sections) is added as is. The
    fingerprint is a hash of it.

    Examples
    --------
    >>> from unrolled3d.data import PhantomDataset
    >>> from unrolled3d.models import UNet3D, UnrolledPGD
    >>> from unrolled3d.partition import PartitionedReconstructor
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> from unrolled3d.training import TrainConfig, run_description
    >>> rec = PartitionedReconstructor(UnrolledPGD(UNet3D(base=4, depth=1), n_iter=2), (8, 8, 8), (4, 4, 4))
    >>> physics = ConeBeamCT(standard_cone_beam(8, 6))
    >>> a, _ = run_description(rec, physics, PhantomDataset(4, 8), TrainConfig(lr=1e-3))
    >>> b, _ = run_description(rec, physics, PhantomDataset(4, 8), TrainConfig(lr=2e-3))
    >>> a == b, len(a)
    (False, 16)
    """
    description = {"geometry": _describe_physics(physics), "data": _describe_data(dataset),
                   "model": _describe_model(rec), "train": config.identity(), "extra": extra or {}}
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], json.loads(text)


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted names of the entries that differ between two descriptions.

    Examples
    --------
    >>> from unrolled3d.training.identity import differences
    >>> differences({"train": {"lr": 1e-3, "seed": 0}}, {"train": {"lr": 2e-3, "seed": 0}})
    ['train.lr']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if old == new else [where or "(everything)"]
