"""Pure-PyTorch twins of the compiled extension's ops (``csrc/``), in one module.

* the cone-beam Joseph projector pair: the same discretisation as ``csrc/cone_beam.h`` (same
  driving-axis rule, same plane weights, same bilinear interpolation with zeros outside),
  vectorised over rays with plain tensor indexing, in float64;
* FDK's weighted backprojection (``csrc/fdk_backproject.h``): ``grid_sample`` per chunk of views.

Each is written twice: on the op's own arguments (``*_raw``: what ``torch.ops.unrolled3d.*``
runs when no compiled extension can be had, see :mod:`unrolled3d.ops._extension`) and, for the
projector, as public functions of a geometry (``cone_project_ref``, ``cone_backproject_ref``).
Slow and memory hungry: they are the truth the compiled kernels are tested against and the
baseline of ``bench/test_bench_projector.py``. This module imports nothing of the compiled ops.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..geometry import ConeBeamGeometry
from ._projector_args import check_sinogram, check_volume

__all__ = ["cone_project_ref", "cone_backproject_ref", "joseph_weights", "project_raw", "backproject_raw",
           "backproject_algo_raw", "fdk_backproject_raw", "BACKPROJECT_ALGORITHMS"]

#: the algorithms ``cone_backproject_algo`` knows (all the same linear map; see csrc/cone_beam.h)
BACKPROJECT_ALGORITHMS = ("auto", "scatter", "tile", "gather", "column")


# --------------------------------------------------------------------------- the projector
def joseph_weights(
    views: torch.Tensor, vol_geom: Sequence[float], vol_shape: Sequence[int], det_shape: Sequence[int],
    rays_per_chunk: int = 8192,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(ray_ids (m,), voxel_idx (m, L), weight (m, L))`` chunks, float64 weights.

    ``voxel_idx`` indexes the flattened ``(D*H*W)`` volume; invalid entries have weight 0 and
    index 0.
    """
    f64 = torch.float64
    device = views.device
    rows, cols = (int(v) for v in det_shape)
    D, H, W = (int(v) for v in vol_shape)
    n = torch.tensor([W, H, D], device=device)  # axes (x, y, z)
    stride = torch.tensor([1, W, W * H], device=device)
    voxel = torch.tensor(list(vol_geom[:3])[::-1], dtype=f64, device=device)
    offset = torch.tensor(list(vol_geom[3:6])[::-1], dtype=f64, device=device)
    origin_idx = 0.5 * (n.to(f64) - 1) - offset / voxel

    views = views.to(f64)
    src = views[:, 0:3]
    cu = torch.arange(cols, dtype=f64, device=device) - 0.5 * (cols - 1)
    cv = torch.arange(rows, dtype=f64, device=device) - 0.5 * (rows - 1)
    pix = (
        views[:, None, None, 3:6]
        + cu[None, None, :, None] * views[:, None, None, 6:9]
        + cv[None, :, None, None] * views[:, None, None, 9:12]
    )
    dw = (pix - src[:, None, None, :]).reshape(-1, 3)
    s_all = (src / voxel + origin_idx)[:, None, None, :].expand(-1, rows, cols, -1).reshape(-1, 3)
    d_all = dw / voxel
    norm_all = dw.norm(dim=1)

    # Driving axis, with the same tie-breaking as joseph_traverse in cone_beam.h.
    ad = d_all.abs()
    axis = torch.zeros(ad.shape[0], dtype=torch.long, device=device)
    axis[(ad[:, 1] > ad[:, 0]) & (ad[:, 1] >= ad[:, 2])] = 1
    axis[(ad[:, 2] > ad[:, 0]) & (ad[:, 2] > ad[:, 1])] = 2

    for a in range(3):
        b, c = (a + 1) % 3, (a + 2) % 3
        ids_a = torch.nonzero(axis == a).flatten()
        k = torch.arange(int(n[a]), dtype=f64, device=device)
        for start in range(0, ids_a.numel(), rays_per_chunk):
            ids = ids_a[start : start + rays_per_chunk]
            s, d = s_all[ids], d_all[ids]
            da = d[:, a]
            inv = 1.0 / da
            db, dc = d[:, b] * inv, d[:, c] * inv
            qb0 = s[:, b] - s[:, a] * db
            qc0 = s[:, c] - s[:, a] * dc
            w = (norm_all[ids] * inv.abs())[:, None]
            qb = qb0[:, None] + k[None, :] * db[:, None]
            qc = qc0[:, None] + k[None, :] * dc[:, None]
            fb0, fc0 = qb.floor(), qc.floor()
            fb, fc = qb - fb0, qc - fc0
            ib, ic = fb0.long(), fc0.long()
            base = (k.long() * stride[a])[None, :]
            idx_list, w_list = [], []
            for ob, oc, wt in (
                (0, 0, (1 - fb) * (1 - fc)),
                (1, 0, fb * (1 - fc)),
                (0, 1, (1 - fb) * fc),
                (1, 1, fb * fc),
            ):
                jb, jc = ib + ob, ic + oc
                valid = (jb >= 0) & (jb < n[b]) & (jc >= 0) & (jc < n[c])
                idx = torch.where(valid, base + jb * stride[b] + jc * stride[c], torch.zeros_like(jb))
                idx_list.append(idx)
                w_list.append(torch.where(valid, w * wt, torch.zeros_like(wt)))
            yield ids, torch.cat(idx_list, 1), torch.cat(w_list, 1)


