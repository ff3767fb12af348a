"""The Joseph traversal of the PyTorch twin, on the raw op arguments (views, ``vol_geom``, shapes).

Shared by :mod:`unrolled3d.ops.projector_ref` (the public reference functions, which take a
geometry) and by the twin registration of :mod:`unrolled3d.ops.projector` (the ops' stand-in when
no compiled extension can be had), so it imports nothing of the projector.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

__all__ = ["joseph_weights", "project_raw", "backproject_raw"]


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
