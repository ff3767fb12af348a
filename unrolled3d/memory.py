"""Host memory of the running process, from Linux's ``/proc/self/status``.

``PeakRSS`` measures the peak resident set size during a block: it resets the kernel's
high-water mark (``echo 5 > /proc/self/clear_refs``) on entry and reads ``VmHWM`` on exit. Where
``/proc`` is missing or read-only (not Linux, some containers) the figures are ``None``.
"""
from __future__ import annotations

__all__ = ["status_bytes", "reset_peak_rss", "trim_heap", "PeakRSS"]


def status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``"VmRSS"``, ``"VmHWM"``, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def trim_heap() -> None:
    """Make glibc return freed and future large blocks to the OS (fixed mmap threshold of 128 KiB,
    heap trimmed), so that RSS peaks measure new allocations; a no-op without glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    libc.malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS; ``False`` where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Context manager: ``peak_mib`` is the process's peak RSS (MiB) inside the block.

    Examples
    --------
    >>> from unrolled3d.memory import PeakRSS
    >>> with PeakRSS() as mem:
    ...     block = bytearray(64 * 2**20)
    >>> mem.peak_mib is None or mem.peak_mib >= 64     # None where /proc cannot be reset
    True
    """

    def __init__(self) -> None:
        self.peak_mib: float | None = None
        self._ok = False

    def __enter__(self) -> "PeakRSS":
        self._ok = reset_peak_rss()
        return self

    def __exit__(self, *exc) -> None:
        if self._ok:
            self.peak_mib = status_bytes("VmHWM") / 2**20
