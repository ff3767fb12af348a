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

import copy
import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ._validation import integer, real
from .memory import reset_peak_rss, status_bytes, trim_heap

__all__ = ["parse_bytes", "PatchChoice", "choose_patch", "measure_peak", "available_bytes", "InferencePlan",
           "plan_inference", "bf16_is_native", "patch_cost_model", "peak_model", "network_precision", "PATCHED_OVERLAP",
           "PATCHED_SWEEPS", "patched_stride"]

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


# ---------------------------------------------------------------------------------- inference defaults
#: share of the memory available now that a reconstruction takes when no budget is given
DEFAULT_BUDGET_SHARE = 0.5


def available_bytes(device: torch.device | str = "cpu") -> int:
    """The default memory budget: half of what is available now (CPU: ``MemAvailable`` of
    ``/proc/meminfo``; CUDA: the device's free memory)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(DEFAULT_BUDGET_SHARE * free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(DEFAULT_BUDGET_SHARE * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return 2 * 2**30  # no /proc: a modest 2 GiB


def bf16_is_native(device: torch.device | str = "cpu") -> bool:
    """Whether bfloat16 convolutions run natively here (CPU: AVX-512 BF16 or AMX through oneDNN;
    CUDA: compute capability 8.0 or newer)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def network_precision(base, amp: bool):
    """``(base', amp')``: the base model running its network in bfloat16 (``amp``) or float32.

    A shallow copy when the setting changes: the same weights, its own precision (the caller's
    model is left as it was). ``amp'`` is ``False`` for a base without the setting (``amp``
    attribute of :class:`~unrolled3d.models.UnrolledPGD`)."""
    if not hasattr(base, "amp"):
        return base, False
    if bool(base.amp) == bool(amp):
        return base, bool(amp)
    base = copy.copy(base)
    base.amp = bool(amp)
    return base, bool(amp)


#: Inference on patches (a volume whose whole-volume solve does not fit the budget): neighbours
#: share a quarter of the patch edge and the grid is swept once. Measured with ``heads_ct.pt`` on
#: held-out heads at 96^3, 30 views, bfloat16 network, 1 thread (``bench/results/README.md``):
#: 64^3 patches, stride 48, 1 sweep: Colin 27 29.49 dB, CatPhan 32.24 dB in 11 s of CPU, against
#: 29.19 / 30.60 dB in 245 s for the former default (24^3, stride 12, 2 sweeps, float32); at 48^3
#: the quarter overlap gains 0.05-0.12 dB over none for 2.4x the network work, half overlap with two
#: sweeps 0.3-1.1 dB more for 6.7x the network work of the quarter overlap. Larger patches pay most.
PATCHED_OVERLAP = 0.25
PATCHED_SWEEPS = 1


def patched_stride(patch: Sequence[int], overlap: float = PATCHED_OVERLAP) -> tuple[int, ...]:
    """The stride of patches of edge ``patch`` that share ``overlap`` (a fraction in [0, 1)) of
    each edge with their neighbours, e.g. ``(64, 64, 64) -> (48, 48, 48)`` for a quarter."""
    overlap = real("overlap", overlap)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be a fraction in [0, 1) of the patch edge, got {overlap}")
    return tuple(max(1, int(p) - int(round(overlap * int(p)))) for p in patch)


def peak_model(peak_at: Callable[[int], int], n: int, sizes: tuple[int, int] = (16, 32)) -> tuple[float, float]:
    """``(a, b)``: the peak of one group of ``p``^3 patches modelled as ``a + b p^3`` bytes from
    trial patches of edge ``sizes`` (at most ``n``), ``peak_at(p)`` measuring one.

    The first trial is run once unmeasured: a process's first solve allocates what later ones
    reuse (thread pools, oneDNN's primitives: 17 MiB against 2 MiB seen for 16^3), which made a
    16^3 patch look dearer than a 24^3 one and the model flat (a 512^3 volume "fitting" 1 GiB).
    A growth not seen (an allocator reusing memory) is looked for at twice the edge, and if still
    not seen, the peak of the largest trial is taken as all proportional to ``p^3`` (an upper
    bound: ``a = 0``, ``b = peak / p^3``)."""
    p1 = min(sizes[0], n)
    peak_at(p1)  # warm-up, not measured
    m1 = float(peak_at(p1))
    p2 = min(sizes[1], n)
    while p2 > p1:
        m2 = float(peak_at(p2))
        if m2 > m1:
            b = (m2 - m1) / (p2**3 - p1**3)
            return m1 - b * p1**3, b
        if p2 == n:
            return 0.0, max(m1, m2) / p2**3
        p2 = min(2 * p2, n)
    return m1, 0.0


def patch_cost_model(rec, y: torch.Tensor, physics, x_init: torch.Tensor,
                     measure: Callable[[Callable[[], object], torch.device], int] = measure_peak,
                     normal=None) -> tuple[float, float]:
    """``(a, b)`` of the peak of one group of patches, ``a + b p^3`` bytes (:func:`peak_model`:
    trial patches of 16^3 and 32^3); ``normal``: H mode."""
    x_ctx = torch.zeros_like(x_init)
    # y - A x_ctx with a zero context (exact mode), or its backprojection (H mode: a volume)
    residual = y.clone() if normal is None else physics.A_adjoint(y)

    def peak_at(p: int) -> int:
        one = rec.with_patch_size((p, p, p))
        offsets = one.patches()[:one.patch_batch_size]
        with torch.no_grad():
            return measure(lambda: one.reconstruct_patches(y, physics, x_ctx, offsets, residual, normal=normal),
                           y.device)

    return peak_model(peak_at, min(rec.img_shape))


