"""The streamed branch of :func:`unrolled3d.api.reconstruct`: measurements and volume in stores.

The same rules as in memory (units, the model's normalisation, the scale check, the output in the
input's units), applied to stores through affine views (:class:`~unrolled3d.io.stores.AffineStore`)
instead of multiplying whole arrays; the work itself is :mod:`unrolled3d.partition.streamed`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validation import choice
from ._scan_rules import Reconstruction, check_field_of_view, judge, note, scan_of
from .models.ensemble import ensembled

__all__ = ["reconstruct_streamed_store", "open_measurements_store", "sample_percentile_scale"]


def open_measurements_store(y: Any, geometry_or_physics: Any) -> tuple[Any, Any, dict[str, Any]]:
    """``(y_raw store (n_views, rows, cols), scan, meta)``: a path (measurements store ``.zarr``,
    whose geometry is used or checked; or a ``.npy`` array), a store or an array-like; measurements
    of a normalised physics are seen as raw line integrals (times its ``||A||``)."""
    from .io.scan_stores import open_scan
    from .io.stores import AffineStore, ArrayStore, open_store
    from .partition.streamed import as_store

    meta: dict[str, Any] = {}
    stored_geometry = None
    if isinstance(y, (str, os.PathLike)):
        if str(y).rstrip("/").lower().endswith(".zarr"):
            y, stored_geometry, _, meta = open_scan(y)
        else:
            y = open_store(y)
    if geometry_or_physics is None:
        if stored_geometry is None:
            raise TypeError("geometry_or_physics is needed unless y is a measurements store (.zarr) with its geometry")
        geometry_or_physics = stored_geometry
    scan = scan_of(geometry_or_physics)
    if stored_geometry is not None and stored_geometry != scan.geometry:
        raise ValueError("geometry_or_physics is not the geometry recorded in the measurements store (give None to "
                         "use the store's)")
    if scan.layout != "views":
        raise ValueError("a streamed reconstruction reads measurements in the 'views' layout (n_views, rows, cols)")
    store = as_store(y if isinstance(y, ArrayStore) else ArrayStore(y), "the measurements", scan.geometry.sino_shape)
    if scan.norm is not None:  # a normalised physics' measurements: raw line integrals are ||A|| times them
        store = AffineStore(store, scan.norm)
    return store, scan, meta


def sample_percentile_scale(norm: Any, x0: Any, slab: int) -> tuple[float, np.ndarray]:
    """The percentile normalisation's measurement scale from a regular sample of the FDK store
    ``x0`` (every ``k``-th voxel of the flattened volume, as in memory), and the sample."""
    from .models.scale import SAMPLE_VOXELS

    d, h, w = x0.shape
    step = max(1, (d * h * w) // SAMPLE_VOXELS)
    parts, offset = [], 0
    for z0 in range(0, d, slab):
        s = min(slab, d - z0)
        flat = x0.read((z0, 0, 0), (s, h, w)).reshape(-1)
        parts.append(flat[(-offset) % step::step])
        offset += flat.size
    sample = np.concatenate(parts)
    return norm.measurement_scale(torch.from_numpy(sample)), sample


def _output(out: Any, shape: tuple[int, ...], voxel_size: tuple[float, ...], force: bool) -> tuple[Any, bool]:
    """The output store and whether it is ours to commit (a path) or the caller's (a store)."""
    from .io.stores import ArrayStore, create_store, store_kind

    if out is None:
        raise ValueError("a streamed reconstruction writes into out= (a .zarr or .npy path, or an ArrayStore)")
    if isinstance(out, ArrayStore):
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"out has shape {tuple(out.shape)}, the geometry's volume is {tuple(shape)}")
        return out, False
    from .io.spatial import Spatial

    if store_kind(out) is None:
        raise ValueError(f"out {out}: a streamed reconstruction writes a .zarr store or a .npy file")
    # the voxel size in the Zarr attributes, or in the .npy's sidecar (landed with the data)
    return create_store(out, shape, force=force, spatial=Spatial.from_voxel_size(voxel_size)), True


