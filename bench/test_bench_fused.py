"""Benchmarks of the fused Triton ops vs their PyTorch eager twins (pytest-benchmark).

Problem: one 128^3 patch at offset (64, 64, 64) of a 256^3 float32 volume
(B = C = 1), FFT buffer padded to 256^3 (half-spectrum 256 x 256 x 129 complex64).

Run on a GPU::

    python -m pytest bench/test_bench_fused.py --benchmark-only \
        --benchmark-columns=mean,stddev,rounds --benchmark-json=out/bench_fused.json

Each timed round replays a CUDA graph of ``REPS`` back-to-back calls, so the
timing is the GPU work alone (at these sizes one eager call costs more host
time - validation, custom-op dispatch, Triton launch - than GPU time).
``benchmark.extra_info`` holds the GPU time per op, achieved GB/s (bytes read +
written by the op, counted at the minimum the op must move, divided by that
time), the eager host-inclusive time per call (and its GB/s), and the peak extra
GPU memory of one eager call (``torch.cuda.max_memory_allocated`` minus what was
allocated before it).  On a CPU-only machine every CUDA benchmark is
skipped with a reason; only a small CPU timing of the reference twins runs.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from unrolled3d import kernels
from unrolled3d import ops as fused
from unrolled3d.kernels import masked_gather as mg
from unrolled3d.kernels import masked_scatter_add as ms
from unrolled3d.kernels import spectral_filter as sf

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(
    not CUDA or kernels.INTERPRETED,
    reason="Triton-vs-eager benchmarks need a CUDA GPU with compiled Triton kernels "
           "(CPU-only machine: only test_bench_reference_twins_cpu_small runs)")

REPS = 10
VOL, PATCH, PAD = 256, 128, 256
OFFSET = (64, 64, 64)


def make_problem(device, vol=VOL, patch=PATCH, pad=PAD, dtype=torch.float32):
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*shape, dt=dtype):
        return torch.randn(shape, dtype=dt, generator=g).to(device)

    q = pad // 2 + 1
    cdt = torch.complex64 if dtype == torch.float32 else torch.complex128
    p = SimpleNamespace(
        volume=r(1, 1, vol, vol, vol), mask=r(patch, patch, patch), window=r(patch, patch, patch),
        weight=r(vol, vol, vol), src=r(1, 1, pad, pad, pad), spec=r(1, 1, pad, pad, q, dt=cdt),
        lam=r(pad, pad, q), grad_pad=r(1, 1, pad, pad, pad), grad_vol=r(1, 1, vol, vol, vol),
        grad_spec=r(1, 1, pad, pad, q, dt=cdt),
        patch3=(patch,) * 3, pad3=(pad,) * 3, offset=(vol // 4,) * 3,
    )
    e = torch.tensor([], dtype=dtype).element_size()
    P, Pa, V, N = patch ** 3, pad ** 3, vol ** 3, pad * pad * q
    p.bytes = {  # minimum bytes read + written by each op
        "masked_gather": P * e * 2 + Pa * e,                     # patch + mask in, padded buffer out
        "spectral_filter": N * 2 * e * 2 + N * e,               # spec in/out, real lam in
        "masked_scatter_add": 2 * V * e * 2 + P * e * 3 + P * e * 2 * 2,  # copy dest & weight, src/mask/window, patch RMW
        "masked_scatter_add_": P * e * 3 + P * e * 2 * 2,         # src/mask/window in, dest & weight patch RMW
        "masked_gather_backward": V * e + P * e * 3,             # zero volume grad, grad/mask in, patch out
        "spectral_filter_backward": N * 2 * e * 4 + N * e * 2,   # grad, spec in; grad_spec out; lam in, grad_lam out
        "masked_scatter_add_backward": P * e * 3 + Pa * e,       # grad patch/mask/window in, padded grad_src out
    }
    return p


def triton_calls(p):
    o, pt, pd = p.offset, p.patch3, p.pad3
    return {
        "masked_gather": lambda: fused.masked_gather(p.volume, o, pt, pd, p.mask),
        "spectral_filter": lambda: fused.spectral_filter(p.spec, p.lam, 0.5),
        "masked_scatter_add": lambda: fused.masked_scatter_add(p.volume, p.src, o, pt, p.mask, p.window, p.weight),
        "masked_scatter_add_": lambda: fused.masked_scatter_add_(p.volume, p.src, o, pt, p.mask, p.window, p.weight),
        "masked_gather_backward": lambda: torch.ops.unrolled3d.masked_gather_backward(
            p.grad_pad, p.volume, p.mask, list(o), list(pt), True, False),
        "spectral_filter_backward": lambda: torch.ops.unrolled3d.spectral_filter_backward(
            p.grad_spec, p.spec, p.lam, 0.5, True, True),
        "masked_scatter_add_backward": lambda: torch.ops.unrolled3d.masked_scatter_add_backward(
            p.grad_vol, p.src, p.mask, p.window, list(o), list(pt), True, False),
    }


def eager_calls(p):
    o, pt, pd = p.offset, p.patch3, p.pad3
    return {
        "masked_gather": lambda: mg.masked_gather_ref(p.volume, o, pt, pd, p.mask),
        "spectral_filter": lambda: sf.spectral_filter_ref(p.spec, p.lam, 0.5),
        "masked_scatter_add": lambda: ms.masked_scatter_add_ref(p.volume, p.src, o, pt, p.mask, p.window, p.weight),
        "masked_scatter_add_": lambda: ms.masked_scatter_add_ref(p.volume, p.src, o, pt, p.mask, p.window, p.weight,
                                                                 inplace=True),
        "masked_gather_backward": lambda: mg.masked_gather_backward_ref(p.grad_pad, p.volume, o, pt, p.mask,
                                                                        True, False),
        "spectral_filter_backward": lambda: sf.spectral_filter_backward_ref(p.grad_spec, p.spec, p.lam, 0.5),
        "masked_scatter_add_backward": lambda: ms.masked_scatter_add_backward_ref(p.grad_vol, p.src, o, pt, p.mask,
                                                                                 p.window, True, False),
    }


OPS = ["masked_gather", "spectral_filter", "masked_scatter_add", "masked_scatter_add_",
       "masked_gather_backward", "spectral_filter_backward", "masked_scatter_add_backward"]


@pytest.fixture(scope="module")
def cuda_problem():
    p = make_problem("cuda")
    yield p
    del p
    torch.cuda.empty_cache()


def _capture(fn, reps):
    """CUDA graph of ``reps`` back-to-back calls: replaying it times the GPU work alone."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return graph


