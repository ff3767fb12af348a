"""Argument checks shared by the geometry, the normal operator and the partitioning."""
from __future__ import annotations

from typing import Any, Sequence

__all__ = ["int_triple", "check_patch"]


def int_triple(name: str, value: Any, allow_scalar: bool = False) -> tuple[int, int, int]:
    """Three positive integers (``(D, H, W)``-like); a single int is repeated if ``allow_scalar``."""
    if allow_scalar and isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        t = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be 3 integers, got {value!r}") from None
    if len(t) != 3:
        raise ValueError(f"{name} must have 3 entries (D, H, W), got {value!r}")
    if any(v <= 0 for v in t):
        raise ValueError(f"{name} must be positive, got {t}")
    return t


def check_patch(offset: Any, shape: Any, vol_shape: Sequence[int], axes: str = "DHW"
                ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Validate a patch ``[offset, offset + shape)`` lying inside ``vol_shape``; return both as ints."""
    shape = int_triple("shape", shape)
    try:
        off = tuple(int(o) for o in offset)
    except (TypeError, ValueError):
        raise TypeError(f"offset must be 3 integers, got {offset!r}") from None
    if len(off) != 3:
        raise ValueError(f"offset must be 3 integers, got {offset!r}")
    for o, p, n, axis in zip(off, shape, vol_shape, axes):
        if o < 0 or o + p > n:
            raise ValueError(f"patch [{o}, {o + p}) along {axis} lies outside the volume of size {n}")
    return off, shape
