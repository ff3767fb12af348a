"""Where the patches go: the inference grid of patch offsets and the blending window."""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["patch_grid", "random_patch_offset", "blend_window"]


def patch_grid(img_shape: Sequence[int], patch_shape: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int, int]]:
    """Start offsets of a grid of patches covering the volume (the last patch on each axis is
    flush with the volume's end, so strides that do not divide the volume still cover it).

    Examples
    --------
    >>> from unrolled3d.partition import patch_grid
    >>> patch_grid((10, 4, 4), (4, 4, 4), (4, 4, 4))
    [(0, 0, 0), (4, 0, 0), (6, 0, 0)]
    """
    axes = []
    for n, p, s in zip(img_shape, patch_shape, stride):
        starts = list(range(0, n - p + 1, s))
        if starts[-1] + p < n:
            starts.append(n - p)
        axes.append(starts)
    return [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]


def random_patch_offset(img_shape: Sequence[int], patch_shape: Sequence[int],
                        generator: torch.Generator | None = None) -> tuple[int, ...]:
    """A uniformly random start offset of a patch inside the volume: one ``torch.randint`` per axis,
    in axis order (training draws patch positions with it, so a seeded generator repeats them).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.partition import random_patch_offset
    >>> random_patch_offset((10, 4, 4), (4, 4, 4), torch.Generator().manual_seed(0))[1:]
    (0, 0)
    """
    if len(img_shape) != len(patch_shape) or any(p > n for n, p in zip(img_shape, patch_shape)):
        raise ValueError(f"a patch of shape {tuple(patch_shape)} does not fit a volume of shape {tuple(img_shape)}")
    return tuple(int(torch.randint(0, n - p + 1, (1,), generator=generator)) for n, p in zip(img_shape, patch_shape))


def blend_window(patch_shape: Sequence[int], stride: Sequence[int], dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Separable blending window ``(pd, ph, pw)``: flat, with a sin^2 taper over the overlap
    ``p - s`` at both ends of each axis; positive everywhere so that ``sum w`` never vanishes.

    Examples
    --------
    >>> from unrolled3d.partition import blend_window
    >>> w = blend_window((4, 4, 4), (2, 4, 4))
    >>> [round(float(v), 3) for v in w[:, 0, 0]]          # tapered along the overlapping axis only
    [0.146, 0.854, 0.854, 0.146]
    """
    ws = []
    for p, s in zip(patch_shape, stride):
        w = torch.ones(p, dtype=torch.float64)
        ov = p - s
        if ov > 0:
            i = torch.arange(ov, dtype=torch.float64)
            ramp = torch.sin(0.5 * math.pi * (i + 0.5) / ov) ** 2
            w[:ov] = torch.minimum(w[:ov], ramp)
            w[p - ov:] = torch.minimum(w[p - ov:], ramp.flip(0))
        ws.append(w)
    return (ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]).to(dtype=dtype, device=device)
