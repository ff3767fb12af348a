"""Projector throughput and memory: C++ CPU (every backprojection algorithm, 1 and 2 threads) vs the
pure-PyTorch twin and mbirjax; CUDA (scatter and gather backprojection) vs ASTRA.

Run: ``.venv/bin/python -m pytest bench/test_bench_projector.py --benchmark-json bench/results/projector.json``.
Throughput is reported as GUPS: giga (voxel x view) updates per second = D*H*W*n_views / time.

Peer on the CPU: mbirjax, run in its own interpreter (``bench/experiments/peers/mbirjax_projector.py --serve``)
when ``U3D_MBIRJAX_PYTHON`` names one (e.g. ``/work/venv-mbirjax/bin/python``); skipped otherwise.
Its cases time one command round trip to that process (the projection, plus a pipe round trip
well under a millisecond), so both sides get pytest-benchmark's own timing in the same run.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from memory import cpu_peak, cuda_peak
from unrolled3d.geometry import ConeBeamGeometry
from unrolled3d.ops import cone_backproject, cone_project
from unrolled3d.ops.projector import cone_backproject_algo
from unrolled3d.ops.projector_ref import cone_backproject_ref, cone_project_ref

CUDA = torch.cuda.is_available()
PEER_SCRIPT = Path(__file__).parent / "experiments" / "peers" / "mbirjax_projector.py"


def geometry(n: int) -> ConeBeamGeometry:
    """An n^3 volume of 1 mm voxels, n views over 360 deg, an n x n detector (magnification 1.5)."""
    return ConeBeamGeometry.circular(n, 4.0 * n, 2.0 * n, (n, n), 1.5 * 1.2, (n, n, n))


OPS = {
    ("forward", "cpp"): cone_project, ("back", "cpp"): cone_backproject,  # "cpp" back: the default ("auto" = tile)
    ("back", "cpp_scatter"): functools.partial(cone_backproject_algo, algorithm="scatter"),
    ("back", "cpp_gather"): functools.partial(cone_backproject_algo, algorithm="gather"),
    ("forward", "torch_twin"): cone_project_ref, ("back", "torch_twin"): cone_backproject_ref,
}
ALGORITHM = {"cpp": "auto (tile)", "cpp_scatter": "scatter", "cpp_gather": "gather"}


def _inputs(direction: str, n: int, device: str = "cpu"):
    g = geometry(n)
    shape = (1, 1, *(g.vol_shape if direction == "forward" else g.sino_shape))
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device), g


def _make_inputs(direction, n):
    return _inputs(direction, n)


# ----------------------------------------------------------------------------- mbirjax peer
_PEERS: dict[tuple[int, int], tuple[subprocess.Popen, dict]] = {}


def _peer(n: int, threads: int):
    """A running mbirjax peer for (n, threads), started (and its JAX functions compiled) once."""
    exe = os.environ.get("U3D_MBIRJAX_PYTHON")
    if not exe:
        pytest.skip("set U3D_MBIRJAX_PYTHON to an interpreter with mbirjax to run the mbirjax peer")
    if not Path(exe).exists():
        pytest.skip(f"U3D_MBIRJAX_PYTHON={exe} does not exist")
    if (n, threads) not in _PEERS:
        for key in list(_PEERS):  # one peer at a time: an idle one still holds its memory
            _stop(*_PEERS.pop(key))
        proc = subprocess.Popen([exe, str(PEER_SCRIPT), "--serve", "--n", str(n), "--threads", str(threads)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        header = proc.stdout.readline()
        if not header:
            pytest.skip(f"the mbirjax peer did not start (exit code {proc.wait()})")
        _PEERS[(n, threads)] = (proc, json.loads(header))
    return _PEERS[(n, threads)]


def _stop(proc, _info):
    if proc.poll() is None:
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(timeout=60)


atexit.register(lambda: [_stop(*p) for p in _PEERS.values()])


def _peer_call(proc, direction):
    proc.stdin.write(direction + "\n")
    proc.stdin.flush()
    answer = proc.stdout.readline().split()
    if not answer or answer[0] != "ok":
        raise RuntimeError(f"mbirjax peer: {answer}")
    return float(answer[1])


# ----------------------------------------------------------------------------- CPU
@pytest.mark.u3d_sizes([64, 128], quick=[32])
@pytest.mark.parametrize("impl", ["cpp", "torch_twin"])
@pytest.mark.parametrize("direction", ["forward", "back"])
def test_cpu_projector(benchmark, direction, impl, n):
    """The default CPU pair vs the PyTorch twin, at the default thread count."""
    x, g = _inputs(direction, n)
    op = OPS[(direction, impl)]
    benchmark.group = f"cpu-{direction}-{n}"
    benchmark(op, x, g)
    benchmark.extra_info.update(size=n, n_views=n, device="cpu", impl=impl, direction=direction,
                                threads=torch.get_num_threads())
    benchmark.extra_info["gups"] = n**3 * n / benchmark.stats.stats.min / 1e9
    if impl == "cpp":
        mem = cpu_peak(functools.partial(_make_inputs, direction, n), op)
        benchmark.extra_info.update({f"mem_{k}": v for k, v in mem.items()})


# Every backprojection algorithm and the mbirjax peer, at 1 and 2 threads. All implementations of
# one (size, threads) run back to back, so that the load of a shared machine drifts as little as
# possible between the figures compared.
ALGO_IMPLS = ["cpp", "cpp_scatter", "cpp_gather", "mbirjax"]


@pytest.mark.parametrize("direction", ["forward", "back"])
@pytest.mark.parametrize("impl", ALGO_IMPLS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.u3d_sizes([64, 128], quick=[32])
def test_cpu_algorithms(benchmark, direction, impl, threads, n):
    if impl != "mbirjax" and (direction, impl) not in OPS:
        pytest.skip(f"{impl} is a backprojection algorithm")
    if threads > (os.cpu_count() or 1):
        pytest.skip(f"{threads} threads but {os.cpu_count()} CPUs")
    benchmark.group = f"cpu-{direction}-{n}-{threads}t"
    benchmark.extra_info.update(size=n, n_views=n, device="cpu", impl=impl, direction=direction, threads=threads)
    if impl == "mbirjax":
        proc, info = _peer(n, threads)
        # its own warm-up (JAX compilation) was done at start-up
        benchmark(_peer_call, proc, direction)
        benchmark.extra_info.update({k: info[k] for k in ("mbirjax", "jax", "jax_devices", "ror_mask")})
    else:
        x, g = _inputs(direction, n)
        op = OPS[(direction, impl)]
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            benchmark(op, x, g)
        finally:
            torch.set_num_threads(old)
        if direction == "back":
            benchmark.extra_info["algorithm"] = ALGORITHM[impl]
        # memory once per implementation (a fresh process, default threads): not per thread count
        if threads == 1:
            mem = cpu_peak(functools.partial(_make_inputs, direction, n), op)
            benchmark.extra_info.update({f"mem_{k}": v for k, v in mem.items()})
    benchmark.extra_info["gups"] = n**3 * n / benchmark.stats.stats.min / 1e9


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
@pytest.mark.u3d_sizes([256, 512], quick=[64])
@pytest.mark.parametrize("impl", ["cuda", "cuda_gather", "astra"])
@pytest.mark.parametrize("direction", ["forward", "back"])
def test_cuda_projector(benchmark, direction, impl, n):
    """"cuda": the default path ("auto": scatter with atomicAdd for back); "cuda_gather": the
    gather backprojector (one thread per voxel, no atomics)."""
    if impl == "cuda_gather" and direction == "forward":
        pytest.skip("gather is a backprojection algorithm")
    x, g = _inputs(direction, n, "cuda")
    if impl == "cuda":
        op = cone_project if direction == "forward" else cone_backproject
    elif impl == "cuda_gather":
        op = functools.partial(cone_backproject_algo, algorithm="gather")
    else:
        fwd, bwd = _astra_ops(g)
        op = fwd if direction == "forward" else bwd
    benchmark.group = f"cuda-{direction}-{n}"
    benchmark(_sync(op), x, g)
    benchmark.extra_info.update(size=n, n_views=n, device=torch.cuda.get_device_name(), impl=impl,
                                direction=direction)
    if direction == "back" and impl != "astra":
        benchmark.extra_info["algorithm"] = "auto" if impl == "cuda" else "gather"
    benchmark.extra_info["gups"] = n**3 * n / benchmark.stats.stats.min / 1e9
    if impl != "astra":
        mem = cuda_peak(op, x, g)
        benchmark.extra_info.update({f"mem_{k}": v for k, v in mem.items()})
    if impl == "cuda_gather":
        # the same transpose as the default path, to float32 rounding of the summation order
        ref = cone_backproject(x, g)
        benchmark.extra_info["rel_diff_vs_default"] = float((op(x, g) - ref).norm() / ref.norm())
    elif impl == "astra" and direction == "forward":
        # ASTRA is an independent implementation (texture-interpolated ray marching): its
        # projections should agree with ours to discretisation error (~1e-2), not exactly.
        ours = cone_project(x, g)[0, 0]
        theirs = op(x, g).transpose(0, 1)
        benchmark.extra_info["rel_diff_vs_unrolled3d"] = float((theirs - ours).norm() / ours.norm())
