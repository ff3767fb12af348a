"""Peak-memory measurement helpers for the benchmarks.

CPU: the op runs in a fresh spawned process; just before the call we reset the kernel's RSS
high-water mark (``echo 5 > /proc/self/clear_refs``) and read the RSS, after it we read the
high-water mark (``VmHWM``), so the difference is everything the call held at its peak (its
output included); a void reading (the mark did not move) is retried, then reported as unmeasured
(NaN) rather than failing the suite. CUDA: ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import queue as queue_mod
import warnings
from typing import Callable

import torch

from unrolled3d.memory import reset_peak_rss, status_bytes as _status_bytes, trim_heap


def _child(make_inputs: Callable, run: Callable, queue, warmup: bool) -> None:
    trim_heap()
    inputs = make_inputs()
    if warmup:
        # one call first, output dropped: the measured call then finds thread pools, oneDNN
        # primitives and FFT plans in place, as every step of a loop but the first does
        run(*inputs)
    trim_heap()
    if not reset_peak_rss():  # VmHWM := current RSS
        raise RuntimeError("cannot reset the RSS high-water mark (/proc/self/clear_refs)")
    before = _status_bytes("VmRSS")
    high_before = _status_bytes("VmHWM")
    out = run(*inputs)
    high_after = _status_bytes("VmHWM")
    in_bytes = sum(t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor))
    queue.put(dict(before=before, high_before=high_before, high_after=high_after,
                   input_bytes=in_bytes, output_bytes=out.numel() * out.element_size()))


#: fresh processes tried before a case is reported as unmeasured
ATTEMPTS = 3


def cpu_peak(make_inputs: Callable, run: Callable, warmup: bool = False, attempts: int = ATTEMPTS) -> dict:
    """Peak extra host memory of ``run(*make_inputs())``, measured in a fresh process.

    ``warmup=True`` makes one unmeasured call first (steady state of a loop: one-time set-up
    such as oneDNN primitive caches excluded); the high-water mark is reset after it.

    Returns a dict with ``input_bytes``, ``output_bytes``, ``extra_bytes`` (peak RSS growth during
    the call, output included) and ``ratio`` = (input + extra) / (input + output): 1.0 means the
    call needed nothing beyond its output. The functions must be picklable (module level).

    A small call can run entirely in memory the process already holds, so that the kernel's
    high-water mark does not move and the figure would be void: the measurement is then retried
    in a new process, up to ``attempts`` times, and if it stays void the case is reported as
    unmeasured (``extra_bytes`` and ``ratio`` NaN, ``unmeasured`` the reason, a warning) instead
    of failing the benchmark: its timing still counts.
    """
    for _ in range(attempts):
        res = _measure_once(make_inputs, run, warmup)
        if res["high_after"] > res["high_before"]:
            extra = res["high_after"] - res["before"]
            res["extra_bytes"] = extra
            res["ratio"] = (res["input_bytes"] + extra) / (res["input_bytes"] + res["output_bytes"])
            res["attempts"] = _ + 1
            return res
    reason = (f"the call did not raise the RSS high-water mark in {attempts} fresh processes (it ran in memory "
              "the process already held): unmeasured")
    warnings.warn(reason, stacklevel=2)
    return {**res, "extra_bytes": math.nan, "ratio": math.nan, "unmeasured": reason, "attempts": attempts}


def _measure_once(make_inputs: Callable, run: Callable, warmup: bool) -> dict:
    """One measurement in a fresh spawned process: the child's raw readings."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(make_inputs, run, queue, warmup))
    proc.start()
    while True:  # a child that dies (an exception, the OOM killer) puts nothing: do not wait an hour
        try:
            res = queue.get(timeout=5)
            break
        except queue_mod.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the measuring process died (exit code {proc.exitcode}); "
                                   "its traceback is on stderr") from None
    proc.join()
    return res


def cuda_peak(run: Callable, *inputs) -> dict:
    """Peak extra device memory of ``run(*inputs)`` (output included) and the same ratio."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = run(*inputs)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    in_bytes = sum(t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor))
    out_bytes = out.numel() * out.element_size()
    return dict(input_bytes=in_bytes, output_bytes=out_bytes, extra_bytes=extra,
                ratio=(in_bytes + extra) / (in_bytes + out_bytes))
