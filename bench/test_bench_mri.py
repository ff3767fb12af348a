"""3D multi-coil MRI: time and peak memory of A, A^H, the exact A^H A and the exact patch normal
operator -- ours (:class:`unrolled3d.mri.MultiCoilMRI3D`) vs ``deepinv.physics.MultiCoilMRI(three_d=True)``.

Volume n^3 (n = 64; more with ``--u3d-sizes 64,128``), 8 and 16 birdcage coils, a Poisson-disc
mask with acceleration 8 (16x16 calibration), float32 / complex64, batch 1. The patch normal
operator is ``S A^H A S^T`` on an (n/2)^3 patch at n/4 (``MultiCoilMRI3D.restrict``). ``chunk``
is ``coil_chunk`` (coils per FFT batch; ``all`` = every coil at once). deepinv has no fused
normal operator: its ``A^H A`` is ``A_adjoint(A(x))`` (``LinearPhysics.A_adjoint_A``).

Threads: ``U3D_BENCH_THREADS`` (default 1, see below), the same for both implementations.
Memory: peak RSS growth of the call in a fresh process (bench/memory.py, output included).
``AH`` gets a contiguous ``(B, 2, N_c, D, H, W)`` k-space (what a file or a data loader gives;
both implementations copy it to complex storage); ``AH_native`` gets the view ``A`` returns
(no copy for ours). The child makes one warm-up call (FFT plans, thread pools: steady-state
memory, as in a loop) and then ``malloc_trim(0)``, so that heap freed before the measured call
is not silently reused by it; the high-water mark is reset after that (bench/memory.py). It also
fixes glibc's mmap threshold at 1 MiB so that the RSS follows the live tensors (see
``_child_fixed_mmap_threshold``); the figures are thus close to the peak of live allocations.

Diagonal-circulant ``H`` for MRI (``test_cpu_mri_patch_normal_H``): the complex
``DiagCirculantWrapper`` (complex kernel, full-FFT ``lam``) fitted to ``A^H A`` of the n^3 volume
(n = 64 and 128, 8 and 16 coils, same mask: acceleration 8, 16x16 calibration), then, on a
centred p^3 patch (p = 32; also p = 64 at n = 128): time and peak memory of ``A`` (full volume),
the exact patch normal operator ``S A^H A S^T`` (``MultiCoilMRI3D.restrict``, all coils at once
and ``coil_chunk=1``) and ``H_p`` (``restrict``), the speed ratio best-exact / ``H_p`` and ``H``'s
relative error on the patch ``||S A^H A S^T x - H_p x|| / ||S A^H A S^T x||`` (Gaussian ``x``) and
on the volume. The fit runs once per (n, coils) in the parent, before the timings; the memory
children load the saved ``H``. Where ``p = n / 2`` (H's doubled patch grid is then the volume's
grid, so H does one FFT pair where the exact operator does one per coil), at n = 64,
``patch_H_radius`` is a second H fitted with ``kernel_radius = p / 2``: its patch grid is ``1.5p + 1`` rounded up to a
2-3-5-smooth size (50 for p = 32), the price its error on the patch.

Run: ``.venv/bin/python -m pytest bench/test_bench_mri.py --benchmark-json bench/results/mri_cpu.json``
"""
from __future__ import annotations

import ctypes
import functools
import os
import tempfile
import time
from pathlib import Path

import pytest
import torch
from deepinv.physics import MultiCoilMRI

from memory import cpu_peak
from unrolled3d.mri import MultiCoilMRI3D, birdcage_maps, from_complex_image, variable_density_mask
from unrolled3d.normal import DiagCirculantWrapper

# One thread by default: on the shared, loaded 2-core machine, 2 OpenMP threads made the small
# per-coil kernels up to 25x slower (contention), which measures the load, not the operators.
torch.set_num_threads(int(os.environ.get("U3D_BENCH_THREADS", "1")))

