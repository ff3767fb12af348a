"""Projector throughput and memory: C++ CPU (every backprojection algorithm, 1 and 2 threads) vs the
pure-PyTorch twin and mbirjax; CUDA (scatter, column and gather backprojection) vs ASTRA; FDK on CUDA
vs ASTRA's FDK_CUDA.

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
from unrolled3d.physics import fdk

CUDA = torch.cuda.is_available()
PEER_SCRIPT = Path(__file__).parent / "experiments" / "peers" / "mbirjax_projector.py"


def geometry(n: int) -> ConeBeamGeometry:
    """An n^3 volume of 1 mm voxels, n views over 360 deg, an n x n detector (magnification 1.5)."""
    return ConeBeamGeometry.circular(n, 4.0 * n, 2.0 * n, (n, n), 1.5 * 1.2, (n, n, n))


OPS = {
    ("forward", "cpp"): cone_project, ("back", "cpp"): cone_backproject,  # "cpp" back: the default ("auto" = tile)
    ("back", "cpp_scatter"): functools.partial(cone_backproject_algo, algorithm="scatter"),
    ("back", "cpp_gather"): functools.partial(cone_backproject_algo, algorithm="gather"),
    ("back", "cpp_column"): functools.partial(cone_backproject_algo, algorithm="column"),
    ("forward", "torch_twin"): cone_project_ref, ("back", "torch_twin"): cone_backproject_ref,
}
ALGORITHM = {"cpp": "auto (tile)", "cpp_scatter": "scatter", "cpp_gather": "gather", "cpp_column": "column"}


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
ALGO_IMPLS = ["cpp", "cpp_scatter", "cpp_gather", "cpp_column", "mbirjax"]


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


CUDA_ALGORITHMS = {"cuda_column": "column", "cuda_gather": "gather"}


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.u3d_sizes([256, 512], quick=[64])
@pytest.mark.parametrize("impl", ["cuda", "cuda_column", "cuda_gather", "astra"])
@pytest.mark.parametrize("direction", ["forward", "back"])
def test_cuda_projector(benchmark, direction, impl, n):
    """"cuda": the default path ("auto": scatter with atomicAdd for back); "cuda_column": the column
    backprojector (a thread per (x, y) column walking z, each voxel written once); "cuda_gather":
    the table-driven gather backprojector (one thread per voxel). bench/gpu/plan.py runs the never-run
    algorithms in processes of their own."""
    if impl in CUDA_ALGORITHMS and direction == "forward":
        pytest.skip(f"{impl} is a backprojection algorithm")
    x, g = _inputs(direction, n, "cuda")
    if impl == "cuda":
        op = cone_project if direction == "forward" else cone_backproject
    elif impl in CUDA_ALGORITHMS:
        op = functools.partial(cone_backproject_algo, algorithm=CUDA_ALGORITHMS[impl])
    else:
        fwd, bwd = _astra_ops(g)
        op = fwd if direction == "forward" else bwd
    benchmark.group = f"cuda-{direction}-{n}"
    benchmark(_sync(op), x, g)
    benchmark.extra_info.update(size=n, n_views=n, device=torch.cuda.get_device_name(), impl=impl,
                                direction=direction)
    if direction == "back" and impl != "astra":
        benchmark.extra_info["algorithm"] = CUDA_ALGORITHMS.get(impl, "auto")
    benchmark.extra_info["gups"] = n**3 * n / benchmark.stats.stats.min / 1e9
    if impl != "astra":
        mem = cuda_peak(op, x, g)
        benchmark.extra_info.update({f"mem_{k}": v for k, v in mem.items()})
    if impl in CUDA_ALGORITHMS:
        # the same transpose as the default path, to float32 rounding of the summation order
        ref = cone_backproject(x, g)
        benchmark.extra_info["rel_diff_vs_default"] = float((op(x, g) - ref).norm() / ref.norm())
    elif impl == "astra":
        # ASTRA is an independent implementation (texture-interpolated ray marching, and for back
        # a voxel-driven interpolation, not our transpose): agreement to discretisation error
        # (~1e-2) checks the geometry conventions, not exactness.
        ours = cone_project(x, g)[0, 0] if direction == "forward" else cone_backproject(x, g)[0, 0]
        theirs = op(x, g)
        theirs = theirs.transpose(0, 1) if direction == "forward" else theirs
        benchmark.extra_info["rel_diff_vs_unrolled3d"] = float((theirs - ours).norm() / ours.norm())


# ----------------------------------------------------------------------------- FDK on CUDA
def _ball_volume(g: ConeBeamGeometry, device: str) -> torch.Tensor:
    """A ball of value 1 and radius 0.35 n voxels at the volume's centre (a cheap test object)."""
    D, H, W = g.vol_shape
    axes = [torch.arange(k, device=device, dtype=torch.float32) - 0.5 * (k - 1) for k in (D, H, W)]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    return ((z**2 + y**2 + x**2) < (0.35 * min(D, H, W)) ** 2).float()[None, None]


