"""Resident memory of a streamed unrolled reconstruction against its ``--memory-budget`` (issue 27).

In a fresh process: a small scan reconstructed first (libraries, thread pools and FFT plans
loaded, not counted), then the scan under test, its resident-memory growth read from the kernel
(``VmHWM`` after ``/proc/self/clear_refs``)::

    unrolled3d simulate --size 24 --views 30 --output small.zarr
    unrolled3d simulate --size 160 --views 30 --output big.zarr
    OMP_NUM_THREADS=1 python bench/experiments/streamed_memory.py big.zarr x.zarr 400M small.zarr s.zarr

prints the command's JSON (the patch chosen) and one line ``{"code", "growth_mib", "before_mib",
"cpu_s"}``. ``heads_ct`` with ``--scale-check rescale`` (phantoms are not at its training scale).
"""
from __future__ import annotations

import json
import sys
import time

import torch

from unrolled3d.cli import main as cli
from unrolled3d.memory import reset_peak_rss, status_bytes, trim_heap


def main() -> None:
    scan, out, budget, small, small_out = sys.argv[1:6]
    torch.set_num_threads(1)
    args = ["--method", "unrolled", "--weights", "heads_ct", "--scale-check", "rescale", "--memory-budget", budget,
            "--json"]
    cli(["reconstruct", small, "--out", small_out, *args])
    trim_heap()
    before = status_bytes("VmRSS")
    if not reset_peak_rss():
        raise SystemExit("cannot reset the resident-memory high-water mark here (/proc/self/clear_refs)")
    t0 = time.process_time()
    code = cli(["reconstruct", scan, "--out", out, *args])
    print(json.dumps({"code": code, "growth_mib": (status_bytes("VmHWM") - before) / 2**20,
                      "before_mib": before / 2**20, "cpu_s": time.process_time() - t0}))


if __name__ == "__main__":
    main()
