"""Pick the largest patch whose partitioned reconstruction fits a memory budget.

The peak memory of a partitioned reconstruction (inference, ``torch.no_grad``) is the larger of

- the start point ``physics.A_dagger(y)`` (FDK for CT), measured once, and
- the sweep: the full-volume buffers it keeps (estimate, blended sum, blend weight: three
  volumes; residual and a projection: two measurement arrays) plus the peak of one group of
  ``patch_batch_size`` patches solved together, which grows with the patch volume (and about
  linearly with the group: the network's activations and the group's patch measurements).

The group peak is measured, not guessed: one group (the reconstructor's ``patch_batch_size``
patches, or all of them if the grid has fewer) is reconstructed at two small patch sizes
``p1 < p2`` on the target device and the model ``peak(p) = a + b p^3`` is fitted through them
(the denoiser's activations and the patch buffers scale with ``p^3``; the patches' view of the
detector does not, hence ``a``). A group has as many patches at ``p1`` as at any larger size or
more, so the prediction errs on the safe side. Budgets are bytes of memory on top of what the process held
before: on the GPU ``torch.cuda.max_memory_allocated``, on the CPU the resident set size.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ._validation import integer
from .memory import reset_peak_rss, status_bytes, trim_heap

__all__ = ["parse_bytes", "PatchChoice", "choose_patch", "measure_peak"]

_UNITS = {"": 2**20, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str | int | float) -> int:
    """``"512M"``, ``"1.5G"``, ``"800k"`` or a number of MiB -> bytes (binary units)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
        if m is None:
            raise ValueError(f"memory budget must look like 512M, 1.5G or 800k (binary units), got {text!r}")
        value, unit = float(m.group(1)), m.group(2).lower()
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"memory budget must be positive, got {text!r}")
    return int(value * _UNITS[unit])


def measure_peak(fn: Callable[[], object], device: torch.device) -> int:
    """Peak extra memory (bytes) of ``fn()`` on ``device`` (its result included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        trim_heap()
        if not reset_peak_rss():
            raise RuntimeError("cannot measure host memory here (/proc/self/clear_refs is not writable)")
        before = status_bytes("VmRSS")
        out = fn()
        peak = status_bytes("VmHWM") - before
    del out
    return max(int(peak), 0)


@dataclass
class PatchChoice:
    """The patch chosen for a budget and the figures behind the choice (bytes).

    Examples
    --------
    >>> from unrolled3d.budget import PatchChoice
    >>> c = PatchChoice(patch=8, predicted_bytes=0, start_bytes=100, buffers_bytes=10, patch_model=(5.0, 1.0))
    >>> c.predict(2), c.predict(10)    # max(start, buffers + a + b p^3)
    (100, 1015)
    """

    patch: int
    predicted_bytes: int
    start_bytes: int
    buffers_bytes: int
    patch_model: tuple[float, float]  # (a, b): peak of one patch = a + b p^3

    def predict(self, p: int) -> int:
        a, b = self.patch_model
        return int(max(self.start_bytes, self.buffers_bytes + a + b * p**3))


def choose_patch(rec, y: torch.Tensor, physics, budget_bytes: int, candidates: Sequence[int] | None = None,
                 measure: Callable[[Callable[[], object], torch.device], int] = measure_peak) -> PatchChoice:
    """The largest cubic patch edge whose predicted peak fits ``budget_bytes``.

    Parameters
    ----------
    rec : PartitionedReconstructor
        The reconstructor (its base network, volume shape and ``patch_batch_size`` are used; it is
        not modified).
    y : torch.Tensor
        The measurements, on the target device.
    physics : deepinv.physics.LinearPhysics
        The full operator.
    budget_bytes : int
        Memory budget in bytes (see the module docstring for what is counted).
    candidates : sequence of int, optional
        Patch edges to consider; default multiples of 8 from 16 up to the smallest volume edge,
        plus that edge.
    measure : callable
        ``measure(fn, device) -> bytes``; :func:`measure_peak` (injectable for tests).

    Raises
    ------
    ValueError
        If even the smallest candidate does not fit; the message gives what it needs.
    """
    budget_bytes = integer("budget_bytes", budget_bytes, 1)
    shape = rec.img_shape
    n = min(shape)
    if candidates is None:
        candidates = sorted({*range(min(16, n), n + 1, 8), n})
    candidates = sorted(int(c) for c in candidates)
    if not candidates or candidates[0] < 1 or candidates[-1] > n:
        raise ValueError(f"patch candidates must lie in [1, {n}], got {candidates}")
    device = y.device
    item = y.element_size()
    vol = math.prod(shape) * y.shape[0] * y.shape[1] * item
    buffers = 3 * vol + 2 * y.numel() * item
    with torch.no_grad():
        start_bytes = measure(lambda: physics.A_dagger(y), device)
        x_ctx = torch.zeros((*y.shape[:2], *shape), dtype=y.dtype, device=device)
        residual = y.clone()  # y - A x_ctx with a zero context: a measurement-sized array, as in a sweep

        def patch_peak(p: int) -> int:
            # one group of patch_batch_size patches solved together, as a sweep solves them
            one = rec.with_patch_size((p, p, p))
            offsets = one.patches()[:one.patch_batch_size]
            return measure(lambda: one.reconstruct_patches(y, physics, x_ctx, offsets, residual), device)

        p1 = candidates[0]
        p2 = next((c for c in candidates if c >= 1.5 * p1), candidates[-1])
        m1 = patch_peak(p1)
        if p2 == p1:
            a, b = float(m1), 0.0
        else:
            m2 = patch_peak(p2)
            b = max(m2 - m1, 0) / (p2**3 - p1**3)
            a = m1 - b * p1**3
    choice = PatchChoice(p1, 0, start_bytes, buffers, (a, b))
    fits = [p for p in candidates if choice.predict(p) <= budget_bytes]
    if not fits:
        raise ValueError(f"the memory budget {budget_bytes / 2**20:.0f} MiB is too small: the smallest patch "
                         f"({p1}^3) needs about {choice.predict(p1) / 2**20:.0f} MiB")
    choice.patch = fits[-1]
    choice.predicted_bytes = choice.predict(choice.patch)
    return choice
