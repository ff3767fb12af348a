"""Training checkpoints: their names, finding them, reading them safely.

A checkpoint ``checkpoint_<step>.pt`` (8 digits) holds every state needed to continue a run
bit for bit (model, optimiser, schedule, random generators, losses, validations) and the run's
fingerprint; :class:`~unrolled3d.training.RunFolder` writes them (atomically, durably) and
decides which may be resumed or pruned.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import FileFormatError, first_line

__all__ = ["CHECKPOINT_FORMAT", "checkpoints", "latest_checkpoint", "load_checkpoint", "checkpoint_name",
           "CHECKPOINT_NAME_PATTERN"]

CHECKPOINT_FORMAT = 1
#: a checkpoint's file name, as a regular expression (for the temporary files of atomic_path)
CHECKPOINT_NAME_PATTERN = r"checkpoint_\d+\.pt"
_CKPT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
_KEYS = {"step", "model", "optimizer", "scheduler", "rng", "losses", "val"}


def checkpoint_name(step: int) -> str:
    """``checkpoint_00000042.pt`` for step 42."""
    return f"checkpoint_{step:08d}.pt"


def checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint_<step>.pt`` in ``out_dir``, oldest first."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name)))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint of the highest step in ``out_dir`` (``None`` when there is none)."""
    found = checkpoints(out_dir)
    return found[-1][1] if found else None


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """Load a training checkpoint safely (``torch.load(..., weights_only=True)``) on the CPU.

    ``mmap=True`` maps the tensors instead of reading them (cheap: to look at the step or the
    run's fingerprint). Raises :class:`~unrolled3d.errors.FileFormatError` naming the file for
    anything that is not a complete checkpoint (truncated by a crash, empty, another file).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # a truncated zip, EOFError, UnpicklingError ...
        raise FileFormatError(p, f"not a readable checkpoint ({first_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise FileFormatError(p, f"not an unrolled3d training checkpoint (format {CHECKPOINT_FORMAT})")
    missing = _KEYS - set(state)
    if missing:
        raise FileFormatError(p, f"incomplete checkpoint: no {sorted(missing)}")
    return state


def read_run(path: Path) -> tuple[str | None, dict | None] | None:
    """A checkpoint's ``(fingerprint, description)`` (``(None, None)`` when written before runs
    had fingerprints), or ``None`` when the file cannot be read."""
    try:
        state = load_checkpoint(path, mmap=True)
    except (FileFormatError, OSError):
        return None
    run = state.get("run") or {}
    return run.get("fingerprint"), run.get("description")
