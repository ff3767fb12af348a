"""Normal operator on a patch: the diagonal-circulant H vs the exact A^T A (two projections).

For a volume of n^3 voxels (n views) and a patch of (n/2)^3 voxels: time, peak memory, and the
relative error ||S A^T A S^T x - H_p x|| / ||S A^T A S^T x|| of the fitted H on the patch.
Run: ``.venv/bin/python -m pytest bench/test_bench_normal.py --benchmark-json bench/results/normal.json``.
"""
from __future__ import annotations

import functools

import pytest
import torch

from memory import cpu_peak, cuda_peak
from unrolled3d.normal import DiagCirculantNormal, fit_normal
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry

CUDA = torch.cuda.is_available()
FIT_STEPS = {64: 100, 128: 40, 256: 30}


def _physics(n: int, device: str) -> ConeBeamCT:
    g = ConeBeamGeometry.circular(n, 4.0 * n, 2.0 * n, (n, int(1.25 * n)), 1.5, (n, n, n))
    return ConeBeamCT(g, device=device)


@functools.lru_cache(maxsize=None)
def _setup(n: int, device: str):
    physics = _physics(n, device)
    x0 = torch.randn(1, 1, n, n, n, device=device)
    scaling = float(physics.compute_sqnorm(x0, max_iter=30, tol=1e-3, verbose=False))
    H = DiagCirculantNormal((n, n, n), scaling=scaling, device=device)
    fit_normal(H, physics, n_iter=FIT_STEPS.get(n, 100), lr=1e-2, progress=False)  # other sizes: --u3d-sizes
    p = n // 2
    offset = (n // 4, n // 4, n // 4)
    patch_h = H.restrict(offset, (p, p, p))
    patch_exact = physics.restrict(offset, (p, p, p))
    return scaling, patch_h, patch_exact


def _exact(patch_exact, scaling, x):
    with torch.no_grad():
        return patch_exact.A_adjoint(patch_exact.A(x)) / scaling


def _approx(patch_h, x):
    with torch.no_grad():
        return patch_h.A_adjoint_A(x) / patch_h.scaling


def _patch_input(n):
    return (torch.randn(1, 1, n // 2, n // 2, n // 2, generator=torch.Generator().manual_seed(1)),)


def _cpu_exact_run(n, x):
    scaling, _, patch_exact = _setup(n, "cpu")
    return _exact(patch_exact, scaling, x)


def _cpu_h_run(n, x):
    _, patch_h, _ = _setup(n, "cpu")
    return _approx(patch_h, x)


@pytest.mark.u3d_sizes([64, 128], quick=[32])
@pytest.mark.parametrize("impl", ["exact", "H"])
def test_cpu_patch_normal(benchmark, impl, n):
    scaling, patch_h, patch_exact = _setup(n, "cpu")
    (x,) = _patch_input(n)
    fn = functools.partial(_exact, patch_exact, scaling) if impl == "exact" else functools.partial(_approx, patch_h)
    benchmark.group = f"cpu-patch-normal-{n}"
    benchmark(fn, x)
    err = float((_approx(patch_h, x) - _exact(patch_exact, scaling, x)).norm() / _exact(patch_exact, scaling, x).norm())
    benchmark.extra_info.update(size=n, patch=n // 2, n_views=n, impl=impl, device="cpu", rel_error_H=err)
    run = _cpu_exact_run if impl == "exact" else _cpu_h_run
    # memory in a fresh process, whose set-up (the fit) runs before the measured call
    mem = cpu_peak(functools.partial(_setup_then_input, n), functools.partial(run, n))
    benchmark.extra_info.update({f"mem_{k}": v for k, v in mem.items()})


def _setup_then_input(n):
    _setup(n, "cpu")
    return _patch_input(n)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.u3d_sizes([128, 256], quick=[64])
@pytest.mark.parametrize("impl", ["exact", "H"])
def test_cuda_patch_normal(benchmark, impl, n):
    scaling, patch_h, patch_exact = _setup(n, "cuda")
    x = _patch_input(n)[0].cuda()
    fn = functools.partial(_exact, patch_exact, scaling) if impl == "exact" else functools.partial(_approx, patch_h)

    def run(t):
        out = fn(t)
        torch.cuda.synchronize()
        return out

    benchmark.group = f"cuda-patch-normal-{n}"
    benchmark(run, x)
    err = float((_approx(patch_h, x) - _exact(patch_exact, scaling, x)).norm() / _exact(patch_exact, scaling, x).norm())
    benchmark.extra_info.update(size=n, patch=n // 2, n_views=n, impl=impl, device=torch.cuda.get_device_name(),
                                rel_error_H=err)
    benchmark.extra_info.update({f"mem_{k}": v for k, v in cuda_peak(fn, x).items()})
