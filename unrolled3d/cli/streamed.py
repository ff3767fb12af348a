"""``simulate`` into a Zarr store and ``reconstruct`` from one: scans larger than memory.

``unrolled3d simulate ... --output m.zarr`` voxelises (or reads) the volume slab by slab, writes it
as the store's ``x_true`` and sums the slabs' projections into the measurements
(:mod:`unrolled3d.io.scan_stores`). ``unrolled3d reconstruct m.zarr --output x.zarr`` (or
``x.npy``) streams: FDK slab by slab, and the unrolled method through
:func:`unrolled3d.partition.streamed.reconstruct_streamed`, with the slabs and the patch sized to
``--memory-budget`` (default: half of the memory available).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .._validation import check_finite
from .output import emit

__all__ = ["simulate_store", "reconstruct_store", "is_store_path"]


def is_store_path(path: str | None) -> bool:
    """Whether a command's input or output names a Zarr store (streamed work)."""
    return path is not None and str(path).rstrip("/").lower().endswith(".zarr")


def _note(args: argparse.Namespace, text: str) -> None:
    import sys

    if not (args.quiet or args.json):
        print(f"{text} ...", file=sys.stderr, flush=True)


def simulate_store(args: argparse.Namespace, geometry, slab_source: Callable[[int, int], torch.Tensor],
                   noise: float, source: dict) -> int:
    """Write the volume (slab by slab) and its noisy measurements into a new Zarr store."""
    from ..io.scan_stores import create_scan
    from ..partition.streamed import slab_depth
    from ..physics import ConeBeamCT

    physics = ConeBeamCT(geometry)
    scan = create_scan(args.out, geometry, with_truth=True, meta={**source, "noise": noise}, force=args.force)
    try:
        y = torch.zeros(geometry.sino_shape, dtype=torch.float32)
        d = geometry.vol_shape[0]
        step = slab_depth(physics, 256 * 2**20)  # slab buffers of at most 256 MiB
        for z0 in range(0, d, step):
            s = min(step, d - z0)
            x = slab_source(z0, s).to(torch.float32)
            check_finite(x, "the volume")
            scan.x_true.write((z0, 0, 0), x)
            op = physics.slab(z0, s)
            y[:, op.row0:op.row0 + op.geometry.det_shape[0], :] += op.A(x[None, None])[0, 0]
        # the same draws as the in-memory path ([1, 1, V, R, C] and (V, R, C) hold them in one order)
        y += noise * float(y.max()) * torch.randn(y.shape, generator=torch.Generator().manual_seed(args.seed))
        scan.y.write((0, 0, 0), y)
        path = scan.commit()
    except BaseException:
        scan.discard()
        raise
    emit(args, {"out": str(path), "sino_shape": [1, 1, *geometry.sino_shape], "store": "zarr"},
         f"wrote {path}: measurements (1, 1, {', '.join(map(str, geometry.sino_shape))}) and the volume (Zarr)")
    return 0


def _output_store(args: argparse.Namespace, shape, voxel_size):
    from ..io.stores import create_store, store_kind

    kind = store_kind(args.out)
    if kind is None:
        raise ValueError(f"--output {args.out}: a streamed reconstruction writes a .zarr store or a .npy file")
    attrs = {"voxel_size": list(voxel_size), "axes": "zyx", "unit": "mm"} if kind == "zarr" else None
    return create_store(args.out, shape, attrs=attrs, force=args.force)


def _streamed_psnr(x, truth) -> float:
    """PSNR of the store ``x`` against the store ``truth`` (peak: the truth's range), a slice at a
    time (float32 differences, float64 sums: two slices of memory)."""
    d, h, w = truth.shape
    sq, lo, hi = 0.0, math.inf, -math.inf
    for z in range(d):
        t = truth.read((z, 0, 0), (1, h, w))
        diff = x.read((z, 0, 0), (1, h, w))
        lo, hi = min(lo, float(t.min())), max(hi, float(t.max()))
        diff -= t
        sq += float(np.dot(diff.ravel(), diff.ravel()))
    mse = sq / (d * h * w)
    return math.inf if mse == 0 else 10 * math.log10((hi - lo) ** 2 / mse)


