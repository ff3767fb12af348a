"""Peak memory and time of one training step and of inference vs volume size: full unrolled,
partitioned with the exact patch operator, partitioned with the diagonal-circulant H.

Model: UnrolledPGD (K = 5, one shared UNet3D with base 8, depth 2); cone beam with 30 views,
an n x 1.25n detector, normalised operator; fixed 32^3 patch (inference: stride = patch, one
sweep, so the time scales with the number of patches). Memory is measured in a fresh process
per case: peak RSS growth during the second of two calls (inputs excluded; the first call sets up
thread pools, oneDNN primitives and FFT plans once, as in any training loop).
Run: ``.venv/bin/python -m pytest bench/test_bench_partition.py --benchmark-json bench/results/partition_cpu.json``
"""
from __future__ import annotations

import functools

import pytest
import torch

from memory import cpu_peak, cuda_peak
from unrolled3d.data import random_ellipsoids, voxelize
from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.normal import DiagCirculantWrapper
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry

PATCH = 32
SIZES = [32, 64, 96, 128]


def _setup(n: int, mode: str, device: str = "cpu"):
    torch.manual_seed(0)
    g = ConeBeamGeometry.circular(30, 4.0 * n, 2.0 * n, (n, int(1.25 * n)), 1.5, (n, n, n))
    physics = ConeBeamCT(g, normalize=True, device=device)
    x = voxelize(random_ellipsoids(8, radius=0.45 * n, seed=n), (n, n, n))[None, None].to(device)
    y = physics.A(x)
    model = UnrolledPGD(UNet3D(base=8, depth=2), n_iter=5, step_size=1.0).to(device)
    if mode == "full":
        return model, physics, x, y
    rec = PartitionedReconstructor(model, (n, n, n), (PATCH,) * 3, stride=(PATCH,) * 3, n_sweeps=1)
    if mode == "partitioned_H":
        physics = DiagCirculantWrapper(physics, (n, n, n), device=device).init_from_psf()
    return rec, physics, x, y


def train_step(n: int, mode: str, net, physics, x, y):
    net.zero_grad(set_to_none=True)
    if mode == "full":
        loss = torch.nn.functional.mse_loss(net(y, physics), x)
    else:
        c = (n - PATCH) // 2
        loss = net.training_loss(y, physics, x, offset=(c, c, c))
    loss.backward()
    return loss.detach().reshape(1)


def inference(n: int, mode: str, net, physics, x, y):
    with torch.no_grad():
        return net(y, physics)


def _inputs(n, mode):
    return _setup(n, mode)


def _measured(fn, n, mode, net, physics, x, y):
    return fn(n, mode, net, physics, x, y)


def _case(benchmark, kind: str, mode: str, n: int):
    fn = train_step if kind == "train" else inference
    net, physics, x, y = _setup(n, mode)
    benchmark.group = f"{kind}-{mode}"
    benchmark(fn, n, mode, net, physics, x, y)
    mem = cpu_peak(functools.partial(_inputs, n, mode), functools.partial(_measured, fn, n, mode), warmup=True)
    benchmark.extra_info.update(size=n, patch=PATCH, mode=mode, kind=kind, views=30, K=5,
                                peak_extra_mib=mem["extra_bytes"] / 2**20, threads=torch.get_num_threads(),
                                memory="second call in a fresh process (steady state, one-time set-up excluded)")


@pytest.mark.u3d_sizes(SIZES, quick=[32])
@pytest.mark.parametrize("mode", ["full", "partitioned_exact", "partitioned_H"])
def test_cpu_train_step(benchmark, mode, n):
    _case(benchmark, "train", mode, n)


@pytest.mark.u3d_sizes(SIZES[:3])
@pytest.mark.parametrize("mode", ["full", "partitioned_exact", "partitioned_H"])
def test_cpu_inference(benchmark, mode, n):
    _case(benchmark, "inference", mode, n)


# ----------------------------------------------------------------------------- GPU (lent machine)
CUDA_SIZES = [64, 128, 256, 384, 512]
CUDA_CASES = [(kind, n) for kind in ("train", "inference") for n in CUDA_SIZES
              if kind == "train" or n <= 256]  # partitioned inference sweeps (n/32)^3 patches: 4096 at 512^3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind, n", CUDA_CASES, ids=[f"{k}-{n}" for k, n in CUDA_CASES])
@pytest.mark.parametrize("mode", ["full", "partitioned_exact", "partitioned_H"])
def test_cuda_partition(benchmark, mode, n, kind):
    """The same cases on the GPU up to 512^3; a case that runs out of memory is recorded as such
    (``peak_extra_mib = None``, ``oom = True``), which is the finding for full unrolled at large n."""
    fn = train_step if kind == "train" else inference
    benchmark.group = f"cuda-{kind}-{mode}"
    info = dict(size=n, patch=PATCH, mode=mode, kind=kind, views=30, K=5, device=torch.cuda.get_device_name(),
                oom=False, peak_extra_mib=None)
    timed_once = False
    try:
        net, physics, x, y = _setup(n, mode, "cuda")
        fn(n, mode, net, physics, x, y)  # warm-up: cuDNN plans, FFT plans, the caching allocator's pools
        mem = cuda_peak(functools.partial(fn, n, mode, net, physics, x), y)
        info["peak_extra_mib"] = mem["extra_bytes"] / 2**20

        def timed():
            out = fn(n, mode, net, physics, x, y)
            torch.cuda.synchronize()
            return out

        timed_once = True  # the fixture times once per test, whatever happens inside
        # pedantic: at 512^3 one more round costs minutes and may run out of memory after the figure
        benchmark.pedantic(timed, rounds=2 if kind == "train" else 1, iterations=1, warmup_rounds=0)
    except torch.cuda.OutOfMemoryError:
        info["oom"] = True
        if not timed_once:  # keeps the case in the JSON; its time is meaningless (report.py shows "-")
            benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    finally:
        torch.cuda.empty_cache()
    benchmark.extra_info.update(info)
