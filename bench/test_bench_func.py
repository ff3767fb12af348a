"""The cost of the ``torch.func`` rules and of low precision (pytest-benchmark, CPU or GPU).

Side by side in one run, per group:

* ``vmap-project-<n>``: ``torch.func.vmap(physics.A)`` over 4 volumes ``(1, 1, n, n, n)`` vs
  one batched call on ``(4, 1, n, n, n)`` vs a Python loop of 4 calls (the vmap rule folds the
  vmapped dimension into B: its cost over the batched call is the rule's overhead);
* ``vjp-project-<n>``: ``torch.func.vjp`` + its pullback vs ``torch.autograd`` (the
  ``torch.func``-safe Function vs the plain one);
* ``precision-project-<n>``: the projection of a float32, bfloat16 and float16 volume (the low
  precision cast in and out around a float32 projection);
* ``call-overhead-gather``: the public ``masked_gather`` (validation, Function, casts) vs the raw
  ``torch.ops.unrolled3d.masked_gather`` on a small 16^3 patch, where per-call overhead shows;
* ``fdk-<n>``: FDK at the default step (views x voxels per step) and at 2^21, the default
  before the backprojection was vectorised over views (the result is the same to the bit).

Run: ``OMP_NUM_THREADS=1 python -m pytest bench/test_bench_func.py --benchmark-json
bench/results/func_cpu.json``.
"""
from __future__ import annotations

import pytest
import torch

from unrolled3d import ops
from unrolled3d.geometry import ConeBeamGeometry
from unrolled3d.physics import ConeBeamCT, fdk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [64]


def _physics(n: int) -> ConeBeamCT:
    """An n^3 volume, n views over 360 deg, an n x n detector (as bench/test_bench_projector.py)."""
    return ConeBeamCT(ConeBeamGeometry.circular(n, 4.0 * n, 2.0 * n, (n, n), 1.5 * 1.2, (n, n, n)), device=DEVICE)


def _rand(*shape, dtype=torch.float32):
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device=DEVICE, dtype=dtype)


def _sync(fn):
    def run(*args):
        out = fn(*args)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out
    return run


def _info(benchmark, **kw):
    benchmark.extra_info.update(device=DEVICE, threads=torch.get_num_threads(), **kw)


@pytest.mark.u3d_sizes(SIZES)
@pytest.mark.parametrize("how", ["vmap", "batched", "loop"])
def test_vmap_of_the_projection(benchmark, how, n):
    physics = _physics(n)
    x = _rand(4, 1, 1, n, n, n)
    fns = {
        "vmap": lambda t: torch.func.vmap(physics.A)(t),
        "batched": lambda t: physics.A(t.reshape(4, 1, n, n, n)),
        "loop": lambda t: torch.stack([physics.A(v) for v in t]),
    }
    torch.testing.assert_close(fns[how](x).reshape(4, -1), fns["loop"](x).reshape(4, -1), rtol=0, atol=0)
    benchmark.group = f"vmap-project-{n}"
    benchmark(_sync(fns[how]), x)
    _info(benchmark, size=n, volumes=4, how=how)


@pytest.mark.u3d_sizes(SIZES)
@pytest.mark.parametrize("how", ["torch.func.vjp", "torch.autograd"])
def test_vjp_of_the_projection(benchmark, how, n):
    physics = _physics(n)
    x, g = _rand(1, 1, n, n, n), _rand(1, 1, *physics.geometry.sino_shape)

    def func_vjp(t):
        _, pullback = torch.func.vjp(physics.A, t)
        return pullback(g)[0]

    def autograd_vjp(t):
        t = t.detach().requires_grad_()
        return torch.autograd.grad(physics.A(t), t, g)[0]

    fn = func_vjp if how == "torch.func.vjp" else autograd_vjp
    benchmark.group = f"vjp-project-{n}"
    benchmark(_sync(fn), x)
    _info(benchmark, size=n, how=how)


@pytest.mark.u3d_sizes(SIZES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_low_precision_projection(benchmark, dtype, n):
    physics = _physics(n)
    x = _rand(1, 1, n, n, n, dtype=getattr(torch, dtype))
    benchmark.group = f"precision-project-{n}"
    benchmark(_sync(physics.A), x)
    _info(benchmark, size=n, dtype=dtype)


@pytest.mark.parametrize("how", ["public", "raw op"])
def test_call_overhead_of_the_public_function(benchmark, how):
    vol, mask = _rand(1, 1, 32, 32, 32), _rand(16, 16, 16)
    off, patch, pad = (8, 8, 8), (16, 16, 16), (32, 32, 32)
    if how == "public":
        fn = lambda: ops.masked_gather(vol, off, patch, pad, mask)  # noqa: E731
    else:
        fn = lambda: torch.ops.unrolled3d.masked_gather(vol, list(off), list(patch), list(pad), mask)  # noqa: E731
    benchmark.group = "call-overhead-gather"
    benchmark(_sync(fn))
    _info(benchmark, how=how, backend=ops.get_backend())


@pytest.mark.u3d_sizes(SIZES)
@pytest.mark.parametrize("step", ["default", "2^21"])
def test_fdk_step_size(benchmark, step, n):
    physics = _physics(n)
    y = physics.A(_rand(1, 1, n, n, n))
    slab = None if step == "default" else 1 << 21
    benchmark.group = f"fdk-{n}"
    benchmark(_sync(lambda t: fdk(t, physics.geometry, slab_voxels=slab)), y)
    _info(benchmark, size=n, n_views=n, step=step)
