"""Argument checks shared by every public entry point of unrolled3d.

One module, so that every function refuses bad input with the same words: a ``TypeError`` when
the kind of value is wrong (a float or a bool where an integer is meant, a list where a tensor
is meant), a ``ValueError`` when the value is of the right kind but out of range; both name the
argument. Nothing is silently rounded, truncated or broadcast. Checks run once, at the public
boundary; the registered ops' inner kernels and the Triton launchers trust their callers.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Literal, Sequence, overload

import torch

__all__ = [
    "integer", "real", "boolean", "check_device", "choice", "int_tuple", "int_triple", "real_tuple", "check_patch",
    "check_tensor", "check_like", "check_finite", "check_nonempty", "check_allocation", "memory_of", "REAL_DTYPES",
    "LOW_PRECISION_DTYPES", "FLOAT_DTYPES",
]

REAL_DTYPES = (torch.float32, torch.float64)
#: real dtypes the ops take at their boundary and compute in float32
LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)
FLOAT_DTYPES = REAL_DTYPES + LOW_PRECISION_DTYPES


def _scalar(value: Any) -> Any:
    """A one-element tensor as its Python number (other values unchanged)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad:
        return value.item()
    return value


def integer(name: str, value: Any, minimum: int | None = None) -> int:
    """An integer (Python or NumPy, not a bool, not a float), at least ``minimum`` if given."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def real(name: str, value: Any, positive: bool = False, nonnegative: bool = False) -> float:
    """A finite real number (not a bool or a string); ``> 0`` if ``positive``, ``>= 0`` if
    ``nonnegative``."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def boolean(name: str, value: Any) -> bool:
    """``True`` or ``False`` (also NumPy's bools); not 0/1, not a string such as ``"false"``."""
    if type(value).__name__ == "bool_" and hasattr(value, "item"):  # numpy.bool_
        value = value.item()
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_device(name: str, value: Any) -> torch.device:
    """A ``torch.device``, or a string naming one that this machine has (``"cpu"``, ``"cuda:0"``).

    Torch's own answer to ``"tpu"`` is a ``RuntimeError`` listing two dozen device types, and a
    CUDA device on a machine without one fails only at the first allocation; both become a
    ``ValueError`` naming the argument here.
    """
    if isinstance(value, str):
        try:
            dev = torch.device(value)
        except RuntimeError:
            raise ValueError(f"{name} must name a device such as 'cpu', 'cuda' or 'cuda:0', got {value!r}") from None
    elif isinstance(value, torch.device):
        dev = value
    else:
        raise TypeError(f"{name} must be a torch.device or a string such as 'cpu' or 'cuda:0', got {value!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} is {value!r} but no CUDA device is available (use 'cpu')")
    return dev


def choice(name: str, value: Any, options: Sequence[str]) -> str:
    """One of the strings ``options``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def _sequence(name: str, value: Any, n: int, what: str, allow_scalar: bool, scalar_type: type) -> tuple:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist() if value.dim() > 0 else value.item()
    if allow_scalar and isinstance(value, scalar_type) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence of {n} {what}, got {value!r}")
    seq = tuple(value)
    if len(seq) != n:
        raise ValueError(f"{name} must have {n} entries, got {len(seq)}: {value!r}")
    return seq


# n = 2 or 3 (pairs and triples): typed as such, so that callers get fixed-length tuples
@overload
def int_tuple(name: str, value: Any, n: Literal[2], minimum: int | None = 1, allow_scalar: bool = False
              ) -> tuple[int, int]: ...
@overload
def int_tuple(name: str, value: Any, n: Literal[3], minimum: int | None = 1, allow_scalar: bool = False
              ) -> tuple[int, int, int]: ...
@overload
def int_tuple(name: str, value: Any, n: int, minimum: int | None = 1, allow_scalar: bool = False
              ) -> tuple[int, ...]: ...
def int_tuple(name: str, value: Any, n: int, minimum: int | None = 1, allow_scalar: bool = False) -> tuple[int, ...]:
    """``n`` integers (each at least ``minimum``); one integer is repeated ``n`` times if
    ``allow_scalar``. Floats and bools are refused, not truncated."""
    seq = _sequence(name, value, n, "integers", allow_scalar, numbers.Integral)
    out = []
    for v in seq:
        v = _scalar(v)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must contain integers, got {value!r}")
        out.append(int(v))
    if minimum is not None and any(v < minimum for v in out):
        raise ValueError(f"{name} must be {'positive' if minimum == 1 else f'>= {minimum}'}, got {tuple(out)}")
    return tuple(out)


def int_triple(name: str, value: Any, allow_scalar: bool = False) -> tuple[int, int, int]:
    """Three positive integers (``(D, H, W)``-like)."""
    return int_tuple(name, value, 3, 1, allow_scalar)


@overload
def real_tuple(name: str, value: Any, n: Literal[2], positive: bool = False, allow_scalar: bool = False
               ) -> tuple[float, float]: ...
@overload
def real_tuple(name: str, value: Any, n: Literal[3], positive: bool = False, allow_scalar: bool = False
               ) -> tuple[float, float, float]: ...
@overload
def real_tuple(name: str, value: Any, n: int, positive: bool = False, allow_scalar: bool = False
               ) -> tuple[float, ...]: ...
def real_tuple(name: str, value: Any, n: int, positive: bool = False, allow_scalar: bool = False
               ) -> tuple[float, ...]:
    """``n`` finite real numbers (positive if asked); one number is repeated if ``allow_scalar``."""
    seq = _sequence(name, value, n, "numbers", allow_scalar, numbers.Real)
    out = []
    for v in seq:
        v = _scalar(v)
        if isinstance(v, bool) or not isinstance(v, numbers.Real):  # numpy scalars are numbers.Real
            raise TypeError(f"{name} must contain real numbers, got {value!r}")
        out.append(float(v))
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {tuple(out)}")
    if positive and any(v <= 0 for v in out):
        raise ValueError(f"{name} must be positive, got {tuple(out)}")
    return tuple(out)


def check_patch(offset: Any, shape: Any, vol_shape: Sequence[int], axes: str = "DHW"
                ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A patch ``[offset, offset + shape)`` lying inside ``vol_shape``; both returned as int triples."""
    shape = int_triple("shape", shape)
    off = int_tuple("offset", offset, 3, minimum=None)
    for o, p, n, axis in zip(off, shape, vol_shape, axes):
        if o < 0 or o + p > n:
            raise ValueError(f"patch [{o}, {o + p}) along {axis} lies outside the volume of size {n}")
    return off, shape


