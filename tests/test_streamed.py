"""Streamed reconstruction (``unrolled3d.partition.streamed``) against the in-memory one.

Independent truth: the in-memory :class:`PartitionedReconstructor` sweep and FDK, which hold
every volume whole. The streamed path visits the same patches in the same order with the same
operators, so the two agree to float32 rounding (the slab sums of the projection and FDK's
per-slab bands change only the order of additions): tolerances are a few float32 ulps of the
volume's range (1e-5 relative).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unrolled3d.cli import main
from unrolled3d.io.scan_stores import open_scan
from unrolled3d.io.stores import ArrayStore, create_store, open_store
from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.normal import DiagCirculantNormal
from unrolled3d.normal.fit import init_from_psf
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.partition.streamed import fdk_streamed, reconstruct_streamed, residual_streamed, streamed_patch
from unrolled3d.physics import ConeBeamCT, standard_cone_beam

N = 20


def _problem(n: int = N, views: int = 12):
    torch.manual_seed(0)
    physics = ConeBeamCT(standard_cone_beam(n, views), normalize=True)
    x = torch.rand(1, 1, n, n, n)
    y = physics.A(x) + 0.01 * torch.randn(1, 1, *physics.geometry.sino_shape)
    base = UnrolledPGD(UNet3D(base=4, depth=1), n_iter=2).eval()
    return physics, x, y, base


def _close(a, b) -> None:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("slab", [3, 7, N])
def test_fdk_and_residual_slab_by_slab_equal_the_whole(slab):
    physics, x, y, _ = _problem()
    out = np.zeros((N,) * 3, np.float32)
    fdk_streamed(ArrayStore(y[0, 0].numpy()), physics, ArrayStore(out), slab)
    _close(out, physics.A_dagger(y)[0, 0])
    r = np.zeros(physics.geometry.sino_shape, np.float32)
    residual_streamed(ArrayStore(y[0, 0].numpy()), physics, ArrayStore(x[0, 0].numpy()), ArrayStore(r), slab)
    _close(r, (y - physics.A(x))[0, 0])


@pytest.mark.parametrize("sweeps", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mode", ["exact", "H"])
def test_streamed_unrolled_equals_in_memory(mode, batch, sweeps):
    physics, _, y, base = _problem()
    rec = PartitionedReconstructor(base, (N,) * 3, (8, 8, 8), n_sweeps=sweeps, patch_batch_size=batch)
    normal = init_from_psf(DiagCirculantNormal.for_physics(physics, (N,) * 3), physics) if mode == "H" else None
    with torch.no_grad():
        ref = rec(y, physics, normal=normal)
        out = np.zeros((N,) * 3, np.float32)
        reconstruct_streamed(rec, y[0, 0].numpy(), physics, out, normal=normal, memory_budget=300_000)
    _close(out, ref[0, 0])


@pytest.mark.parametrize("kind", ["zarr", "npy"])
def test_streamed_through_files_equals_in_memory(tmp_path, kind):
    physics, _, y, base = _problem()
    rec = PartitionedReconstructor(base, (N,) * 3, (10, 10, 10))
    np.save(tmp_path / "y.npy", y[0, 0].numpy())
    out = create_store(tmp_path / f"x.{kind}", (N,) * 3)
    with torch.no_grad():
        reconstruct_streamed(rec, open_store(tmp_path / "y.npy"), physics, out, scratch=tmp_path / "scratch")
        ref = rec(y, physics)
    final = out.commit()
    _close(open_store(final).read((0, 0, 0), (N,) * 3), ref[0, 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["y.npy", f"x.{kind}", "scratch"])


def _ranks(rank: int, world: int, port: str, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        physics, _, y, base = _problem()
        rec = PartitionedReconstructor(base, (N,) * 3, (8, 8, 8), n_sweeps=2)
        out = np.zeros((N,) * 3, np.float32)
        with torch.no_grad():
            reconstruct_streamed(rec, y[0, 0].numpy(), physics, out, memory_budget=300_000)
        if rank == 0:
            np.save(os.path.join(folder, "two_ranks.npy"), out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_the_patches_and_agree_with_one(tmp_path):
    port = str(29500 + os.getpid() % 1000)
    mp.spawn(_ranks, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    physics, _, y, base = _problem()
    rec = PartitionedReconstructor(base, (N,) * 3, (8, 8, 8), n_sweeps=2)
    with torch.no_grad():
        ref = rec(y, physics)
    _close(np.load(tmp_path / "two_ranks.npy"), ref[0, 0])


def test_cli_streams_zarr_scans_like_the_in_memory_path(tmp_path, capsys):
    """simulate into .pt and .zarr: the same scan; reconstruct both: the same volume."""
    weights = os.path.join(os.path.dirname(__file__), "..", "unrolled3d", "weights", "demo_ct.pt")
    for name in ("m.pt", "m.zarr"):
        assert main(["simulate", "--size", "24", "--views", "12", "--output", str(tmp_path / name), "--quiet"]) == 0
    y_pt, g_pt, x_pt, _ = open_scan(tmp_path / "m.pt")
    y_z, g_z, x_z, _ = open_scan(tmp_path / "m.zarr")
    assert g_pt == g_z
    _close(y_z.read((0, 0, 0), y_z.shape), y_pt.read((0, 0, 0), y_pt.shape))
    _close(x_z.read((0, 0, 0), x_z.shape), x_pt.read((0, 0, 0), x_pt.shape))
    results = {}
    for src, out in (("m.pt", "a.npy"), ("m.zarr", "b.zarr"), ("m.zarr", "c.npy")):
        assert main(["reconstruct", str(tmp_path / src), "--method", "unrolled", "--weights", weights,
                     "--patch-size", "12", "--precision", "float32", "--out", str(tmp_path / out), "--json"]) == 0
        results[out] = json.loads(capsys.readouterr().out)
    a = np.load(tmp_path / "a.npy")
    for out in ("b.zarr", "c.npy"):
        _close(open_store(tmp_path / out).read((0, 0, 0), a.shape), a)
        assert results[out]["streamed"] and abs(results[out]["psnr"] - results["a.npy"]["psnr"]) < 1e-3
    # the .npy output has its voxel-size sidecar, the Zarr output its attributes
    assert json.loads((tmp_path / "c.json").read_text())["voxel_size_zyx_mm"] == [1.0, 1.0, 1.0]
    assert open_store(tmp_path / "b.zarr").attrs["voxel_size"] == [1.0, 1.0, 1.0]


def test_bad_stores_and_budgets_give_one_clear_error(tmp_path, capsys):
    physics, _, y, base = _problem()
    rec = PartitionedReconstructor(base, (N,) * 3, (8, 8, 8))
    with pytest.raises(ValueError, match=r"the measurements.* has shape \(12, 25, 31\), the geometry needs \(12, 25, 30\)"):
        reconstruct_streamed(rec, np.zeros((12, 25, 31), np.float32), physics, np.zeros((N,) * 3, np.float32))
    with pytest.raises(ValueError, match="the output.* has shape"):
        reconstruct_streamed(rec, y[0, 0].numpy(), physics, np.zeros((N, N, N - 1), np.float32))
    with pytest.raises(ValueError, match="memory budget .* too small"):
        reconstruct_streamed(rec, y[0, 0].numpy(), physics, np.zeros((N,) * 3, np.float32), memory_budget=1000)
    # a measurements store whose array does not match its geometry: one line naming the file
    assert main(["simulate", "--size", "16", "--views", "6", "--output", str(tmp_path / "m.zarr"), "--quiet"]) == 0
    import zarr
    zarr.open_group(str(tmp_path / "m.zarr"), mode="a").create_array("y", shape=(6, 5, 5), dtype="float32",
                                                                       overwrite=True)
    assert main(["reconstruct", str(tmp_path / "m.zarr"), "--out", str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.zarr" in err[0] and "'y' has shape (6, 5, 5)" in err[0]
    assert not (tmp_path / "x.zarr").exists() and not any(p.name.startswith(".x.zarr") for p in tmp_path.iterdir())
    # a budget too small for one slab of the volume
    assert main(["simulate", "--size", "16", "--views", "6", "--output", str(tmp_path / "n.zarr"), "--quiet"]) == 0
    assert main(["reconstruct", str(tmp_path / "n.zarr"), "--out", str(tmp_path / "x.zarr"),
                 "--memory-budget", "1k"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "memory budget" in err[0] and "too small" in err[0]
    # an existing output is not replaced without --force
    (tmp_path / "y.zarr").mkdir()
    assert main(["reconstruct", str(tmp_path / "n.zarr"), "--out", str(tmp_path / "y.zarr")]) == 2
    assert "not a Zarr store" in capsys.readouterr().err


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from unrolled3d.cli import main
    from unrolled3d.memory import reset_peak_rss, status_bytes, trim_heap
    torch.set_num_threads(1)
    scan, out, budget = sys.argv[1:4]
    # warm up the code paths (libraries, FFT plans) on a small scan first: the figure is the big one's
    main(["reconstruct", sys.argv[4], "--out", sys.argv[5], "--memory-budget", budget, "--quiet"])
    trim_heap()
    before = status_bytes("VmRSS")
    assert reset_peak_rss()
    code = main(["reconstruct", scan, "--out", out, "--memory-budget", budget, "--quiet"])
    print(json.dumps({"code": code, "peak": status_bytes("VmHWM") - before}))
""")