SIZES = [64]  # more: --u3d-sizes 64,128
COILS = [8, 16]
CASES = [  # (impl, op, chunk)
    ("ours", "A", None), ("deepinv", "A", None),
    ("ours", "AH", None), ("ours", "AH_native", None), ("deepinv", "AH", None), ("ours", "AH", 1),
    ("ours", "AHA", None), ("ours", "AHA", 1), ("deepinv", "AHA", None),
    ("ours", "patch_AHA", None), ("ours", "patch_AHA", 1),
]


@functools.lru_cache(maxsize=None)
def _operands(n: int, n_coils: int):
    shape = (n, n, n)
    mask = variable_density_mask(shape, 8.0, (16, 16), seed=0, kind="poisson")
    maps = birdcage_maps(n_coils, shape)
    return mask, maps


@functools.lru_cache(maxsize=None)
def _physics(n: int, n_coils: int, impl: str, chunk: int | None):
    mask, maps = _operands(n, n_coils)
    if impl == "ours":
        return MultiCoilMRI3D(mask, maps, coil_chunk=chunk)
    return MultiCoilMRI(mask=mask, coil_maps=maps, img_size=(n, n, n), three_d=True)


def _inputs(n: int, n_coils: int, op: str):
    g = torch.Generator().manual_seed(1)
    if op == "A" or op == "AHA":
        return (torch.randn(1, 2, n, n, n, generator=g),)
    if op == "patch_AHA":
        return (torch.randn(1, 2, n // 2, n // 2, n // 2, generator=g),)
    y = torch.randn(1, 2, n_coils, n, n, n, generator=g)
    if op == "AH_native":
        y = from_complex_image(torch.view_as_complex(y.movedim(1, -1).contiguous()))
    return (y,)


def _apply(physics, op: str, n: int, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if op == "A":
            return physics.A(t)
        if op in ("AH", "AH_native"):
            return physics.A_adjoint(t)
        if op == "AHA":
            if isinstance(physics, MultiCoilMRI3D):
                return physics.A_adjoint_A(t)
            return physics.A_adjoint(physics.A(t))
        q = n // 4
        return physics.restrict((q, q, q), (n // 2,) * 3).A_adjoint_A(t)


def _child_inputs(n, n_coils, impl, op, chunk):
    _child_fixed_mmap_threshold()
    _physics(n, n_coils, impl, chunk)  # built before the measured call
    inputs = _inputs(n, n_coils, op)
    _child_run(n, n_coils, impl, op, chunk, *inputs)  # warm-up (FFT plans, thread pools), output dropped
    try:  # hand the set-up's freed heap back to the OS, else the call reuses it unseen by the RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return inputs


def _child_fixed_mmap_threshold():
    """glibc raises its mmap threshold after large frees, after which freed blocks stay resident
    and the RSS high-water mark grows beyond the live peak (allocator state, not the operator).
    A fixed 1 MiB threshold (``mallopt(M_MMAP_THRESHOLD)``, which disables the adjustment) makes
    every large tensor an mmap that is unmapped on free: RSS then tracks live memory."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = -3
    except OSError:
        pass


def _child_run(n, n_coils, impl, op, chunk, t):
    return _apply(_physics(n, n_coils, impl, chunk), op, n, t)


@pytest.mark.u3d_sizes(SIZES)  # not in the quick selection: 22 cases per size
@pytest.mark.parametrize("n_coils", COILS)
@pytest.mark.parametrize("impl, op, chunk", CASES, ids=[f"{i}-{o}-{c or 'all'}" for i, o, c in CASES])
def test_cpu_mri_operator(benchmark, n, n_coils, impl, op, chunk):
    physics = _physics(n, n_coils, impl, chunk)
    inputs = _inputs(n, n_coils, op)
    benchmark.group = f"cpu-mri-{op.replace('_native', '')}-{n}-{n_coils}coils"
    out = benchmark(_apply, physics, op, n, *inputs)
    info = dict(size=n, n_coils=n_coils, impl=impl, op=op, chunk=chunk or "all", device="cpu",
                threads=torch.get_num_threads())
    if impl == "ours" and op in ("A", "AH", "AH_native", "AHA"):  # same numbers as deepinv's operator
        ref = _apply(_physics(n, n_coils, "deepinv", None), "AH" if op == "AH_native" else op, n, *inputs)
        info["rel_diff_vs_deepinv"] = float((out - ref).norm() / ref.norm())
        assert info["rel_diff_vs_deepinv"] < 1e-5
    mem = cpu_peak(functools.partial(_child_inputs, n, n_coils, impl, op, chunk),
                   functools.partial(_child_run, n, n_coils, impl, op, chunk))
    info.update({f"mem_{k}": v for k, v in mem.items()})
    benchmark.extra_info.update(info)
    print(f"\n{impl:8s} {op:10s} n={n} coils={n_coils} chunk={chunk or 'all'}: "
          f"min {benchmark.stats.stats.min * 1e3:.1f} ms, peak extra {mem['extra_bytes'] / 2**20:.1f} MiB "
          f"(in {mem['input_bytes'] / 2**20:.1f}, out {mem['output_bytes'] / 2**20:.1f} MiB)")


# ----------------------------------------------------------------------------- diagonal-circulant H
H_SIZES = [64, 128]
H_COILS = [8, 16]
H_PATCHES = {64: [32], 128: [32, 64]}
H_FIT = {64: 150, 128: 300}  # Adam steps, lr 5e-2, one fresh complex Gaussian probe per step
H_CASES = [("A", None), ("patch_AHA", None), ("patch_AHA", 1), ("patch_H", None), ("patch_H_radius", None)]
H_PARAMS = [(n, c, p, op, chunk) for n in H_SIZES for c in H_COILS for p in H_PATCHES[n] for op, chunk in H_CASES
            if (op != "A" or p == H_PATCHES[n][0])  # A does not depend on the patch: timed once per (n, coils)
            # the cut kernel only where H's patch grid is the volume's, and at 64^3 (a 128^3 fit takes 12 min)
            and (op != "patch_H_radius" or (2 * p == n and n == 64))]
_H_TIMES: dict = {}  # (n, coils, patch, op, chunk) -> min seconds, for the speed ratio


@functools.lru_cache(maxsize=None)
def _h_dir() -> Path:
    """Where the fitted H files go (created on first use, in the parent process only)."""
    return Path(tempfile.mkdtemp(prefix="u3d_bench_mri_H_"))


def _h_offset(n: int, p: int) -> tuple[int, int, int]:
    return ((n - p) // 2,) * 3


def _kernel_radius(op: str, p: int) -> int | None:
    """``patch_H_radius``: H with its kernel cut to lags ``|l| <= p / 2`` (patch grid ~1.5p, not 2p)."""
    return p // 2 if op == "patch_H_radius" else None


@functools.lru_cache(maxsize=None)
def _fitted_h(n: int, n_coils: int, kernel_radius: int | None = None):
    """The complex diagonal-circulant H fitted to ``A^H A`` (saved for the memory children)."""
    physics = _physics(n, n_coils, "ours", None)
    wrapper = DiagCirculantWrapper(physics, (n, n, n), kernel_radius=kernel_radius)
    assert wrapper.complex_images
    t0 = time.perf_counter()
    history = wrapper.fit(n_iter=H_FIT[n], lr=5e-2, progress=False)
    fit_s = time.perf_counter() - t0
    path = _h_dir() / f"h_{n}_{n_coils}_r{kernel_radius}.pt"
    wrapper.save(path)
    info = dict(fit_steps=H_FIT[n], fit_seconds=fit_s, fit_first_last=[history[0], history[-1]],
                rel_error_H_volume=wrapper.relative_error(n_probes=1), kernel_radius=kernel_radius)
    return wrapper, str(path), info


def _h_patch_op(n, n_coils, p, op, chunk, h_path):
    offset, shape = _h_offset(n, p), (p, p, p)
    if op in ("patch_H", "patch_H_radius"):
        wrapper = DiagCirculantWrapper(_physics(n, n_coils, "ours", None), (n, n, n),
                                       kernel_radius=_kernel_radius(op, p)).load(h_path)
        return wrapper.normal.restrict(offset, shape)
    return _physics(n, n_coils, "ours", chunk).restrict(offset, shape)


def _h_inputs(n, p, op):
    g = torch.Generator().manual_seed(2)
    return (torch.randn(1, 2, *((n,) * 3 if op == "A" else (p,) * 3), generator=g),)


def _h_apply(operator, op, t):
    with torch.no_grad():
        return operator.A(t) if op == "A" else operator.A_adjoint_A(t)


@functools.lru_cache(maxsize=None)
def _h_child_operator(n, n_coils, p, op, chunk, h_path):
    return _physics(n, n_coils, "ours", chunk) if op == "A" else _h_patch_op(n, n_coils, p, op, chunk, h_path)


def _h_child_inputs(n, n_coils, p, op, chunk, h_path):
    _child_fixed_mmap_threshold()
    operator = _h_child_operator(n, n_coils, p, op, chunk, h_path)  # built (and H loaded) before the call
    inputs = _h_inputs(n, p, op)
    _h_apply(operator, op, *inputs)  # warm-up (FFT plans), output dropped
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return inputs


def _h_child_run(n, n_coils, p, op, chunk, h_path, t):
    return _h_apply(_h_child_operator(n, n_coils, p, op, chunk, h_path), op, t)


@pytest.mark.parametrize("n, n_coils, p, op, chunk", H_PARAMS,
                         ids=[f"{n}-{c}coils-patch{p}-{o}-{ch or 'all'}" for n, c, p, o, ch in H_PARAMS])
def test_cpu_mri_patch_normal_H(benchmark, n, n_coils, p, op, chunk):
    """``A`` (full volume), the exact patch normal operator ``S A^H A S^T`` and the fitted complex
    ``H`` on the same patch: time, peak memory, and H's relative error on the patch."""
    wrapper, h_path, fit_info = _fitted_h(n, n_coils, _kernel_radius(op, p))
    operator = _physics(n, n_coils, "ours", chunk) if op == "A" else _h_patch_op(n, n_coils, p, op, chunk, h_path)
    (t,) = _h_inputs(n, p, op)
    benchmark.group = f"cpu-mri-H-{n}-{n_coils}coils-patch{p}"
    benchmark(_h_apply, operator, op, t)
    info = dict(size=n, n_coils=n_coils, patch=p, patch_offset=_h_offset(n, p), op=op, chunk=chunk or "all",
                device="cpu", threads=torch.get_num_threads(), acceleration=8, **fit_info)
    _H_TIMES[(n, n_coils, p, op, chunk)] = benchmark.stats.stats.min
    if op in ("patch_H", "patch_H_radius"):
        info["fft_grid"] = list(operator.grid or (2 * p,) * 3)
        exact = _physics(n, n_coils, "ours", None).restrict(_h_offset(n, p), (p, p, p))
        ref = _h_apply(exact, "AHA", t)
        info["rel_error_H_patch"] = float((_h_apply(operator, op, t) - ref).norm() / ref.norm())
        t0 = time.perf_counter()
        wrapper.normal.clear_cache()
        wrapper.normal.restrict(_h_offset(n, p), (p, p, p))
        info["restrict_first_seconds"] = time.perf_counter() - t0  # full-grid kernel iFFT + patch FFT, once per shape
        exact_times = [_H_TIMES.get((n, n_coils, p, "patch_AHA", c)) for c in (None, 1)]
        exact_times = [v for v in exact_times if v is not None]
        if exact_times:
            info["speedup_vs_best_exact"] = min(exact_times) / benchmark.stats.stats.min
    mem = cpu_peak(functools.partial(_h_child_inputs, n, n_coils, p, op, chunk, h_path),
                   functools.partial(_h_child_run, n, n_coils, p, op, chunk, h_path))
    info.update({f"mem_{k}": v for k, v in mem.items()})
    benchmark.extra_info.update(info)
    extra = "".join(f", {k} {info[k]:.4g}" for k in ("rel_error_H_patch", "speedup_vs_best_exact") if k in info)
    print(f"\n{op:10s} n={n} coils={n_coils} patch={p} chunk={chunk or 'all'}: "
          f"min {benchmark.stats.stats.min * 1e3:.1f} ms, peak extra {mem['extra_bytes'] / 2**20:.1f} MiB{extra}")
