"""3D multi-coil MRI: time and peak memory of A, A^H, the exact A^H A and the exact patch normal
operator -- ours (:class:`unrolled3d.mri.MultiCoilMRI3D`) vs ``deepinv.physics.MultiCoilMRI(three_d=True)``.

Volume n^3 (n = 64; 128 with ``U3D_BENCH_MRI_128=1``), 8 and 16 birdcage coils, a Poisson-disc
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

Diagonal-circulant ``H`` for MRI: ``DiagCirculantWrapper`` fits real single-channel volumes
``(B, 1, D, H, W)``; ``A^H A`` of complex MRI acts on ``(re, im)`` jointly (a 2x2 block of
real operators whose off-diagonal blocks vanish only for point-symmetric masks and real maps).
``test_mri_h_on_the_real_block`` fits ``H`` on the real-to-real block only (an adapter that
feeds ``(x, 0)`` and keeps ``Re A^H``) and reports its error and the size of the neglected
cross block: a complex-aware wrapper (complex ``lam``, or the 2x2 block) is still to be done.

Run: ``.venv/bin/python -m pytest bench/test_bench_mri.py --benchmark-json bench/results/mri_cpu.json``
"""
from __future__ import annotations

import ctypes
import functools
import os

import pytest
import torch
from deepinv.physics import LinearPhysics, MultiCoilMRI

from memory import cpu_peak
from unrolled3d.mri import MultiCoilMRI3D, birdcage_maps, from_complex_image, variable_density_mask
from unrolled3d.normal import DiagCirculantWrapper

# One thread by default: on the shared, loaded 2-core machine, 2 OpenMP threads made the small
# per-coil kernels up to 25x slower (contention), which measures the load, not the operators.
torch.set_num_threads(int(os.environ.get("U3D_BENCH_THREADS", "1")))

SIZES = [64] + ([128] if os.environ.get("U3D_BENCH_MRI_128") == "1" else [])
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


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("n_coils", COILS)
@pytest.mark.parametrize("impl, op, chunk", CASES, ids=[f"{i}-{o}-{c or 'all'}" for i, o, c in CASES])
def test_cpu_mri_operator(benchmark, n, n_coils, impl, op, chunk):
    physics = _physics(n, n_coils, impl, chunk)
    inputs = _inputs(n, n_coils, op)
    benchmark.group = f"cpu-mri-{op.replace('_native', '')}-{n}-{n_coils}coils"
    out = benchmark.pedantic(_apply, args=(physics, op, n, *inputs), rounds=3, iterations=1, warmup_rounds=1)
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


class _RealBlock(LinearPhysics):
    """The real-to-real block of a complex MRI operator as a single-channel real physics:
    ``A_r x = A (x, 0)``, ``A_r^T y = Re A^H y`` (so ``A_r^T A_r = Re A^H A (x, 0)``)."""

    def __init__(self, inner: MultiCoilMRI3D):
        super().__init__(img_size=(1, *inner.img_shape))
        self.inner = inner

    def A(self, x, **kw):
        return self.inner.A(torch.cat([x, torch.zeros_like(x)], dim=1))

    def A_adjoint(self, y, **kw):
        return self.inner.A_adjoint(y)[:, :1]


def test_mri_h_on_the_real_block():
    """Fit the diagonal-circulant H on Re A^H A (x, 0) (32^3, 8 coils, R = 8) and report its error
    and the neglected cross block ||Im A^H A (x, 0)|| / ||A^H A (x, 0)|| (not a speed benchmark)."""
    n = 32
    shape = (n, n, n)
    physics = MultiCoilMRI3D(variable_density_mask(shape, 4.0, (8, 8), seed=0, kind="poisson"),
                             birdcage_maps(8, shape))
    block = _RealBlock(physics)
    wrapper = DiagCirculantWrapper(block, shape).init_from_psf()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 1, *shape, generator=g)
    err_psf = wrapper.relative_error(n_probes=2, generator=torch.Generator().manual_seed(7))
    wrapper.fit(n_iter=40, lr=1e-2, progress=False)
    err_fit = wrapper.relative_error(n_probes=2, generator=torch.Generator().manual_seed(7))
    full = physics.A_adjoint_A(torch.cat([x, torch.zeros_like(x)], dim=1))
    cross = float(full[:, 1].norm() / full.norm())
    print(f"\nH on the real block of MRI A^H A (32^3, 8 coils, R=4): rel. error PSF init {err_psf:.3f}, "
          f"fitted {err_fit:.3f}; neglected cross block {cross:.3f} of ||A^H A (x, 0)||")
    assert 0 < err_fit <= err_psf + 1e-6 and 0 <= cross < 1
