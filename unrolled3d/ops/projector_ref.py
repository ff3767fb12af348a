"""Pure-PyTorch reference twin of the C++/CUDA cone-beam projector pair.

The same Joseph discretisation as ``csrc/cone_beam.h`` (same driving-axis rule, same plane
weights, same bilinear interpolation with zeros outside), vectorised over rays with plain tensor
indexing. Slow and memory hungry: it is the truth the compiled kernels are tested against and the
baseline of ``bench/test_bench_projector.py``.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..geometry import ConeBeamGeometry
from .projector import check_sinogram, check_volume

__all__ = ["cone_project_ref", "cone_backproject_ref"]


def _joseph_weights(
    geometry: ConeBeamGeometry, device: torch.device, rays_per_chunk: int = 8192
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(ray_ids (m,), voxel_idx (m, L), weight (m, L))`` chunks, float64 weights.

    ``voxel_idx`` indexes the flattened ``(D*H*W)`` volume; invalid entries have weight 0 and
    index 0.
    """
    f64 = torch.float64
    rows, cols = geometry.det_shape
    D, H, W = geometry.vol_shape
    n = torch.tensor([W, H, D], device=device)  # axes (x, y, z)
    stride = torch.tensor([1, W, W * H], device=device)
    voxel = torch.tensor(geometry.voxel_size[::-1], dtype=f64, device=device)
    offset = torch.tensor(geometry.vol_offset[::-1], dtype=f64, device=device)
    origin_idx = 0.5 * (n.to(f64) - 1) - offset / voxel

    views = geometry.views_tensor(device)
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


def cone_project_ref(volume: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Reference forward projection. ``(B, C, D, H, W) -> (B, C, n_views, rows, cols)``."""
    check_volume(volume, geometry)
    B, C = volume.shape[:2]
    flat = volume.reshape(B * C, -1).to(torch.float64)
    out = torch.zeros(B * C, geometry.n_views * geometry.det_shape[0] * geometry.det_shape[1],
                      dtype=torch.float64, device=volume.device)
    for ids, idx, w in _joseph_weights(geometry, volume.device):
        out[:, ids] = (flat[:, idx] * w).sum(-1)
    return out.to(volume.dtype).reshape(B, C, *geometry.sino_shape)


def cone_backproject_ref(sino: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """Reference backprojection (the transpose). ``(B, C, n_views, rows, cols) -> (B, C, D, H, W)``."""
    check_sinogram(sino, geometry)
    B, C = sino.shape[:2]
    flat = sino.reshape(B * C, -1).to(torch.float64)
    D, H, W = geometry.vol_shape
    out = torch.zeros(B * C, D * H * W, dtype=torch.float64, device=sino.device)
    for ids, idx, w in _joseph_weights(geometry, sino.device):
        out.index_add_(1, idx.flatten(), (flat[:, ids, None] * w).flatten(1))
    return out.to(sino.dtype).reshape(B, C, D, H, W)