def _host_inclusive_per_op(fn, reps, trials=5):
    """Best wall time per call of ``reps`` eager calls + one sync (Python/dispatch/launch included)."""
    best = float("inf")
    for _ in range(trials):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


@requires_cuda
@pytest.mark.parametrize("impl", ["triton", "torch_eager"])
@pytest.mark.parametrize("op", OPS)
def test_bench_cuda(benchmark, cuda_problem, op, impl):
    """Timed: replay of a CUDA graph of REPS calls (GPU time); extra_info adds the
    eager host-inclusive time per call and the peak extra memory of one call."""
    p = cuda_problem
    fn = (triton_calls if impl == "triton" else eager_calls)(p)[op]
    with torch.no_grad():
        fn()  # warm-up: Triton compilation, cuFFT/allocator caches
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak_extra = torch.cuda.max_memory_allocated() - before
        peak_total = torch.cuda.max_memory_allocated()
        host_per_op = _host_inclusive_per_op(fn, REPS)
        graph = _capture(fn, REPS)

        def replay():
            graph.replay()
            torch.cuda.synchronize()

        benchmark(replay)
    del graph
    per_op = benchmark.stats.stats.mean / REPS
    benchmark.extra_info.update(
        impl=impl, op=op, device=torch.cuda.get_device_name(), reps_per_round=REPS,
        gpu_ms_per_op=per_op * 1e3, bytes_moved=p.bytes[op], GB_per_s=p.bytes[op] / per_op / 1e9,
        eager_host_inclusive_ms_per_op=host_per_op * 1e3,
        eager_GB_per_s=p.bytes[op] / host_per_op / 1e9,
        peak_extra_mem_MiB=peak_extra / 2 ** 20, max_memory_allocated_MiB=peak_total / 2 ** 20,
        problem=f"patch {PATCH}^3 at {OFFSET} in {VOL}^3 float32, pad {PAD}^3",
    )
    assert per_op > 0


@pytest.mark.u3d_sizes([64], quick=[32])
def test_bench_reference_twins_cpu_small(benchmark, n):
    """CPU timing of the PyTorch reference twins (gather -> filter -> scatter): an n/2 patch of an n^3 volume."""
    p = make_problem("cpu", vol=n, patch=n // 2, pad=n)
    calls = eager_calls(p)
    assert set(calls) == set(OPS) == set(triton_calls(p))
    names = ["masked_gather", "spectral_filter", "masked_scatter_add"]

    def run():
        return [calls[n]() for n in names]

    with torch.no_grad():
        outs = benchmark(run)
    nbytes = sum(p.bytes[n] for n in names)
    benchmark.extra_info.update(impl="torch_eager_cpu", ops=names, bytes_moved=nbytes,
                                GB_per_s=nbytes / benchmark.stats.stats.mean / 1e9,
                                problem=f"patch {n // 2}^3 in {n}^3 float32, pad {n}^3")
    assert outs[0].shape == (1, 1, n, n, n) and outs[2][0].shape == (1, 1, n, n, n)
