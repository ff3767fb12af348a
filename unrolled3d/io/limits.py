"""What a read may cost: a file's declared size is checked against the machine's memory before
anything is allocated (a 1.4 KB file can declare 10^15 voxels)."""
from __future__ import annotations

import math
import os
from typing import Sequence

from ..errors import FileFormatError

__all__ = ["physical_memory", "human_bytes", "check_declared_size"]


def physical_memory() -> int:
    """Bytes of physical memory of this machine (``2**63 - 1`` where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not a POSIX system
        return 2**63 - 1


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``human_bytes(3 * 2**30) == "3.0 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def check_declared_size(path: str | os.PathLike, what: str, shape: Sequence[int], itemsize: int,
                        limit: int | None = None) -> int:
    """Raise a :class:`FileFormatError` naming ``path`` when ``what`` of ``shape`` (``itemsize``
    bytes a value) would take more than ``limit`` bytes (default: the machine's memory) to read
    whole; returns the bytes it takes.

    Examples
    --------
    >>> from unrolled3d.io.limits import check_declared_size
    >>> check_declared_size("v.h5", "dataset 'volume'", (4, 4, 4), 4)
    256
    >>> check_declared_size("v.h5", "dataset 'volume'", (10**5,) * 3, 4, limit=2**30)
    Traceback (most recent call last):
        ...
    unrolled3d.errors.FileFormatError: v.h5: dataset 'volume' declares 100000 x 100000 x 100000 values (3.6 PiB), more than this machine's memory (1.0 GiB) allows to read whole: a corrupt or hostile file, or a volume to read block by block
    """
    nbytes = math.prod(int(n) for n in shape) * int(itemsize)
    cap = physical_memory() if limit is None else int(limit)
    if nbytes > cap:
        dims = " x ".join(str(int(n)) for n in shape)
        raise FileFormatError(path, f"{what} declares {dims} values ({human_bytes(nbytes)}), more than this machine's "
                                    f"memory ({human_bytes(cap)}) allows to read whole: a corrupt or hostile file, or a "
                                    f"volume to read block by block")
    return nbytes