def project_raw(volume: torch.Tensor, views: torch.Tensor, vol_geom: Sequence[float], rows: int,
                cols: int) -> torch.Tensor:
    """``cone_project``'s twin on the op's own arguments: ``(B, C, D, H, W) -> (B, C, V, rows, cols)``."""
    B, C = volume.shape[:2]
    flat = volume.reshape(B * C, -1).to(torch.float64)
    out = torch.zeros(B * C, views.shape[0] * rows * cols, dtype=torch.float64, device=volume.device)
    for ids, idx, w in joseph_weights(views, vol_geom, volume.shape[-3:], (rows, cols)):
        out[:, ids] = (flat[:, idx] * w).sum(-1)
    return out.to(volume.dtype).reshape(B, C, views.shape[0], rows, cols)


def backproject_raw(sino: torch.Tensor, views: torch.Tensor, vol_geom: Sequence[float], depth: int, height: int,
                    width: int) -> torch.Tensor:
    """``cone_backproject``'s twin (the exact transpose): ``(B, C, V, rows, cols) -> (B, C, D, H, W)``."""
    B, C = sino.shape[:2]
    flat = sino.reshape(B * C, -1).to(torch.float64)
    out = torch.zeros(B * C, depth * height * width, dtype=torch.float64, device=sino.device)
    for ids, idx, w in joseph_weights(views, vol_geom, (depth, height, width), sino.shape[-2:]):
        out.index_add_(1, idx.flatten(), (flat[:, ids, None] * w).flatten(1))
    return out.to(sino.dtype).reshape(B, C, depth, height, width)


def backproject_algo_raw(sino: torch.Tensor, views: torch.Tensor, vol_geom: Sequence[float], depth: int, height: int,
                         width: int, algorithm: str) -> torch.Tensor:
    """``cone_backproject_algo``'s twin: every algorithm is the same linear map, the transpose."""
    if algorithm not in BACKPROJECT_ALGORITHMS:  # as the C++ op, for direct torch.ops callers
        raise RuntimeError(f"unrolled3d: unknown backprojection algorithm '{algorithm}' (expected one of "
                           f"{BACKPROJECT_ALGORITHMS})")
    return backproject_raw(sino, views, vol_geom, depth, height, width)


def cone_project_ref(volume: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Reference forward projection. ``(B, C, D, H, W) -> (B, C, n_views, rows, cols)``."""
    check_volume(volume, geometry)
    return project_raw(volume, geometry.views_tensor(volume.device), geometry.vol_geom, *geometry.det_shape)


def cone_backproject_ref(sino: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Reference backprojection (the transpose). ``(B, C, n_views, rows, cols) -> (B, C, D, H, W)``."""
    check_sinogram(sino, geometry)
    return backproject_raw(sino, geometry.views_tensor(sino.device), geometry.vol_geom, *geometry.vol_shape)


# --------------------------------------------------------------------------- FDK's backprojection
#: columns of FDK's per-view table (unrolled3d/physics/fdk.py builds it; csrc/fdk_backproject.h reads it)
FDK_SRC, FDK_N, FDK_U, FDK_V = slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)
FDK_REL_U, FDK_REL_V, FDK_DU, FDK_DV, FDK_DSD, FDK_WEIGHT = 12, 13, 14, 15, 16, 17
#: views backprojected together: a fixed number, so that the sum over views runs in the same
#: order whatever the slab size (the result does not depend on ``slab_voxels``, to the bit)
_VIEW_CHUNK = 8


