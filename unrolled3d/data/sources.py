"""Which volume files a training run uses: names and glob patterns expanded, and the held-out split.

Patterns are expanded once, sorted, and every file is named by its resolved path (symbolic links
followed), so that one file reached by two names counts once and can never be on both sides of
the split.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .._validation import integer
from ..io import SUPPORTED_EXTENSIONS, volume_format

__all__ = ["expand_volume_paths", "split_by_file"]


def _is_volume(path: Path) -> bool:
    try:
        volume_format(path)
    except ValueError:
        return False
    return path.is_file()


def expand_volume_paths(entries: str | os.PathLike | Sequence[str | os.PathLike], root: str | os.PathLike | None = None,
                        name: str = "paths") -> list[Path]:
    """The volume files that file names, folders and glob patterns designate, in order, each once.

    Parameters
    ----------
    entries : str, path, or a list of them
        a file (its ending must be a supported volume format), a folder (its volume files,
        sorted; not recursive), or a glob pattern (``*``, ``?``, ``[...]``; ``**`` recurses),
        whose matches are filtered to volume files (so ``scans/*`` skips the ``.json``
        sidecars of ``.npy`` files).
    root : str or path, optional
        folder that relative entries are relative to (e.g. the configuration file's).
    name : str
        how the caller calls ``entries``, for the messages.

    Returns
    -------
    list of pathlib.Path
        resolved paths, the order of the entries (sorted within a folder or pattern), without
        repetitions.

    Raises
    ------
    TypeError
        ``entries`` is not a string/path or a list of them.
    ValueError
        an empty list, a pattern or folder with no volume file, a file of an unsupported kind.
    FileNotFoundError
        a file name (not a pattern) that does not exist.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from unrolled3d.data import expand_volume_paths
    >>> d = tempfile.mkdtemp()
    >>> for n in ("b", "a"):
    ...     np.save(os.path.join(d, n + ".npy"), np.zeros((2, 2, 2)))
    >>> [p.name for p in expand_volume_paths("*.npy", root=d)]
    ['a.npy', 'b.npy']
    """
    if isinstance(entries, (str, os.PathLike)):
        entries = [entries]
    if not isinstance(entries, (list, tuple)) or not all(isinstance(e, (str, os.PathLike)) for e in entries):
        raise TypeError(f"{name} must be a file name, folder or glob pattern, or a list of them, got {entries!r}")
    if not entries:
        raise ValueError(f"{name} is empty: give at least one volume file, folder or glob pattern")
    base = Path(root) if root is not None else Path.cwd()
    found: list[Path] = []
    for entry in entries:
        text = os.fspath(entry)
        full = Path(text).expanduser()
        full = full if full.is_absolute() else base / full
        if glob.has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(str(full), recursive=True))
            files = [m for m in matches if _is_volume(m)]
            if not files:
                what = f"{len(matches)} match(es), none a volume file" if matches else "no file matches"
                raise ValueError(f"{name}: {what} for the pattern {text!r} (looked in {full.parent}; volume files "
                                 f"end in {', '.join(SUPPORTED_EXTENSIONS)})")
        elif full.is_dir():
            files = sorted(p for p in full.iterdir() if _is_volume(p))
            if not files:
                raise ValueError(f"{name}: the folder {full} holds no volume file (endings "
                                 f"{', '.join(SUPPORTED_EXTENSIONS)})")
        else:
            if not full.exists():
                raise FileNotFoundError(f"{name}: the volume file {full} does not exist")
            try:
                volume_format(full)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            files = [full]
        found += [f.resolve() for f in files]
    return list(dict.fromkeys(found))  # each file once, first occurrence kept


def split_by_file(paths: Sequence[Path], n_held_out: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """``(training files, held-out files)``: ``n_held_out`` files drawn at random (by ``seed``),
    each file wholly on one side (never a crop of one file in both).

    Both lists keep the order of ``paths``; the choice depends only on ``seed`` and the list.
    At least one file must stay for training (``ValueError`` otherwise).

    Examples
    --------
    >>> from pathlib import Path
    >>> from unrolled3d.data import split_by_file
    >>> train, held_out = split_by_file([Path(f"v{i}.npy") for i in range(5)], 2, seed=0)
    >>> len(train), len(held_out), set(train) & set(held_out)
    (3, 2, set())
    """
    paths = [Path(p) for p in paths]
    n_held_out = integer("n_held_out", n_held_out, 0)
    seed = integer("seed", seed, 0)
    if len(set(p.resolve() for p in paths)) != len(paths):
        raise ValueError("the file list names a file twice: a split by file needs each file once")
    if n_held_out >= len(paths):
        raise ValueError(f"cannot hold out {n_held_out} of {len(paths)} files: at least one must remain for training")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B17]))  # a stream of its own, not the crops'
    held = set(rng.permutation(len(paths))[:n_held_out].tolist())
    return ([p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held])
