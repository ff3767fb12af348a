"""Launch helpers shared by the kernel modules (Liger-Kernel's ``ops/utils.py``).

Nothing here validates arguments: the registered ops of :mod:`unrolled3d.ops` check them once,
at the public boundary, and the launchers trust their callers.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Tuple

import torch
import triton

__all__ = ["MAX_GRID_YZ", "overlap", "tile", "chunks", "device_ctx", "is_interpreted"]

#: CUDA limits grid axes 1 and 2 to 65535 programs; the batch*channel axis is launched in chunks
#: of at most this size (read at call time, so tests can shrink it).
MAX_GRID_YZ = 65535


def overlap(offset: Sequence[int], patch: Sequence[int], vol: Sequence[int]):
    """Per-axis patch index ranges ``(p0, p1)`` whose voxel ``offset + p`` lies in ``[0, vol)``;
    ``None`` if the patch misses the volume entirely."""
    ranges = []
    for o, p, n in zip(offset, patch, vol):
        p0, p1 = max(0, -o), min(p, n - o)
        if p1 <= p0:
            return None
        ranges.append((p0, p1))
    return ranges


def tile(rows: int, cols: int, max_tile: int = 4096) -> Tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_W, num_warps)`` for a 2-D ``[rows, cols]`` tile of at most ``max_tile``
    elements: as wide as the rows (coalesced loads), then as many rows as fit."""
    bw = min(triton.next_power_of_2(max(cols, 1)), 512)
    br = max(1, min(triton.next_power_of_2(max(rows, 1)), max_tile // bw))
    return br, bw, (8 if br * bw >= 2048 else 4)


def chunks(n: int, size: Optional[int] = None) -> Iterator[Tuple[int, int]]:
    """``(start, count)`` chunks of the ``(b, c)`` grid axis (default size :data:`MAX_GRID_YZ`)."""
    size = size or MAX_GRID_YZ
    for start in range(0, n, size):
        yield start, min(size, n - start)


def device_ctx(t: torch.Tensor):
    """Make ``t``'s GPU current for the launch (no-op on the CPU or if it already is)."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def is_interpreted(kernel) -> bool:
    """True if ``kernel`` was decorated while ``TRITON_INTERPRET=1`` (it then runs on the CPU)."""
    return type(kernel).__name__ == "InterpretedFunction"