def fdk_backproject_raw(images: torch.Tensor, table: torch.Tensor, vol_geom: Sequence[float], depth: int, height: int,
                        width: int, slab_voxels: Optional[int] = None, progress: bool = False) -> torch.Tensor:
    """``fdk_backproject``'s twin: ``sum_p w_p(x) * images[:, p](hit_p(x))`` over the views.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, V, rows, cols)`` filtered projections.
    table : torch.Tensor
        ``(V, 18)`` per-view constants in ``images``' dtype (see ``FDK_*`` above).
    vol_geom : sequence of float
        ``(sz, sy, sx, oz, oy, ox)`` mm.
    depth, height, width : int
    slab_voxels : int, optional
        Voxels x views per step (at least one z-slice of ``_VIEW_CHUNK`` = 8 views): bounds the
        temporaries, about eight step-sized buffers; default 2^17 on the CPU, 2^24 on a GPU and
        under ``torch.compile``. The result does not depend on it.
    progress : bool
        A progress bar over the chunks of views.

    Returns
    -------
    torch.Tensor
        ``(N, depth, height, width)``.
    """
    if slab_voxels is None:
        slab_voxels = 1 << (24 if images.is_cuda or torch.compiler.is_compiling() else 17)
    device, dtype = images.device, images.dtype
    BC, n_views, rows, cols = images.shape
    D, H, W = int(depth), int(height), int(width)
    sz, sy, sx, oz, oy, ox = (float(v) for v in vol_geom)
    axis = lambda n, s, o: (torch.arange(n, device=device, dtype=dtype) - 0.5 * (n - 1)) * s + o  # noqa: E731
    X = axis(W, sx, ox)[None, None, None, :]
    Y = axis(H, sy, oy)[None, None, :, None]
    Z_all = axis(D, sz, oz)[None, :, None, None]
    out = torch.zeros(BC, D, H * W, device=device, dtype=dtype)
    # Slabs of whole z-slices: each step's coordinate, weight and sample buffers (about eight
    # step-sized images) hold a slab of voxels for a chunk of views, so the memory is the output
    # plus a bounded step -- the same per-voxel arithmetic in any slab size.
    slab = max(1, min(D, slab_voxels // (_VIEW_CHUNK * H * W)))
    chunks: Iterable[int] = range(0, n_views, _VIEW_CHUNK)
    if progress and not torch.compiler.is_compiling():
        chunks = tqdm(chunks, desc="FDK backprojection", unit="chunk", leave=False)
    for p0 in chunks:
        vw = table[p0 : p0 + _VIEW_CHUNK]
        n = vw.shape[0]
        col = lambda k: vw[:, k].reshape(n, 1, 1, 1)  # noqa: E731  a per-view scalar, broadcast
        # the chunk's images as a batch of n "images" with BC channels each
        img = images[:, p0 : p0 + n].transpose(0, 1)
        for z0 in range(0, D, slab):
            Z = Z_all[:, z0 : z0 + slab]
            d = Z.shape[1]
            dx, dy, dz = X - col(0), Y - col(1), Z - col(2)
            depth_mm = dx * col(3) + dy * col(4) + dz * col(5)  # U, mm
            scale = col(FDK_DSD) / depth_mm
            # detector-plane hit relative to the detector centre, in pixels
            hu = (col(FDK_REL_U) + scale * (dx * col(6) + dy * col(7) + dz * col(8))) / col(FDK_DU)
            hv = (col(FDK_REL_V) + scale * (dx * col(9) + dy * col(10) + dz * col(11))) / col(FDK_DV)
            grid = torch.stack([hu / (0.5 * (cols - 1)), hv / (0.5 * (rows - 1))], dim=-1).reshape(n, d, H * W, 2)
            sample = torch.nn.functional.grid_sample(img, grid, mode="bilinear", padding_mode="zeros",
                                                     align_corners=True)  # (n, BC, d, H*W)
            weighted = sample * (col(FDK_WEIGHT) / depth_mm**2).reshape(n, 1, d, H * W)
            acc = out[:, z0 : z0 + d]
            for q in range(n):  # in view order, whatever the slab: the same sums to the bit
                acc.add_(weighted[q])
    return out.reshape(BC, D, H, W)
