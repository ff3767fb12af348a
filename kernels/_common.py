"""Launch helpers and ``@triton.jit`` tile helpers shared by the kernel modules (Liger-Kernel's
``ops/utils.py``).

Nothing here validates arguments: the registered ops of :mod:`unrolled3d.ops` check them once,
at the public boundary, and the launchers trust their callers.

The ``@triton.jit`` helpers are decorated when this module is imported, as the kernels that call
them are, so both are compiled for a GPU or both run under the CPU interpreter
(``TRITON_INTERPRET=1``); Triton's own ``triton.language.standard`` helpers (``tl.cdiv``,
``tl.zeros``) are decorated when ``triton`` is imported, possibly before that variable was set,
which is why the kernels use only ``tl`` builtins and these helpers.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

__all__ = ["MAX_GRID_YZ", "overlap", "TileGrid", "tile_grid", "chunks", "bc_launches", "device_ctx", "is_interpreted",
           "tile_coords", "tile_inside", "tile_offsets", "bc_span"]

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


class TileGrid(NamedTuple):
    """How a 2-D ``[rows, cols]`` grid is cut into tiles: ``block_r x block_w`` elements per
    program, ``n_wb`` tiles across the columns, ``n_tiles`` in all (grid axis 0).

    Examples
    --------
    >>> from unrolled3d.kernels._common import tile_grid
    >>> tile_grid(6 * 4, 8)  # a (6, 4, 8) buffer: 24 rows of 8
    TileGrid(block_r=32, block_w=8, num_warps=4, n_wb=1, n_tiles=1)
    """

    block_r: int
    block_w: int
    num_warps: int
    n_wb: int
    n_tiles: int


def tile_grid(rows: int, cols: int, max_tile: int = 4096) -> TileGrid:
    """Tiles of at most ``max_tile`` elements: as wide as the rows (coalesced loads, at most 512),
    then as many rows as fit."""
    bw = min(triton.next_power_of_2(max(cols, 1)), 512)
    br = max(1, min(triton.next_power_of_2(max(rows, 1)), max_tile // bw))
    n_wb = triton.cdiv(cols, bw)
    return TileGrid(br, bw, 8 if br * bw >= 2048 else 4, n_wb, triton.cdiv(rows, br) * n_wb)


def chunks(n: int, size: Optional[int] = None) -> Iterator[Tuple[int, int]]:
    """``(start, count)`` chunks of the ``(b, c)`` grid axis (default size :data:`MAX_GRID_YZ`)."""
    size = size or MAX_GRID_YZ
    for start in range(0, n, size):
        yield start, min(size, n - start)


def bc_launches(n_bc: int, reduce: bool) -> Tuple[int, list]:
    """``(bc_per_prog, [(start, count), ...])`` for a backward kernel over ``n_bc`` ``(b, c)`` pairs.

    ``reduce=True`` (a gradient summed over ``B`` and ``C``): one program per tile owns every pair,
    so the sum is a deterministic in-register reduction (no atomics); otherwise one pair per
    program, in grid chunks."""
    if reduce:
        return n_bc, [(0, 1)]
    return 1, list(chunks(n_bc))


def device_ctx(t: torch.Tensor):
    """Make ``t``'s GPU current for the launch (no-op on the CPU or if it already is)."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def is_interpreted(kernel) -> bool:
    """True if ``kernel`` was decorated while ``TRITON_INTERPRET=1`` (it then runs on the CPU)."""
    return type(kernel).__name__ == "InterpretedFunction"


# --------------------------------------------------------------------------- #
# @triton.jit tile helpers
# --------------------------------------------------------------------------- #
@triton.jit
def tile_coords(n_wb, plane_rows, od, oh, ow, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """This program's tile (grid axis 0) of a 2-D ``[rows, cols]`` grid laid out by
    :func:`tile_grid`, whose rows flatten ``(i, j)`` with ``plane_rows`` values of ``j``.

    Returns ``r`` (flattened rows, ``[BLOCK_R]``), ``k`` (columns, ``[BLOCK_W]``), ``i``, ``j``
    and the volume voxel ``(d, h, w) = (od + i, oh + j, ow + k)``; all int64, so offsets into
    volumes past 2^31 voxels cannot overflow.
    """
    pid = tl.program_id(0).to(tl.int64)
    rb = pid // n_wb
    wb = pid % n_wb
    r = rb * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    k = wb * BLOCK_W + tl.arange(0, BLOCK_W).to(tl.int64)
    i = r // plane_rows
    j = r % plane_rows
    return r, k, i, j, od + i, oh + j, ow + k


@triton.jit
def tile_inside(row_ok, col_ok, d, h, w, D, H, W):
    """``(row_in, col_in)``: the rows and columns that are ``ok`` and whose voxel ``(d, h, w)``
    lies in the ``(D, H, W)`` volume; ``row_in[:, None] & col_in[None, :]`` masks the tile."""
    row_in = row_ok & (d >= 0) & (d < D) & (h >= 0) & (h < H)
    col_in = col_ok & (w >= 0) & (w < W)
    return row_in, col_in


@triton.jit
def tile_offsets(a, b, c, s_a, s_b, s_c):
    """``[BLOCK_R, BLOCK_W]`` element offsets ``a * s_a + b * s_b + c * s_c`` of a tile whose rows
    carry ``(a, b)`` and whose columns carry ``c`` (strides in elements)."""
    return (a * s_a + b * s_b)[:, None] + (c * s_c)[None, :]


@triton.jit
def bc_span(bc_per_prog, bc_start, n_bc):
    """``[bc_lo, bc_hi)``: the ``(b, c)`` pairs this program (grid axis 1) loops over, as
    :func:`bc_launches` laid them out."""
    bc_lo = tl.program_id(1).to(tl.int64) * bc_per_prog + bc_start
    return bc_lo, tl.minimum(bc_lo + bc_per_prog, n_bc)
