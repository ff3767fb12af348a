"""Peak memory and time of one training step and of inference vs volume size: full unrolled,
partitioned with the exact patch operator, partitioned with the diagonal-circulant H.

Model: UnrolledPGD (K = 5, one shared UNet3D with base 8, depth 2); cone beam with 30 views,
an n x 1.25n detector, normalised operator; fixed 32^3 patch (inference: stride = patch, one
sweep, so the time scales with the number of patches). Memory is measured in a fresh process
per case (peak RSS growth during the call, inputs excluded; CPU) or with
torch.cuda.max_memory_allocated (GPU).
Run: ``.venv/bin/python -m pytest bench/test_bench_partition.py --benchmark-json bench/results/partition_cpu.json``
"""
from __future__ import annotations

import functools

import pytest
import torch

from memory import cpu_peak
from unrolled3d.data import random_ellipsoids, voxelize
from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.normal import DiagCirculantWrapper
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry

PATCH = 32
SIZES = [32, 64, 96, 128]


def _setup(n: int, mode: str):
    torch.manual_seed(0)
    g = ConeBeamGeometry.circular(30, 4.0 * n, 2.0 * n, (n, int(1.25 * n)), 1.5, (n, n, n))
    physics = ConeBeamCT(g, normalize=True)
    x = voxelize(random_ellipsoids(8, radius=0.45 * n, seed=n), (n, n, n))[None, None]
    y = physics.A(x)
    model = UnrolledPGD(UNet3D(base=8, depth=2), n_iter=5, step_size=1.0)
    if mode == "full":
        return model, physics, x, y
    rec = PartitionedReconstructor(model, (n, n, n), (PATCH,) * 3, stride=(PATCH,) * 3, n_sweeps=1)
    if mode == "partitioned_H":
        physics = DiagCirculantWrapper(physics, (n, n, n)).init_from_psf()
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
    benchmark.pedantic(fn, args=(n, mode, net, physics, x, y), rounds=1, iterations=1, warmup_rounds=0)
    mem = cpu_peak(functools.partial(_inputs, n, mode), functools.partial(_measured, fn, n, mode))
    benchmark.extra_info.update(size=n, patch=PATCH, mode=mode, kind=kind, views=30, K=5,
                                peak_extra_mib=mem["extra_bytes"] / 2**20)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("mode", ["full", "partitioned_exact", "partitioned_H"])
def test_cpu_train_step(benchmark, mode, n):
    _case(benchmark, "train", mode, n)


@pytest.mark.parametrize("n", SIZES[:3])
@pytest.mark.parametrize("mode", ["full", "partitioned_exact", "partitioned_H"])
def test_cpu_inference(benchmark, mode, n):
    _case(benchmark, "inference", mode, n)
