r"""A training run's folder: the one place the rules of claiming, archiving, resuming, saving and
pruning live (used by :func:`~unrolled3d.training.train` and the command line alike).

A folder belongs to one run. Its files are the run's checkpoints (``checkpoint_<step>.pt``, in
the folder itself or in a sub-folder, ``checkpoints/`` for the command line) and its outputs
(``model.pt`` for the command line). The rules:

- **claim**: a process owns the folder while it trains (:meth:`RunFolder.claim`): an advisory
  lock (``fcntl.flock``) on ``.run.lock`` in the folder, taken before anything in it is touched
  and released by the kernel when the process ends, however it ends. Another ``train`` (new,
  ``resume`` or ``overwrite``) on a held folder is refused at once (:class:`RunFolderInUse`,
  naming the holder's process id and command);
- **a new run** refuses a folder that holds another run's files; ``overwrite`` moves them to
  ``archived/<time>/`` inside the folder (the same relative paths: one layout for every caller),
  never deletes them;
- **resume** continues from the newest *readable* checkpoint (an unreadable newer one, e.g. cut
  short by a power cut, is renamed ``*.unreadable`` and named in a warning), and only when that
  checkpoint belongs to this run: the same fingerprint
  (:func:`~unrolled3d.training.run_description`), else a ``ValueError`` names what changed;
  ``resume`` on a folder with outputs but no checkpoint is refused;
- **stale temporary files** (a kill between the write and the rename of a checkpoint or an
  output) are removed when a run starts, those whose writing process is gone only;
- **save** writes a checkpoint atomically and durably (:func:`unrolled3d.io.atomic_path`), and
  only then prunes the older ones, and only this run's (a foreign checkpoint is never deleted).

Under ``torch.distributed`` every rank reads the folder (the same answers everywhere) and rank 0
alone changes it.

Examples
--------
>>> import tempfile
>>> from unrolled3d.training import RunFolder
>>> folder = RunFolder(tempfile.mkdtemp(), checkpoints="checkpoints", outputs=("model.pt",))
>>> with folder.claim():
...     folder.prepare(resume=False, overwrite=False)
...     path = folder.save(1, {"step": 1}, keep=2)
>>> path.relative_to(folder.root).as_posix()
'checkpoints/checkpoint_00000001.pt'
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from .._distributed import rank_and_world
from ..errors import FileFormatError
from ..io.atomic import atomic_path, remove_stale_temporaries
from .checkpoints import (CHECKPOINT_FORMAT, CHECKPOINT_NAME_PATTERN, checkpoint_name, checkpoints, load_checkpoint,
                          read_run)
from .identity import differences

__all__ = ["RunFolder", "RunFolderInUse", "ARCHIVE_FOLDER", "UNREADABLE_SUFFIX", "LOCK_NAME"]

#: the lock file of a claimed folder (removed when the claim ends; a kill leaves it, unlocked)
LOCK_NAME = ".run.lock"
#: where ``overwrite`` moves a previous run's files (inside the run's folder)
ARCHIVE_FOLDER = "archived"
#: what a checkpoint that cannot be read is renamed to (kept for inspection, out of resume's way)
UNREADABLE_SUFFIX = ".unreadable"
# settings compared when a checkpoint older than run fingerprints is resumed
_LEGACY_FIELDS = ("steps", "lr", "min_lr", "batch_size", "lr_schedule", "weight_decay", "grad_clip", "seed",
                  "noise_std")


class RunFolderInUse(RuntimeError):
    """Another process holds the run's folder (raised at once, never waited for).

    Examples
    --------
    >>> from unrolled3d.training.run_folder import RunFolderInUse
    >>> print(RunFolderInUse("runs/a", {"pid": 42, "command": "unrolled3d train c.toml --out-dir runs/a"}))
    runs/a is in use by another run: process 42 (unrolled3d train c.toml --out-dir runs/a); wait for it to end or \
