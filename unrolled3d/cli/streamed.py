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
import math
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
                   noise: dict, source: dict) -> int:
    """Write the volume (slab by slab) and its noisy measurements into a new Zarr store (``noise``:
    ``{"noise_std": ...}`` or ``{"relative": ...}``, :func:`unrolled3d.physics.noise.scan_noise`)."""
    from ..io.scan_stores import create_scan
    from ..partition.streamed import slab_depth
    from ..physics import ConeBeamCT
    from ..physics.noise import scan_noise

    physics = ConeBeamCT(geometry)
    meta = {**source, "noise": noise}  # replaced by the noise's full record once the scan is known
    scan = None
    try:  # the store is made inside: an interrupt at any point after it exists removes it
        scan = create_scan(args.out, geometry, with_truth=True, meta=meta, force=args.force)
        truth = scan.x_true
        assert truth is not None  # with_truth=True
        y = torch.zeros(geometry.sino_shape, dtype=torch.float32)
        d = geometry.vol_shape[0]
        step = slab_depth(physics, 256 * 2**20)  # slab buffers of at most 256 MiB
        for z0 in range(0, d, step):
            s = min(step, d - z0)
            x = slab_source(z0, s).to(torch.float32)
            check_finite(x, "the volume")
            truth.write((z0, 0, 0), x)
            op = physics.slab(z0, s)
            y[:, op.row0:op.row0 + op.geometry.det_shape[0], :] += op.A(x[None, None])[0, 0]
        # the same draws as the in-memory path ([1, 1, V, R, C] and (V, R, C) hold them in one order)
        raw_std, record = scan_noise(geometry, float(y.max()), **noise, progress=not (args.quiet or args.json))
        y += raw_std * torch.randn(y.shape, generator=torch.Generator().manual_seed(args.seed))
        scan.y.write((0, 0, 0), y)
        scan.set_meta({**source, **record})
        path = scan.commit()
    except BaseException:
        if scan is not None:
            scan.discard()
        raise
    emit(args, {"out": str(path), "sino_shape": [1, 1, *geometry.sino_shape], "store": "zarr"},
         f"wrote {path}: measurements (1, 1, {', '.join(map(str, geometry.sino_shape))}) and the volume (Zarr)")
    return 0


def _output_store(args: argparse.Namespace, shape, spatial):
    """The output store: Zarr attributes or the ``.npy`` sidecar (written with the data) carry
    the voxel size and the input volume's affine."""
    from ..io.stores import create_store, store_kind

    kind = store_kind(args.out)
    if kind is None:
        raise ValueError(f"--output {args.out}: a streamed reconstruction writes a .zarr store or a .npy file")
    return create_store(args.out, shape, force=args.force, spatial=spatial)


def _streamed_psnr(x, truth, convert: Callable[[np.ndarray], np.ndarray] = lambda v: v) -> float:
    """PSNR of the store ``x`` (its slices through ``convert``) against the store ``truth`` (peak:
    the truth's range), a slice at a time (float32 differences, float64 sums: two slices of memory)."""
    d, h, w = truth.shape
    sq, lo, hi = 0.0, math.inf, -math.inf
    for z in range(d):
        t = truth.read((z, 0, 0), (1, h, w))
        diff = np.asarray(convert(x.read((z, 0, 0), (1, h, w))), dtype=np.float32)
        lo, hi = min(lo, float(t.min())), max(hi, float(t.max()))
        diff -= t
        sq += float(np.dot(diff.ravel(), diff.ravel()))
    mse = sq / (d * h * w)
    return math.inf if mse == 0 else 10 * math.log10((hi - lo) ** 2 / mse)


def reconstruct_store(args: argparse.Namespace) -> int:
    """``reconstruct`` of a Zarr measurements store (or into a Zarr/.npy output), streamed: the
    files around :func:`unrolled3d.api.reconstruct_detailed`, which applies the rules."""
    from ..api import reconstruct_detailed
    from ..io import check_not_input
    from ..io.scan_stores import open_scan
    from .scan_files import known_norm, output_spatial

    check_not_input([args.out], [args.measurements, args.weights, args.normal])
    if args.device != "cpu":
        raise ValueError("--device: streamed reconstructions run on the CPU for now")
    y, g, x_true, meta = open_scan(args.measurements)
    spatial = output_spatial(meta, g, args.measurements)  # the input volume's affine, written back
    unrolled = args.method == "unrolled"
    show = not (args.quiet or args.json)
    norm = known_norm(meta, g, args.measurements, unrolled, "cpu", show)
    out = None
    try:  # the output is made inside: an interrupt at any point after it exists removes it
        out = _output_store(args, g.vol_shape, spatial)
        result = reconstruct_detailed(
            y, g, model=args.weights if unrolled else None, method=args.method, memory_budget=args.memory_budget,
            normal=args.normal, progress=show, out=out,
            patch_size=args.patch_size if unrolled else None, norm=norm,
            output_units="model", scale_check=getattr(args, "scale_check", "check"),
            fdk_window=getattr(args, "fdk_window", None),
            precision=getattr(args, "precision", "auto") if unrolled else None,
            n_sweeps=args.sweeps if unrolled else None, overlap=args.overlap if unrolled else None,
            self_ensemble=getattr(args, "self_ensemble", "none"))
        path = out.commit()
    except BaseException:
        if out is not None:
            out.discard()
        raise
    payload = {"out": str(path), "seconds": round(result.seconds, 3), "method": args.method, "streamed": True,
               **(result.plan or {})}
    if unrolled:
        payload.update(normalization=result.normalization, units=result.model_units,
                       scale_check=result.scale.to_dict() if result.scale else None)
    if getattr(args, "preview", None) is not None:  # three planes read from the written store
        from ..io.stores import open_store
        from .preview import write_preview

        units = "attenuation (1/mm)" if not unrolled else result.model_units
        assert units is not None  # an unrolled result records its model's normalization (its units)
        payload["preview"] = str(write_preview(args, open_store(path), g.vol_shape, units))
    if x_true is not None:
        from ..io.stores import open_store

        # in the measurements' units: a "hu" model's output (in HU) is compared after the inverse map
        payload["psnr"] = _streamed_psnr(open_store(path), x_true, result.to_input_units)
    emit(args, payload, f"wrote {path} ({args.method}, streamed, {result.seconds:.1f} s"
                        + (f", PSNR {payload['psnr']:.2f} dB)" if "psnr" in payload else ")"))
    return 0