def _sample_scale(norm, x0, slab: int) -> float:
    """The percentile normalisation's measurement scale from a regular sample of the FDK store."""
    from ..data.normalization import SAMPLE_VOXELS

    d, h, w = x0.shape
    step = max(1, (d * h * w) // SAMPLE_VOXELS)
    parts, offset = [], 0
    for z0 in range(0, d, slab):  # every step-th voxel of the flattened volume, as the in-memory path
        s = min(slab, d - z0)
        flat = x0.read((z0, 0, 0), (s, h, w)).reshape(-1)
        parts.append(flat[(-offset) % step::step])
        offset += flat.size
    return norm.measurement_scale(torch.from_numpy(np.concatenate(parts)))


def reconstruct_store(args: argparse.Namespace, load_unrolled) -> int:
    """``reconstruct`` of a Zarr measurements store (or into a Zarr/.npy output), streamed.

    ``load_unrolled(args, vol_shape) -> (rec, norm)`` builds the model as the in-memory path does.
    """
    from ..budget import available_bytes, parse_bytes
    from ..io import check_not_input
    from ..io.scan_stores import open_scan
    from ..io.stores import AffineStore, create_store
    from ..partition.streamed import fdk_streamed, reconstruct_streamed, slab_depth, streamed_patch
    from ..physics import ConeBeamCT

    check_not_input([args.out], [args.measurements, args.weights, args.normal])
    if args.device != "cpu":
        raise ValueError("--device: streamed reconstructions run on the CPU for now")
    y, g, x_true, _ = open_scan(args.measurements)
    budget = parse_bytes(args.memory_budget) if args.memory_budget is not None else available_bytes("cpu")
    unrolled = args.method == "unrolled"
    physics = ConeBeamCT(g, normalize=unrolled)
    slab = slab_depth(physics, budget)
    out = _output_store(args, g.vol_shape, g.voxel_size)
    info: dict = {"budget_mib": round(budget / 2**20, 1), "slab": slab}
    t0 = time.perf_counter()
    stack = contextlib.ExitStack()
    try:
        if not unrolled:
            _note(args, f"FDK of {g.n_views} views into a {g.vol_shape} volume, {slab} slices at a time")
            fdk_streamed(y, physics, out, slab, budget_bytes=budget)
        else:
            rec, norm = load_unrolled(args, g.vol_shape)
            scratch = tempfile.TemporaryDirectory(prefix=f".{Path(args.out).name}.scratch-", dir=Path(args.out).parent)
            stack.callback(scratch.cleanup)
            x0 = create_store(Path(scratch.name) / "x0.zarr", g.vol_shape, temporary=False, compressed=False)
            _note(args, f"FDK start point, {slab} slices at a time")
            inv_norm = 1.0 / float(physics.operator_norm)  # the normalised operator's measurements: y / ||A||
            fdk_streamed(AffineStore(y, inv_norm), physics, x0, slab, budget_bytes=budget)  # FDK(y) in attenuation units
            scale = _sample_scale(norm, x0, slab) if norm.needs_sample else 1.0
            # the model's units: y / ||A|| (the normalised operator), times the percentile scale
            y_n = AffineStore(y, scale * inv_norm)
            start = AffineStore(x0, scale)
            rec = streamed_patch(rec, physics, budget, args.patch_size,
                                 amp=None if args.precision == "auto" else args.precision == "bfloat16")
            info.update(patch=list(rec.patch_shape), n_sweeps=rec.n_sweeps)
            _note(args, f"streamed partitioned reconstruction: {len(rec.patches())} patches of {rec.patch_shape} "
                        f"x {rec.n_sweeps} sweeps")
            u = float(norm.output(1.0)) - float(norm.output(0.0))  # "hu": an affine map to the output units
            target = AffineStore(out, scale / u, -float(norm.output(0.0)) * scale / u)
            with torch.no_grad():
                reconstruct_streamed(rec, y_n, physics, target, memory_budget=budget, x_init=start,
                                     scratch=scratch.name, progress=not (args.quiet or args.json))
        path = out.commit()
    except BaseException:
        out.discard()
        raise
    finally:
        stack.close()
    if str(path).endswith(".npy"):
        from ..io.volumes import write_npy_sidecar

        write_npy_sidecar(path, g.voxel_size, g.vol_shape, force=args.force)
    seconds = time.perf_counter() - t0
    payload = {"out": str(path), "seconds": round(seconds, 3), "method": args.method, "streamed": True, **info}
    if x_true is not None:
        from ..io.stores import open_store

        payload["psnr"] = _streamed_psnr(open_store(path), x_true)
    emit(args, payload, f"wrote {path} ({args.method}, streamed, {seconds:.1f} s"
                        + (f", PSNR {payload['psnr']:.2f} dB)" if "psnr" in payload else ")"))
    return 0
