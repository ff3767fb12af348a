"""Projector throughput and memory: C++ CPU vs the pure-PyTorch twin; CUDA vs ASTRA.

Run: ``.venv/bin/python -m pytest bench/test_bench_projector.py --benchmark-json bench/results/projector.json``.
Throughput is reported as GUPS: giga (voxel x view) updates per second = D*H*W*n_views / time.
"""
from __future__ import annotations

import functools

import pytest
import torch

from memory import cpu_peak, cuda_peak
from unrolled3d.geometry import ConeBeamGeometry
from unrolled3d.ops import cone_backproject, cone_project
from unrolled3d.ops.projector_ref import cone_backproject_ref, cone_project_ref

CUDA = torch.cuda.is_available()


def geometry(n: int) -> ConeBeamGeometry:
    """An n^3 volume of 1 mm voxels, n views over 360 deg, an n x n detector (magnification 1.5)."""
    return ConeBeamGeometry.circular(n, 4.0 * n, 2.0 * n, (n, n), 1.5 * 1.2, (n, n, n))


OPS = {
    ("forward", "cpp"): cone_project, ("back", "cpp"): cone_backproject,
    ("forward", "torch_twin"): cone_project_ref, ("back", "torch_twin"): cone_backproject_ref,
}


def _inputs(direction: str, n: int, device: str = "cpu"):
    g = geometry(n)
    shape = (1, 1, *(g.vol_shape if direction == "forward" else g.sino_shape))
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device), g


def _make_inputs(direction, n):
    return _inputs(direction, n)


def _record(benchmark, n, seconds_key="mean"):
    benchmark.extra_info["size"] = n
    benchmark.extra_info["n_views"] = n


@pytest.mark.parametrize("n", [64, 128])
@pytest.mark.parametrize("impl", ["cpp", "torch_twin"])
@pytest.mark.parametrize("direction", ["forward", "back"])
def test_cpu_projector(benchmark, direction, impl, n):
    x, g = _inputs(direction, n)
    op = OPS[(direction, impl)]
    rounds = 3 if impl == "cpp" else 1
    benchmark.group = f"cpu-{direction}-{n}"
    benchmark.pedantic(op, args=(x, g), rounds=rounds, iterations=1, warmup_rounds=1 if impl == "cpp" else 0)
    benchmark.extra_info.update(size=n, n_views=n, device="cpu", impl=impl, direction=direction,
                                threads=torch.get_num_threads())
    benchmark.extra_info["gups"] = n**3 * n / benchmark.stats.stats.min / 1e9
    if impl == "cpp":
        mem = cpu_peak(functools.partial(_make_inputs, direction, n), op)
        benchmark.extra_info.update({f"mem_{k}": v for k, v in mem.items()})


# ----------------------------------------------------------------------------- CUDA
def _sync(fn):
    def run(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out
    return run


def _astra_ops(g: ConeBeamGeometry):
    """ASTRA's cuda3d forward/back projection on linked torch CUDA tensors (no host copies)."""
    astra = pytest.importorskip("astra")
    D, H, W = g.vol_shape
    sz, sy, sx = g.voxel_size
    vol_geom = astra.create_vol_geom(H, W, D, -W * sx / 2, W * sx / 2, -H * sy / 2, H * sy / 2, -D * sz / 2, D * sz / 2)
    proj_geom = astra.create_proj_geom("cone_vec", g.det_shape[0], g.det_shape[1], g.vectors.copy())
    vol = torch.zeros((D, H, W), device="cuda")
    sino = torch.zeros((g.det_shape[0], g.n_views, g.det_shape[1]), device="cuda")  # ASTRA layout
    vid = astra.data3d.link("-vol", vol_geom, vol)
    sid = astra.data3d.link("-sino", proj_geom, sino)
    fp = astra.algorithm.create({"type": "FP3D_CUDA", "VolumeDataId": vid, "ProjectionDataId": sid})
    bp = astra.algorithm.create({"type": "BP3D_CUDA", "ReconstructionDataId": vid, "ProjectionDataId": sid})

    def forward(x, _g):
        vol.copy_(x[0, 0])
        astra.algorithm.run(fp)
        return sino

    def back(y, _g):
        sino.copy_(y[0, 0].transpose(0, 1))
        astra.algorithm.run(bp)
        return vol

    return forward, back


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("n", [256, 512])
@pytest.mark.parametrize("impl", ["cuda", "astra"])
@pytest.mark.parametrize("direction", ["forward", "back"])
def test_cuda_projector(benchmark, direction, impl, n):
    x, g = _inputs(direction, n, "cuda")
    if impl == "cuda":
        op = cone_project if direction == "forward" else cone_backproject
    else:
        fwd, bwd = _astra_ops(g)
        op = fwd if direction == "forward" else bwd
    benchmark.group = f"cuda-{direction}-{n}"
    benchmark.pedantic(_sync(op), args=(x, g), rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(size=n, n_views=n, device=torch.cuda.get_device_name(), impl=impl,
                                direction=direction)
    benchmark.extra_info["gups"] = n**3 * n / benchmark.stats.stats.min / 1e9
    if impl == "cuda":
        mem = cuda_peak(op, x, g)
        benchmark.extra_info.update({f"mem_{k}": v for k, v in mem.items()})
    elif direction == "forward":
        # ASTRA is an independent implementation (texture-interpolated ray marching): its
        # projections should agree with ours to discretisation error (~1e-2), not exactly.
        ours = cone_project(x, g)[0, 0]
        theirs = op(x, g).transpose(0, 1)
        benchmark.extra_info["rel_diff_vs_unrolled3d"] = float((theirs - ours).norm() / ours.norm())