def _astra_fdk(g: ConeBeamGeometry):
    """ASTRA's FDK_CUDA on linked torch CUDA tensors, on ASTRA's own circular "cone" geometry (which
    equals our vectors: checked)."""
    astra = pytest.importorskip("astra")
    tr = g.trajectory
    (rows, cols), (dv, du) = g.det_shape, tr.det_spacing
    proj_geom = astra.create_proj_geom("cone", du, dv, rows, cols, list(tr.angles), tr.source_origin,
                                       tr.origin_detector)
    vec_gap = float(abs(astra.geom_2vec(proj_geom)["Vectors"] - g.vectors).max())
    D, H, W = g.vol_shape
    sz, sy, sx = g.voxel_size
    vol_geom = astra.create_vol_geom(H, W, D, -W * sx / 2, W * sx / 2, -H * sy / 2, H * sy / 2, -D * sz / 2, D * sz / 2)
    vol = torch.zeros((D, H, W), device="cuda")
    sino = torch.zeros((rows, g.n_views, cols), device="cuda")
    vid = astra.data3d.link("-vol", vol_geom, vol)
    sid = astra.data3d.link("-sino", proj_geom, sino)
    alg = astra.algorithm.create({"type": "FDK_CUDA", "ReconstructionDataId": vid, "ProjectionDataId": sid,
                                  "option": {"ShortScan": False}})

    def run(y, _g):
        sino.copy_(y[0, 0].transpose(0, 1))
        astra.algorithm.run(alg)
        return vol

    return run, vec_gap


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.u3d_sizes([256, 512], quick=[64])
@pytest.mark.parametrize("impl", ["cuda", "astra"])
def test_cuda_fdk(benchmark, impl, n):
    """FDK from measurements on the GPU to the volume: "cuda" = unrolled3d.physics.fdk (cosine
    weights and ramp filter with torch.fft, the backprojection in CUDA), "astra" = ASTRA's FDK_CUDA.
    Scan: the projector cases' (n views over 360 deg, n x n detector), measurements = our projection
    of a unit ball. Each records its largest error on the inner part of the ball (its own
    discretisation: ~1e-2), and ASTRA its distance from ours there."""
    g = geometry(n)
    y = cone_project(_ball_volume(g, "cuda"), g)
    if impl == "cuda":
        op = fdk
    else:
        op, vec_gap = _astra_fdk(g)
        benchmark.extra_info["astra_vs_our_vectors_max_abs"] = vec_gap
    benchmark.group = f"cuda-fdk-{n}"
    benchmark(_sync(op), y, g)
    out = op(y, g).reshape(g.vol_shape)
    D = g.vol_shape[0]
    inner = (slice(D // 2 - D // 8, D // 2 + D // 8),) * 3  # inside the ball (radius 0.35 n)
    benchmark.extra_info.update(size=n, n_views=n, device=torch.cuda.get_device_name(), impl=impl,
                                gups=n**3 * n / benchmark.stats.stats.min / 1e9,
                                max_err_inner_ball=float((out[inner] - 1.0).abs().max()))
    if impl == "cuda":
        mem = cuda_peak(op, y, g)
        benchmark.extra_info.update({f"mem_{k}": v for k, v in mem.items()})
    else:
        ours = fdk(y, g).reshape(g.vol_shape)
        benchmark.extra_info["rel_diff_vs_unrolled3d"] = float((out[inner] - ours[inner]).norm() / ours[inner].norm())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.u3d_sizes([256, 512], quick=[64])
@pytest.mark.parametrize("impl", ["cuda", "torch_twin"])
def test_cuda_fdk_backprojection(benchmark, impl, n):
    """FDK's backprojection step alone: the CUDA op (one thread per column walking z) against its
    PyTorch twin (grid_sample by chunks of views, FDK's GPU path before the op), same inputs."""
    from unrolled3d.ops.projector_ref import fdk_backproject_raw
    from unrolled3d.physics.fdk import fdk_tables

    g = geometry(n)
    table = fdk_tables(g, "cuda").views.float()
    images = torch.rand((1, g.n_views, *g.det_shape), generator=torch.Generator().manual_seed(0)).cuda()
    args = (images, table, g.vol_geom, *g.vol_shape)
    cuda_op = torch.ops.unrolled3d.fdk_backproject
    op = cuda_op if impl == "cuda" else fdk_backproject_raw
    benchmark.group = f"cuda-fdk-backprojection-{n}"
    benchmark(_sync(op), *args)
    benchmark.extra_info.update(size=n, n_views=n, device=torch.cuda.get_device_name(), impl=impl,
                                gups=n**3 * n / benchmark.stats.stats.min / 1e9)
    if impl == "cuda":
        ref = fdk_backproject_raw(*args)
        benchmark.extra_info["rel_diff_vs_twin"] = float((cuda_op(*args) - ref).norm() / ref.norm())
