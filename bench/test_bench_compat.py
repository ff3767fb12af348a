"""Overhead of the deepinv drop-in ``unrolled3d.physics.TomographyWithAstra`` over ``ConeBeamCT``.

Run: ``.venv/bin/python -m pytest bench/test_bench_compat.py --benchmark-json bench/results/compat_cpu.json``.
The adapter only transposes (a view) between deepinv's ``[B, C, rows, angles, cols]`` and the
projector's ``[B, C, angles, rows, cols]``; this measures what that costs. Native and adapter
calls alternate round by round so that both see the same machine state; ``extra_info`` holds
the best time of each and their ratio.
"""
from __future__ import annotations

import time

import pytest
import torch

from unrolled3d.physics import TomographyWithAstra
from unrolled3d.physics import ConeBeamCT

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


def _pair(n: int, device: str):
    compat = TomographyWithAstra(img_size=(n, n, n), angles=n, n_detector_pixels=(n, n), angular_range=(0, 360),
                                 detector_spacing=1.8, geometry_type="conebeam",
                                 geometry_parameters={"source_radius": 4.0 * n, "detector_radius": 2.0 * n},
                                 normalize=False, device=device)
    return compat, ConeBeamCT(compat.geometry, device=device)


def _timed(fn, *args) -> float:
    if CUDA:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(*args)
    if CUDA:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["A", "A_adjoint", "fbp"])
@pytest.mark.u3d_sizes([128], quick=[32])
def test_adapter_overhead(benchmark, op, device, n):
    compat, native = _pair(n, device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, 1, n, n, n), generator=gen).to(device)
    y_native = native.A(x).contiguous()
    y_compat = compat.A(x)  # what a deepinv user holds: the adapter's own output
    calls = {
        "A": (lambda: native.A(x), lambda: compat.A(x)),
        "A_adjoint": (lambda: native.A_adjoint(y_native), lambda: compat.A_adjoint(y_compat)),
        "fbp": (lambda: native.A_dagger(y_native), lambda: compat.fbp(y_compat)),
    }[op]
    rounds = 3 if op == "fbp" else 7
    best = [float("inf"), float("inf")]
    with torch.no_grad():
        for fn in calls:  # warm-up
            fn()
        for _ in range(rounds):
            for i, fn in enumerate(calls):
                best[i] = min(best[i], _timed(fn))
        benchmark.group = f"compat-{op}-{n}-{device}"
        benchmark(calls[1])
    benchmark.extra_info.update(size=n, n_views=n, device=device, threads=torch.get_num_threads(), op=op,
                                native_s=best[0], adapter_s=best[1], overhead=best[1] / best[0] - 1)
    print(f"\n{op} {n}^3 on {device}: native {best[0] * 1e3:.1f} ms, adapter {best[1] * 1e3:.1f} ms, "
          f"overhead {100 * (best[1] / best[0] - 1):+.1f} %")