def reconstruct_streamed_store(y: Any, geometry_or_physics: Any, model: Any, method: str, memory_budget: Any,
                               normal: Any, progress: bool, options: dict[str, Any]) -> Reconstruction:
    """:func:`unrolled3d.api.reconstruct_detailed` of measurements in a store (module docstring)."""
    from .budget import available_bytes, parse_bytes
    from .partition.streamed import slab_depth
    from .physics import ConeBeamCT
    from .physics.norm import norm_from_record

    if options.get("device") not in (None, "cpu") and torch.device(options["device"]).type != "cpu":
        raise ValueError("device: streamed reconstructions run on the CPU for now")
    y, scan, meta = open_measurements_store(y, geometry_or_physics)
    g = scan.geometry
    budget = parse_bytes(memory_budget) if memory_budget is not None else available_bytes("cpu")
    norm = scan.norm or options.get("norm") or norm_from_record(meta.get("operator_norm"), g)
    t0 = time.perf_counter()
    out, ours = None, False
    try:  # the output is made inside: an interrupt at any point after it exists removes it
        out, ours = _output(options.get("out"), g.vol_shape, g.voxel_size, bool(options.get("force", False)))
        if method == "fdk":
            from .partition.streamed import fdk_streamed
            from .physics import FDK_WINDOWS

            physics = ConeBeamCT(g, fdk_window=choice("fdk_window", options.get("fdk_window") or scan.fdk_window,
                                                      FDK_WINDOWS))
            slab = slab_depth(physics, budget)
            note(progress, f"FDK of {g.n_views} views into a {g.vol_shape} volume, {slab} slices at a time")
            fdk_streamed(y, physics, out, slab, budget_bytes=budget)
            result = Reconstruction(out, "fdk", "input", 0.0, {"budget_mib": round(budget / 2**20, 1), "slab": slab})
        else:
            physics = ConeBeamCT(g, normalize=True, norm=norm, fdk_window=scan.fdk_window, progress=progress)
            check_field_of_view(float(physics.operator_norm))
            result = _unrolled_streamed(y, physics, out, model.to("cpu"), budget, normal, progress,
                                        options)
        path = out.commit() if ours else None
    except BaseException:
        if ours and out is not None:  # ours: out was made here (so it exists)
            out.discard()
        raise
    if path is not None:
        from .io.stores import open_store

        result.volume = open_store(path)
    result.seconds = time.perf_counter() - t0
    return result


def _unrolled_streamed(y: Any, physics: Any, out: Any, model: Any, budget: int, normal: Any, progress: bool,
                       options: dict[str, Any]) -> Reconstruction:
    """The streamed partitioned reconstruction with the model's rules (FDK start point in scratch)."""
    from ._scan_rules import normal_operator
    from .io.stores import AffineStore, create_store, settle_pending_writes
    from .models.scale import percentile_of
    from .partition.streamed import fdk_streamed, reconstruct_streamed, slab_depth, streamed_patch

    g = physics.geometry
    slab = slab_depth(physics, budget)
    info: dict[str, Any] = {"budget_mib": round(budget / 2**20, 1), "slab": slab}
    H = normal_operator(normal, physics, torch.device("cpu"))
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(_scratch_folder(out, options.get("scratch")))
        stack.callback(settle_pending_writes)  # first (last in, first out): an interrupted chunk write ends
        x0 = create_store(Path(scratch) / "x0.zarr", g.vol_shape, temporary=False, compressed=False)
        note(progress, f"FDK start point, {slab} slices at a time")
        inv_norm = 1.0 / float(physics.operator_norm)  # the normalised operator's measurements: y / ||A||
        fdk_streamed(AffineStore(y, inv_norm), physics, x0, slab, budget_bytes=budget)  # FDK(y / ||A||)
        scale, sample = sample_percentile_scale(model.normalization, x0, slab)
        check = judge(percentile_of(torch.from_numpy(sample) * scale), model, options.get("scale_check", "check"))
        total = scale * check.factor  # the model's units: y / ||A||, times the percentile and rescale factors
        rec = ensembled(model.reconstructor(g.vol_shape), options.get("self_ensemble", "none"))
        rec = streamed_patch(rec, physics, budget, options.get("patch_size"),
                             amp=options.get("amp"),  # None: bfloat16 where native
                             n_sweeps=options.get("n_sweeps"), overlap=options.get("overlap"))
        info.update(patch=list(rec.patch_shape), n_sweeps=rec.n_sweeps)
        note(progress, f"streamed partitioned reconstruction: {len(rec.patches())} patches of {rec.patch_shape} "
                        f"x {rec.n_sweeps} sweeps")
        units, a, c = "input", 1.0, 0.0
        if options.get("output_units", "input") == "model":  # an affine map to the model's units ("hu": HU)
            norm = model.normalization
            units, c = norm.output_units, float(norm.output(0.0))
            a = float(norm.output(1.0)) - c
        target = AffineStore(out, total / a, -c * total / a)
        torch.set_flush_denormal(True)  # denormals from the blend windows made the demo 5x slower (README)
        with torch.no_grad():
            reconstruct_streamed(rec, AffineStore(y, total * inv_norm), physics, target, normal=H,
                                 memory_budget=budget, x_init=AffineStore(x0, total), scratch=scratch,
                                 progress=progress)
    return Reconstruction(out, "unrolled", units, 0.0, info, check, model.normalization.to_dict(),
                          float(physics.operator_norm))


def _scratch_folder(out: Any, where: Any) -> tempfile.TemporaryDirectory:
    """The scratch folder of a streamed reconstruction: in ``where``, else beside the output, named
    ``.<output name>.scratch-<pid>-...`` so that the next write of that output removes what a
    killed run left (:func:`unrolled3d.io.atomic.remove_stale_leftovers`)."""
    destination = getattr(out, "destination", None)
    name = destination.name if destination is not None else "unrolled3d"
    folder = where or (destination.parent if destination is not None else None)
    return tempfile.TemporaryDirectory(prefix=f".{name}.scratch-{os.getpid()}-", dir=folder)