def check_tensor(t: Any, name: str, ndim: int | None = None, dtypes: Sequence[torch.dtype] = REAL_DTYPES) -> None:
    """``t`` is a tensor of ``ndim`` dimensions (any if ``None``) and one of ``dtypes``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = "/".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}, got {t.dtype}")


def check_like(t: Any, name: str, ref: torch.Tensor, ref_name: str, shape: Sequence[int],
               also: Sequence[torch.dtype] = ()) -> None:
    """``t`` is a tensor with ``ref``'s dtype (or one of ``also``) and device and exactly ``shape``."""
    check_tensor(t, name, len(shape), FLOAT_DTYPES)
    if t.dtype != ref.dtype and t.dtype not in also:
        alternatives = "".join(f" or {str(d).replace('torch.', '')}" for d in also if d != ref.dtype)
        raise TypeError(f"{name} must have the same dtype as {ref_name} ({ref.dtype}){alternatives}, got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_finite(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` holds no NaN or infinity (real or complex); the message counts the bad entries.

    One pass over the data: meant for inputs (files, measurements handed to a command), not for
    the inner loop of an operator. Skipped inside a compiled graph (a data-dependent branch).
    """
    if torch.compiler.is_compiling():
        return t
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n = int(bad.sum())
        raise ValueError(f"{name} contains NaN or infinite values ({n} of {t.numel()} entries)")
    return t


def check_nonempty(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` has at least one entry on every axis (an empty batch is refused here, not deep in
    a library's FFT or BLAS call)."""
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): every dimension, the batch included, "
                         f"must be at least 1")
    return t


def memory_of(device: torch.device | str = "cpu") -> int | None:
    """Total memory of ``device`` in bytes (host RAM for the CPU), ``None`` when unknown."""
    dev = torch.device(device)
    try:
        if dev.type == "cuda":
            return int(torch.cuda.get_device_properties(dev).total_memory)
        if dev.type == "cpu":
            import os

            return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError, RuntimeError, AssertionError):
        return None
    return None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"  # pragma: no cover


def check_allocation(name: str, shape: Sequence[int], dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> None:
    """Refuse, before allocating, an array larger than the whole memory of ``device``.

    Without this check a size typo (``--size 100000``) reaches the allocator, whose C++ message
    (``DefaultCPUAllocator: can't allocate memory ...``) names no argument. Only the impossible
    is refused: an array that fits the device but not its free memory is left to the allocator.
    Skipped inside a compiled graph (the sizes were checked when the graph was traced eagerly,
    and ``os.sysconf`` cannot be traced).
    """
    if torch.compiler.is_compiling():
        return
    n = 1
    for s in shape:
        n *= int(s)
    need = n * torch.empty((), dtype=dtype).element_size()
    total = memory_of(device)
    if total is not None and need > total:
        raise ValueError(f"{name} of shape {tuple(int(s) for s in shape)} ({str(dtype).replace('torch.', '')}) "
                         f"needs {_human(need)}, more than the {_human(total)} of memory of "
                         f"{torch.device(device).type}")