stop it, or choose another folder
    """

    def __init__(self, root: str | os.PathLike, holder: dict[str, Any]) -> None:
        self.root, self.holder = os.fspath(root), holder
        pid, command = holder.get("pid") or "(its id not yet written)", holder.get("command") or "command unknown"
        super().__init__(f"{self.root} is in use by another run: process {pid} ({command}); wait for it to end or "
                         f"stop it, or choose another folder")


def _read_holder(fd: int) -> dict[str, Any]:
    """What the holder of a lock file wrote in it (``{}`` while it has not yet)."""
    for _ in range(20):  # the holder writes right after it locks: give it a moment
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        try:
            holder = json.loads(raw)
        except ValueError:
            time.sleep(0.05)
            continue
        if isinstance(holder, dict):
            return holder
    return {}


class RunFolder:
    """The folder of one training run (module docstring: the rules).

    Parameters
    ----------
    root : str or path
        the run's folder (created when claimed).
    checkpoints : str
        sub-folder of the checkpoints (``""``: the folder itself).
    outputs : sequence of str
        the run's other files, relative to ``root`` (e.g. ``("model.pt",)``): they make the
        folder another run's as checkpoints do, and are archived with them.

    Attributes
    ----------
    archived_to, removed_temporaries, resumed_checkpoint, skipped_checkpoints, last_checkpoint
        what :meth:`prepare`, :meth:`resume` and :meth:`save` did (``None`` or empty at first).

    Examples
    --------
    >>> import tempfile
    >>> from unrolled3d.training import RunFolder
    >>> RunFolder(tempfile.mkdtemp()).checkpoints()
    []
    """

    def __init__(self, root: str | os.PathLike, checkpoints: str = "", outputs: Sequence[str] = ()) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a folder name (str or path), got {root!r}")
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"{self.root} is a file, not a folder")
        self.checkpoint_dir = self.root / checkpoints
        self.outputs = tuple(self.root / o for o in outputs)
        self.rank, self.world = rank_and_world()
        self.archived_to: Path | None = None
        self.removed_temporaries: list[Path] = []
        self.resumed_checkpoint: Path | None = None
        self.skipped_checkpoints: list[Path] = []
        self.last_checkpoint: Path | None = None
        self._mine: list[tuple[int, Path]] = []  # this run's checkpoints: the only ones pruning may delete
        self._prepared = False

    # ------------------------------------------------------------------ ownership
    @contextlib.contextmanager
    def claim(self, command: str | None = None) -> Iterator["RunFolder"]:
        """Own the folder while the ``with`` block runs: the lock is taken (rank 0) before anything
        in the folder is touched, or :class:`RunFolderInUse` is raised at once. ``command``: what
        this process is, for the message another process gets (default: its command line)."""
        fd = None
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = self._lock(command if command is not None else shlex.join(sys.argv))
        try:
            yield self
        finally:
            if fd is not None:
                self._unlock(fd)

    def _lock(self, command: str) -> int | None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no advisory locks, the folder is not guarded
            return None
        path = self.root / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunFolderInUse(self.root, holder) from None
            try:  # the previous holder removes the file when it ends: ours must still be the one there
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": command}).encode())
        return fd

    def _unlock(self, fd: int) -> None:
        try:
            (self.root / LOCK_NAME).unlink(missing_ok=True)  # while still held: no one can lock it meanwhile
        finally:
            os.close(fd)  # the kernel releases the lock (as it does when the process dies)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of the checkpoints in the folder, oldest first."""
        return checkpoints(self.checkpoint_dir)

    def _describe(self, found: list[tuple[int, Path]], outputs: list[Path]) -> str:
        what = [f"{len(found)} checkpoint(s), up to {found[-1][1].name}"] if found else []
        return ", ".join(what + [p.name for p in outputs])

    # ------------------------------------------------------------------ a run starts
    @staticmethod
    def check_start(resume: bool, overwrite: bool) -> None:
        """Refuse ``resume`` with ``overwrite`` (checked before anything is touched)."""
        if resume and overwrite:
            raise ValueError("resume (--resume) continues the run in the folder, overwrite (--overwrite) archives it: "
                             "choose one")

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Apply the rules of a run's start: refuse another run's folder (or archive it with
        ``overwrite``), refuse ``resume`` without checkpoints where outputs are, remove stale
        temporary files. Idempotent (a second call does nothing)."""
        if self._prepared:
            return
        self.check_start(resume, overwrite)
        found, outputs = self.checkpoints(), [p for p in self.outputs if p.exists()]
        if not resume and (found or outputs) and not overwrite:
            raise ValueError(f"{self.root} holds another run ({self._describe(found, outputs)}): continue it "
                             f"(resume=True, --resume), choose another folder, or archive it first (overwrite=True, "
                             f"--overwrite)")
        if resume and not found and outputs:
            raise ValueError(f"{self.root} holds {', '.join(p.name for p in outputs)} but no checkpoint to resume "
                             f"from: choose another folder, or archive it (overwrite=True, --overwrite)")
        if self.rank == 0:
            if overwrite and (found or outputs):
                self.archived_to = self._archive([p for _, p in found] + outputs)
            # a kill between the write and the rename of a checkpoint (or an output) left its temporary file
            self.removed_temporaries = remove_stale_temporaries(self.checkpoint_dir, CHECKPOINT_NAME_PATTERN)
            for out in self.outputs:
                self.removed_temporaries += remove_stale_temporaries(out.parent, re.escape(out.name))
        if self.world > 1:
            dist.barrier()
        self._prepared = True

    def _archive(self, files: list[Path]) -> Path:
        """Move ``files`` into ``archived/<time>/``, at the same paths relative to the folder."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest, n = self.root / ARCHIVE_FOLDER / stamp, 1
        while dest.exists():
            n += 1
            dest = dest.with_name(f"{stamp}.{n}")
        unreadable = sorted(self.checkpoint_dir.glob(f"*{UNREADABLE_SUFFIX}")) if self.checkpoint_dir.is_dir() else []
        for p in files + unreadable:
            target = dest / p.relative_to(self.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, target)
        return dest

    # ------------------------------------------------------------------ resume
    def resume(self, fingerprint: str, description: dict[str, Any], config: Any) -> dict[str, Any] | None:
        """The newest readable checkpoint of this run (``None``: none, start afresh).

        Raises a ``ValueError`` naming what changed when the checkpoint belongs to another run
        (another fingerprint); warns about the unreadable ones it skips and renames them
        ``*.unreadable``. ``config`` is the run's :class:`~unrolled3d.training.TrainConfig`.
        """
        found, state = self.checkpoints(), None
        for _, path in reversed(found):
            try:
                state = load_checkpoint(path)
            except FileFormatError as exc:
                self.skipped_checkpoints.append(path)
                warnings.warn(f"skipping {exc}", RuntimeWarning, stacklevel=3)
                continue
            self.resumed_checkpoint = self.last_checkpoint = path
            break
        if state is not None:
            self._check_same_run(state, fingerprint, description, config)
        if self.rank == 0:
            for path in self.skipped_checkpoints:
                os.replace(path, path.with_name(path.name + UNREADABLE_SUFFIX))
        if state is not None:  # the older checkpoints of the same run may be pruned; another run's never
            start = int(state["step"])
            self._mine = [(s, p) for s, p in found if s <= start and p not in self.skipped_checkpoints
                          and (p == self.resumed_checkpoint or (read_run(p) or (None,))[0] == fingerprint)]
        return state

    def _check_same_run(self, state: dict[str, Any], fingerprint: str, description: dict[str, Any],
                        config: Any) -> None:
        path, run = self.resumed_checkpoint, state.get("run") or {}
        saved = state.get("config", {})
        if run.get("fingerprint") is None:  # written before runs had fingerprints
            changed = [k for k in _LEGACY_FIELDS if k in saved and saved[k] != getattr(config, k)]
            warnings.warn(f"{path} records no run fingerprint (an older checkpoint): only the training settings were "
                          f"compared" + (f"; changed: {changed}" if changed else ""), stacklevel=4)
        elif run["fingerprint"] != fingerprint:
            changed = differences(run.get("description") or {}, description)
            raise ValueError(f"{path} belongs to another run: its configuration differs in {', '.join(changed[:8])}"
                             f"{', ...' if len(changed) > 8 else ''}. Resume with the same configuration, or start "
                             f"afresh in another folder (or with overwrite=True / --overwrite)")
        if saved.get("steps") is not None and saved["steps"] != config.steps:
            warnings.warn(f"resuming {path} with steps={config.steps} (was {saved['steps']}): a cosine learning-rate "
                          f"schedule goes on along the cosine over {config.steps} steps (the rate jumps to that curve), "
                          f"so the run will not be identical to an uninterrupted one", stacklevel=4)

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: dict[str, Any], keep: int, fingerprint: str | None = None,
             description: dict[str, Any] | None = None) -> Path:
        """Write ``checkpoint_<step>.pt`` (``state`` plus the format and the run's identity)
        atomically and durably, then prune this run's older checkpoints beyond the ``keep``
        newest. Rank 0 writes; every rank returns the path."""
        path = self.checkpoint_dir / checkpoint_name(step)
        if self.rank == 0:
            ckpt = {"format": CHECKPOINT_FORMAT, **state, "run": {"fingerprint": fingerprint, "description": description}}
            with atomic_path(path) as tmp:  # durable when it returns: fsync of the file and the folder
                torch.save(ckpt, tmp)
            # Only now, with the new checkpoint on disk, may older ones go; and only this run's.
            self._mine = sorted([(s, p) for s, p in self._mine if p != path] + [(step, path)])
            for _, old in self._mine[:-keep]:
                old.unlink(missing_ok=True)
            del self._mine[:-keep]
        self.last_checkpoint = path
        return path