@dataclass
class InferencePlan:
    """How :func:`plan_inference` set up a reconstruction, and why (bytes).

    Examples
    --------
    >>> from unrolled3d.budget import InferencePlan
    >>> InferencePlan((96, 96, 96), (96, 96, 96), 1, True, 10, 20, 1).whole_volume
    True
    """

    patch: tuple[int, int, int]
    stride: tuple[int, int, int]
    n_sweeps: int
    amp: bool
    predicted_bytes: int
    budget_bytes: int
    patch_batch_size: int
    img_shape: tuple[int, int, int] | None = None

    @property
    def whole_volume(self) -> bool:
        return self.img_shape is None or self.patch == self.img_shape

    def to_dict(self) -> dict:
        return {"patch": list(self.patch), "stride": list(self.stride), "n_sweeps": self.n_sweeps, "amp": self.amp,
                "patch_batch_size": self.patch_batch_size, "predicted_peak_mib": round(self.predicted_bytes / 2**20, 1),
                "budget_mib": round(self.budget_bytes / 2**20, 1), "whole_volume": self.whole_volume}


def plan_inference(rec, y: torch.Tensor, physics, x_init: torch.Tensor, budget_bytes: int | None = None,
                   amp: bool | None = None, n_sweeps: int | None = None, overlap: float | None = None,
                   measure: Callable[[Callable[[], object], torch.device], int] = measure_peak, normal=None):
    """The fastest partitioned reconstruction that fits the memory budget: ``(rec', plan)``.

    The network is fully convolutional, so the inference patch is a memory decision, not the
    training patch: the whole volume when its predicted peak fits the budget (one sweep: there
    is no context to refresh), else the largest cubic patch that fits, sharing
    :data:`PATCHED_OVERLAP` of its edge with its neighbours, swept :data:`PATCHED_SWEEPS` times.
    ``amp`` (default: where bfloat16 is native, :func:`bf16_is_native`) runs the
    network in bfloat16 (the data step stays float32). Measured on held-out real heads with the
    shipped ``heads_ct.pt`` (``bench/results/scale_inference_cpu.json``, ``inference_knobs_96.log``).

    Parameters
    ----------
    rec : PartitionedReconstructor
        The trained model (its base is shared, not copied).
    y, physics
        The measurements (on the target device) and the full operator.
    x_init : torch.Tensor
        The start point ``physics.A_dagger(y)`` (already computed: its memory is counted as
        held, and it becomes the first sweep's context).
    budget_bytes : int, optional
        Default :func:`available_bytes`.
    amp, n_sweeps, overlap
        Override the choices above (``overlap``: a fraction of the patch edge in [0, 1)).
    normal : optional
        H mode: the approximation the reconstruction will use (``rec(y, physics, normal=H)``).

    Raises
    ------
    ValueError
        Even the smallest patch does not fit the budget (the message says what it needs).
    """
    device = y.device
    budget = available_bytes(device) if budget_bytes is None else integer("budget_bytes", budget_bytes, 1)
    shape = tuple(rec.img_shape)
    n = min(shape)
    item = y.element_size()
    vol = math.prod(shape) * y.shape[0] * y.shape[1] * item
    buffers = 3 * vol + 2 * y.numel() * item  # estimate, blended sum, weight; residual and a projection
    p1 = min(16, n)
    a, b = patch_cost_model(rec, y, physics, x_init, measure, normal)
    whole = buffers + a + b * math.prod(shape)
    use_amp = bf16_is_native(device) if amp is None else bool(amp)
    if whole <= budget:
        patch, predicted = shape, whole
    else:
        fits = [p for p in sorted({*range(p1, n + 1, 8), n}) if buffers + a + b * p**3 <= budget]
        if not fits:
            raise ValueError(f"the memory budget {budget / 2**20:.0f} MiB is too small: the smallest patch ({p1}^3) "
                             f"needs about {(buffers + a + b * p1**3) / 2**20:.0f} MiB")
        patch, predicted = (fits[-1],) * 3, buffers + a + b * fits[-1] ** 3
    whole_volume = patch == shape
    stride = patch if whole_volume else patched_stride(patch, PATCHED_OVERLAP if overlap is None else overlap)
    sweeps = (1 if whole_volume else PATCHED_SWEEPS) if n_sweeps is None else integer("n_sweeps", n_sweeps, 1)
    base, use_amp = network_precision(rec.base, use_amp)
    out = type(rec)(base, shape, patch, stride, n_sweeps=sweeps, progress=rec.progress,
                    sweep_start=rec.sweep_start, patch_batch_size=rec.patch_batch_size)
    plan = InferencePlan(tuple(patch), tuple(stride), sweeps, use_amp, int(predicted), budget, rec.patch_batch_size,
                         shape)
    return out, plan