@pytest.mark.slow
def test_streamed_reconstruction_stays_within_the_budget(tmp_path):
    """A fresh process reconstructs (FDK, streamed) a scan whose volume and measurements are 4x
    the budget: its resident memory grows by at most the budget + 15 %."""
    for name, size in (("small.zarr", 24), ("big.zarr", 256)):
        assert main(["simulate", "--size", str(size), "--views", "8", "--output", str(tmp_path / name),
                     "--quiet"]) == 0
    y, g, _, _ = open_scan(tmp_path / "big.zarr")
    data = y.nbytes + 4 * np.prod(g.vol_shape)
    budget = int(data / 4)
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path / "big.zarr"), str(tmp_path / "x.zarr"),
                           str(budget / 2**20) + "M", str(tmp_path / "small.zarr"), str(tmp_path / "s.zarr")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["code"] == 0
    assert res["peak"] <= 1.15 * budget, f"peak {res['peak'] / 2**20:.1f} MiB for a {budget / 2**20:.1f} MiB budget"


def test_patched_defaults_are_shared_by_the_planner_the_stream_and_the_cli(tmp_path):
    """One rule for patches: a quarter of the edge shared, one sweep (in memory, streamed, CLI)."""
    from unrolled3d.budget import PATCHED_OVERLAP, PATCHED_SWEEPS, patched_stride

    assert (PATCHED_OVERLAP, PATCHED_SWEEPS) == (0.25, 1)
    assert patched_stride((64, 48, 12)) == (48, 36, 9)
    assert patched_stride((8,), 0.0) == (8,) and patched_stride((8,), 0.5) == (4,)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="overlap"):
            patched_stride((8,), bad)
    physics, _, _, base = _problem()
    rec = PartitionedReconstructor(base, (N,) * 3, (8, 8, 8), n_sweeps=2)
    streamed = streamed_patch(rec, physics, 2**40, patch_size=8)
    assert (streamed.patch_shape, streamed.stride, streamed.n_sweeps) == ((8,) * 3, (6,) * 3, 1)
    streamed = streamed_patch(rec, physics, 2**40, patch_size=8, n_sweeps=2, overlap=0.5)
    assert (streamed.stride, streamed.n_sweeps) == ((4,) * 3, 2)
    whole = streamed_patch(rec, physics, 2**40)
    assert (whole.patch_shape, whole.n_sweeps) == ((N,) * 3, 1)
