r"""Partitioned reconstruction of volumes larger than memory: every volume streamed through stores.

The in-memory :meth:`PartitionedReconstructor.forward <unrolled3d.partition.PartitionedReconstructor.forward>`
holds the measurements, the start point, the estimate and the blended sums whole. Here they are
:class:`~unrolled3d.io.stores.ArrayStore` s (Zarr, ``.npy`` or in-memory arrays) read and written
region by region, so that the resident memory follows the slab and the patch, not the volume:

1. the start point ``x0 = FDK(y)`` is written slab by slab: a slab's FDK reads only the band of
   detector rows its shadow reaches (:meth:`unrolled3d.physics.ConeBeamCT.slab`; exact, the
   ramp filter runs along rows);
2. each sweep forms the residual ``r = y - A x_ctx`` slab by slab (projection is linear: the
   full projection is the sum of the slabs', each on its band of rows);
3. each patch reads its context and start point from the volume stores and its data
   ``crop(r)`` from the residual's detector windows (:class:`~unrolled3d.physics.ConeBeamPatch`),
   is solved by the base model, and adds ``w x_p`` and ``w`` into the sweep's blended-sum and
   weight stores;
4. the sweep's estimate ``sum w x_p / sum w`` is written slab by slab, into the output store after
   the last sweep.

The patches, their order, the windows and the base calls are those of the in-memory sweep (H mode
too, with the patch's ``S A^T r`` read from its windows), so both give the same volume up to
float32 rounding (``tests/test_streamed.py``). With ``torch.distributed`` initialised, ranks share
the patch list; each rank adds into its own sums and rank 0 adds them up.

Only a cone-beam CT physics (:class:`~unrolled3d.physics.ConeBeamCT`, batch and channel 1) streams.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .._distributed import rank_and_world
from .._validation import integer
from ..io.stores import ArrayStore, create_store
from ..physics import ConeBeamCT
from .grid import blend_window
from .plan import group_physics, patch_operator, resolve_normal

__all__ = ["reconstruct_streamed", "fdk_streamed", "residual_streamed", "read_windows", "as_store",
           "slab_depth", "fdk_tile", "streamed_patch", "streamed_patch_peak"]


def as_store(array: Any, name: str, shape: Sequence[int] | None = None) -> ArrayStore:
    """``array`` as an :class:`ArrayStore` (itself if it is one), checked against ``shape``."""
    store = array if isinstance(array, ArrayStore) else ArrayStore(array)
    if shape is not None and store.shape != tuple(shape):
        where = f" ({store.path})" if store.path is not None else ""
        raise ValueError(f"{name}{where} has shape {store.shape}, the geometry needs {tuple(shape)}")
    return store


#: bytes FDK's voxel-driven backprojection holds per voxel of a slice and per view of a chunk of
#: up to 8 views (coordinates, weights, samples; measured: 10.7 MiB for a 160^2 slice and 8 views)
_FDK_BYTES_PER_VOXEL_VIEW = 56


def slab_depth(physics: ConeBeamCT, budget_bytes: int | None) -> int:
    """Slices per slab so that a slab's buffers take at most half of ``budget_bytes`` (all
    slices when ``None``; the other half is FDK's tile, :func:`fdk_tile`).

    A slab step holds the slab (``s H W`` floats) and its projection or measurements on the band
    of rows it reaches (``V h C``, ``h`` growing with ``s``; FDK filters it padded to twice the
    columns, complex): about ``s H W + 12 V h C`` floats, costed at the largest band (the top or
    bottom slab's, where the cone is widest).
    """
    d, h, w = physics.img_shape
    if budget_bytes is None:
        return d
    views, rows, cols = physics.geometry.sino_shape
    for s in range(d, 0, -1):
        bands = [physics.geometry.shadow_bounds((z0, 0, 0), (s, h, w)) for z0 in (0, d - s)]
        height = max(int(b[:, 1].max() - b[:, 0].min() + 1) for b in bands)
        if 4 * (s * h * w + 12 * views * max(height, 1) * cols) <= budget_bytes // 2:
            return s
    raise ValueError(f"the memory budget {budget_bytes / 2**20:.1f} MiB is too small for even one slice of the "
                     f"volume {physics.img_shape} with its band of {views} views")


def fdk_tile(physics: ConeBeamCT, slab: int, budget_bytes: int | None) -> int:
    """The in-plane edge of the tiles a slab's FDK is computed in, so that FDK's buffers take at
    most half of ``budget_bytes`` (the whole slice when ``None`` or when it fits)."""
    d, h, w = physics.img_shape
    views = min(physics.geometry.n_views, 8)
    if budget_bytes is None:
        return max(h, w)
    per_voxel = _FDK_BYTES_PER_VOXEL_VIEW * views + 4 * slab
    edge = int(math.isqrt(max(0, budget_bytes // 2 // per_voxel)))
    if edge < 4:
        raise ValueError(f"the memory budget {budget_bytes / 2**20:.1f} MiB is too small for FDK of even a "
                         f"4 x 4 tile of the volume {physics.img_shape}")
    return min(edge, max(h, w))


def _slabs(depth: int, step: int) -> Iterator[tuple[int, int]]:
    for z0 in range(0, depth, step):
        yield z0, min(step, depth - z0)


def _tensor(block: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(block).to(device=device, dtype=dtype)[None, None]


def fdk_streamed(y: ArrayStore, physics: ConeBeamCT, out: ArrayStore, slab: int, dtype: torch.dtype = torch.float32,
                 window: str | None = None, progress: Callable[[int], object] | None = None,
                 budget_bytes: int | None = None) -> None:
    """``out = physics.A_dagger(y)`` (FDK, in the physics' units) written slab by slab.

    Parameters
    ----------
    y : ArrayStore
        Measurements ``(n_views, rows, cols)`` (the ``"views"`` layout).
    physics : ConeBeamCT
    out : ArrayStore
        ``(D, H, W)``, written.
    slab : int
        Slices per slab (:func:`slab_depth`).
    budget_bytes : int, optional
        FDK's share of the memory: a slab is reconstructed in in-plane tiles (:func:`fdk_tile`)
        when a whole slice's FDK would not fit.
    """
    device = physics.operator_norm.device
    d, h, w = physics.img_shape
    edge = fdk_tile(physics, slab, budget_bytes)
    for z0, s in _slabs(d, slab):
        op = physics.slab(z0, s)
        views, rows, cols = op.geometry.sino_shape
        band = _tensor(y.read((0, op.row0, 0), (views, rows, cols)), dtype, device)
        if edge >= max(h, w):
            out.write((z0, 0, 0), op.fbp(band, window=window)[0, 0])
        else:  # FDK is voxel-driven: a tile's FDK is the crop of the slab's
            for y0 in range(0, h, edge):
                for x0 in range(0, w, edge):
                    tile = op._sub_volume((0, y0, x0), (s, min(edge, h - y0), min(edge, w - x0)))
                    out.write((z0, y0, x0), tile.fbp(band, window=window)[0, 0])
        if progress is not None:
            progress(s)


def residual_streamed(y: ArrayStore, physics: ConeBeamCT, x: ArrayStore, out: ArrayStore, slab: int,
                      dtype: torch.dtype = torch.float32, progress: Callable[[int], object] | None = None) -> None:
    """``out = y - A x``, the projection summed slab by slab (each on its band of detector rows)."""
    device = physics.operator_norm.device
    views = y.shape[0]
    for v0, n in _slabs(views, max(1, views // 8)):  # copy y in parts (its size is the measurements')
        out.write((v0, 0, 0), y.read((v0, 0, 0), (n, *y.shape[1:])))
    d, h, w = physics.img_shape
    for z0, s in _slabs(d, slab):
        op = physics.slab(z0, s)
        proj = op.A(_tensor(x.read((z0, 0, 0), (s, h, w)), dtype, device))[0, 0]
        out.add((0, op.row0, 0), -proj.cpu())
        if progress is not None:
            progress(s)


def read_windows(store: ArrayStore, window) -> np.ndarray:
    """The per-view detector windows of measurements ``(n_views, rows, cols)`` in ``store``:
    ``(n_views, h, w)`` (:class:`~unrolled3d.geometry.DetectorWindow`)."""
    h, w = window.shape
    out = np.empty((len(window.row0), h, w), dtype=np.float32)
    for v, (r0, c0) in enumerate(zip(window.row0, window.col0)):
        out[v] = store.read((v, r0, c0), (1, h, w))[0]
    return out


class _Sweep:
    """One streamed sweep's stores and patch loop (see the module docstring)."""

    def __init__(self, rec, physics: ConeBeamCT, normal, y: ArrayStore, scratch: Path, slab: int,
                 dtype: torch.dtype, bar) -> None:
        self.rec, self.physics, self.normal, self.y = rec, physics, normal, y
        self.scratch, self.slab, self.dtype, self.bar = scratch, slab, dtype, bar
        self.device = physics.operator_norm.device
        self.rank, self.world = rank_and_world()
        self.window = blend_window(rec.patch_shape, rec.stride, dtype=dtype, device=self.device)
        self.patches = rec.patches()[self.rank::self.world]

    def scratch_store(self, name: str, shape: Sequence[int]) -> ArrayStore:
        chunks = (*[min(n, 64) for n in shape],)
        return create_store(self.scratch / f"{name}.zarr", shape, chunks=chunks, temporary=False, compressed=False,
                            force=True)

    def patch_data(self, residual: ArrayStore, offsets, ctx: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """The group's physics and its data: ``crop(r)`` (exact) or ``S A^T r`` (H mode), stacked."""
        shape = self.rec.patch_shape
        exact = [self.physics.restrict(o, shape) for o in offsets]
        windows = [_tensor(read_windows(residual, op.window), self.dtype, self.device) for op in exact]
        if self.normal is None:
            group = group_physics(exact, None)
            data = windows[0] if len(exact) == 1 else group.stack_measurements(windows)
            return group, data
        ops = [patch_operator(self.physics, self.normal, self.rec.img_shape, o, shape) for o in offsets]
        self.normal.refresh(ops)  # the patch operators see H's current parameters
        data = torch.cat([op.A_adjoint(win) for op, win in zip(exact, windows)])
        return group_physics(ops, self.normal), data

    def solve(self, residual: ArrayStore, context: ArrayStore, first: ArrayStore, sums: ArrayStore,
              weights: ArrayStore) -> None:
        """Solve this rank's patches, adding ``w x_p`` into ``sums`` and ``w`` into ``weights``."""
        rec, shape = self.rec, self.rec.patch_shape
        size = rec.patch_batch_size
        w = self.window.cpu().numpy()
        for i in range(0, len(self.patches), size):
            offsets = self.patches[i:i + size]
            ctx = torch.cat([_tensor(context.read(o, shape), self.dtype, self.device) for o in offsets])
            start = ctx if rec.sweep_start == "current" else torch.cat(
                [_tensor(first.read(o, shape), self.dtype, self.device) for o in offsets])
            group, data = self.patch_data(residual, offsets, ctx)
            x_g = rec.solve_patches(group, len(offsets), data, ctx, start, self.normal, cropped=True)
            for o, x_p in zip(offsets, x_g.detach().cpu().chunk(len(offsets))):
                sums.add(o, x_p[0, 0].numpy() * w)
                weights.add(o, w)
            if self.bar is not None:
                self.bar.update(len(offsets))

    def blend(self, sums: ArrayStore, weights: ArrayStore, out: ArrayStore | None) -> None:
        """``out = sums / weights`` slab by slab (rank 0, after adding the other ranks' sums; the
        other ranks pass ``None``)."""
        d, h, w = self.rec.img_shape
        if self.world > 1:
            dist.barrier()
        if self.rank == 0:
            assert out is not None  # rank 0 blends into the output or its scratch store, never None
            for z0, s in _slabs(d, self.slab):
                num = sums.read((z0, 0, 0), (s, h, w))
                den = weights.read((z0, 0, 0), (s, h, w))
                for r in range(1, self.world):  # the other ranks' shares
                    num += self.rank_store(sums, r).read((z0, 0, 0), (s, h, w))
                    den += self.rank_store(weights, r).read((z0, 0, 0), (s, h, w))
                out.write((z0, 0, 0), num / den)
        if self.world > 1:
            dist.barrier()

    def rank_store(self, store: ArrayStore, rank: int) -> ArrayStore:
        from ..io.stores import open_store
        return open_store(str(store.path).replace(f".rank{self.rank}.", f".rank{rank}."))


def reconstruct_streamed(rec, y: Any, physics: ConeBeamCT, out: Any, *, normal=None, scratch: str | os.PathLike | None = None,
                         memory_budget: int | None = None, n_sweeps: int | None = None, x_init: Any = None,
                         progress: bool = False, dtype: torch.dtype = torch.float32) -> ArrayStore:
    r"""Partitioned reconstruction with every volume in stores (see the module docstring).

    Parameters
    ----------
    rec : PartitionedReconstructor
        Its base, patch, stride, sweeps, start rule and patch batch are used.
    y : ArrayStore or array-like
        Measurements ``(n_views, rows, cols)`` of ``physics`` (``"views"`` layout), in the
        physics' units (``physics.normalize_measurements`` applied).
    physics : ConeBeamCT
        The full operator (batch and channel 1).
    out : ArrayStore or array-like
        ``(D, H, W)``: receives the reconstruction.
    normal : NormalApproximation, optional
        H mode: the approximation ``H`` (the data ``S A^T r`` of each patch from its windows), or
        the one ``physics`` carries.
    scratch : path, optional
        A folder for the intermediate volumes (start point, estimates, sums; uncompressed Zarr);
        default a temporary folder, removed at the end. With several ranks, a folder all share.
    memory_budget : int, optional
        Bytes for the slab buffers (:func:`slab_depth`); the patches' own memory is the patch
        size's business (:mod:`unrolled3d.budget`).
    n_sweeps : int, optional
        Override ``rec.n_sweeps``.
    x_init : ArrayStore or array-like, optional
        Context of the first sweep (default FDK of ``y``, streamed).
    progress : bool
        A progress bar over slabs and patches.

    Returns
    -------
    ArrayStore
        ``out``.
    """
    physics, normal = resolve_normal(physics, normal)
    if not isinstance(physics, ConeBeamCT):
        raise TypeError(f"a streamed reconstruction needs a ConeBeamCT physics, got {type(physics).__name__}")
    if physics.layout != "views":
        raise ValueError("a streamed reconstruction reads measurements in the 'views' layout (n_views, rows, cols)")
    if tuple(physics.img_shape) != tuple(rec.img_shape):
        raise ValueError(f"physics acts on volumes of {physics.img_shape}, the reconstructor on {rec.img_shape}")
    y = as_store(y, "the measurements", physics.geometry.sino_shape)
    out = as_store(out, "the output", physics.img_shape)
    sweeps = rec.n_sweeps if n_sweeps is None else integer("n_sweeps", n_sweeps, 1)
    slab = slab_depth(physics, memory_budget)
    rank, world = rank_and_world()
    with _scratch_folder(scratch) as folder:
        run = _Sweep(rec, physics, normal, y, folder, slab, dtype, None)
        d = physics.img_shape[0]
        total = len(run.patches) * sweeps + d * (2 * sweeps + (x_init is None))
        with tqdm(total=total, desc="streamed", disable=not progress or rank != 0, leave=False) as bar:
            run.bar = bar
            step = bar.update
            if x_init is None:
                x0 = run.scratch_store("x0", physics.img_shape) if rank == 0 else None
                if x0 is not None:  # rank 0
                    fdk_streamed(y, physics, x0, slab, dtype, progress=step, budget_bytes=memory_budget)
                first = _shared(x0, folder / "x0.zarr", world)
            else:
                first = as_store(x_init, "x_init", physics.img_shape)
            context = first
            residual = run.scratch_store(f"residual.rank{rank}", y.shape)
            for sweep in range(sweeps):
                residual_streamed(y, physics, context, residual, slab, dtype, progress=step)
                sums = run.scratch_store(f"sums{sweep}.rank{rank}", physics.img_shape)
                weights = run.scratch_store(f"weights{sweep}.rank{rank}", physics.img_shape)
                if world > 1:
                    dist.barrier()  # every rank's stores exist before rank 0 may read them
                run.solve(residual, context, first, sums, weights)
                last = sweep == sweeps - 1
                target = out if last else (run.scratch_store(f"x{sweep + 1}", physics.img_shape)
                                           if rank == 0 else None)
                run.blend(sums, weights, target)
                context = out if last else _shared(target, folder / f"x{sweep + 1}.zarr", world)
                bar.update(d)
    return out


def _shared(store: ArrayStore | None, path: Path, world: int) -> ArrayStore:
    """Rank 0's scratch store, opened by the other ranks (after a barrier)."""
    if world > 1:
        dist.barrier()
    if store is not None:
        return store
    from ..io.stores import open_store
    return open_store(path)


class _scratch_folder:
    """A given folder, or a temporary one removed on exit (made by rank 0 and shared with the
    other ranks, which must see one another's sums: the ranks run on one machine or share the
    temporary folder's file system)."""

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.given = None if folder is None else Path(folder)
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Path:
        if self.given is not None:
            self.given.mkdir(parents=True, exist_ok=True)
            return self.given
        rank, world = rank_and_world()
        name: list[str | None] = [None]
        if rank == 0:
            self._tmp = tempfile.TemporaryDirectory(prefix="unrolled3d-stream-")
            name = [self._tmp.name]
        if world > 1:
            dist.broadcast_object_list(name, src=0)
        assert name[0] is not None  # rank 0 made the folder and the other ranks received its name
        return Path(name[0])

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            if rank_and_world()[1] > 1 and exc[0] is None:
                dist.barrier()  # every rank is done with the folder
            self._tmp.cleanup()
        elif self.given is None and rank_and_world()[1] > 1 and exc[0] is None:
            dist.barrier()


def streamed_patch_peak(rec, physics: ConeBeamCT, p: int, measure=None) -> int:
    """Peak extra memory (bytes) of one group of ``p^3`` patches solved from windowed data, as
    :func:`reconstruct_streamed` solves them (zero data: memory does not depend on the values)."""
    from ..budget import measure_peak

    measure = measure or measure_peak
    d, h, w = physics.img_shape
    offset = tuple(max(0, (n - p) // 2) for n in (d, h, w))
    shape = tuple(min(p, n) for n in (d, h, w))
    one = rec.with_patch_size(shape)
    size = min(one.patch_batch_size, len(one.patches()))
    device = physics.operator_norm.device

    def solve() -> torch.Tensor:
        ops = [physics.restrict(offset, shape) for _ in range(size)]
        group = group_physics(ops, None)
        data = torch.zeros((size, 1, *ops[0].measurement_shape), device=device)
        ctx = torch.zeros((size, 1, *shape), device=device)
        return one.solve_patches(group, size, data, ctx, ctx, None, cropped=True)

    with torch.no_grad():
        return measure(solve, device)


#: float32 patch-sized arrays a patch holds while its share is blended into the stores (see streamed_patch)
_BLEND_BUFFERS = 5


def streamed_patch(rec, physics: ConeBeamCT, budget_bytes: int, patch_size: int | None = None, measure=None,
                   amp: bool | None = None, n_sweeps: int | None = None, overlap: float | None = None):
    """``rec`` on the largest patch whose streamed solve fits ``budget_bytes`` (the whole volume,
    with one sweep, when it fits), or on ``patch_size`` when given; patches share ``overlap`` of
    their edge and are swept ``n_sweeps`` times (defaults :data:`unrolled3d.budget.PATCHED_OVERLAP`,
    :data:`~unrolled3d.budget.PATCHED_SWEEPS`, as in memory). The peak of a group is modelled as
    ``a + b p^3`` from trial patches (:func:`unrolled3d.budget.peak_model`, :func:`streamed_patch_peak`).
    The network runs in bfloat16 where it is native (``amp``: see :func:`unrolled3d.budget.plan_inference`)."""
    from ..budget import (PATCHED_OVERLAP, PATCHED_SWEEPS, bf16_is_native, network_precision, patched_stride,
                          peak_model)

    rec = rec.with_base(network_precision(rec.base, bf16_is_native(physics.operator_norm.device)
                                          if amp is None else amp)[0])
    shape = tuple(rec.img_shape)
    n = min(shape)
    sweeps = PATCHED_SWEEPS if n_sweeps is None else integer("n_sweeps", n_sweeps, 1)
    overlap = PATCHED_OVERLAP if overlap is None else overlap

    def on_patches(patch: tuple[int, ...]):
        if patch == shape:  # nothing outside the patch: a second sweep would repeat the first
            return rec.with_patch_size(shape, shape, 1 if n_sweeps is None else sweeps)
        return rec.with_patch_size(patch, patched_stride(patch, overlap), sweeps)

    if patch_size is not None:
        p = integer("patch_size", patch_size, 1)
        if p > n:
            raise ValueError(f"patch_size {p} is larger than the volume {shape}")
        return on_patches((p,) * 3)
    p1 = min(16, n)
    # trials of 24^3 and 48^3: 16^3 and 32^3 extrapolated to a 176^3 patch under a 1 GiB budget
    # grew the resident memory by about 1.3 GiB (a 512^3 scan)
    a, b = peak_model(lambda p: streamed_patch_peak(rec, physics, p, measure), n, (24, 48))
    # beside the solve, each patch of a group holds float32 copies of its size while it is blended
    # in: its context, its blend window, and the sums and weights it reads and writes back
    b += _BLEND_BUFFERS * 4 * rec.patch_batch_size
    if a + b * math.prod(shape) <= budget_bytes:
        return on_patches(shape)
    fits = [p for p in sorted({*range(p1, n + 1, 8), n}) if a + b * p**3 <= budget_bytes]
    if not fits:
        raise ValueError(f"the memory budget {budget_bytes / 2**20:.0f} MiB is too small: one group of {p1}^3 "
                         f"patches needs about {(a + b * p1**3) / 2**20:.0f} MiB")
    return on_patches((fits[-1],) * 3)
