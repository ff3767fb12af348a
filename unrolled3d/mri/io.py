r"""Readers for multi-coil 3D k-space.

Returned layout: complex ``(N_c, D, H, W)`` -- coils first, then the two phase-encode axes
``(D, H)``, readout ``W`` last; the zero frequency at index ``n // 2`` of each axis (centred, as
:class:`~unrolled3d.mri.MultiCoilMRI3D` produces and expects). Use :func:`as_measurement` to
get the operator's real ``(1, 2, N_c, D, H, W)`` layout.

Files stored slice-major, like fastMRI's ``(slices, coils, H, W)``, are read with
``coil_axis=1`` (the axes are moved, nothing is transformed: fastMRI's slice axis is in image
space, a 2D multi-slice acquisition; FFT it along ``D`` yourself only if that is what you
want). Complex data is required (HDF5 compound ``{r, i}`` as written by h5py / fastMRI, or a
complex ``.npy``).

Errors: missing file -> ``FileNotFoundError``; everything wrong with an existing file (truncated
or corrupt, another format, a missing dataset (listing the keys present), real or integer data,
the wrong number of axes, NaN or infinite samples) -> :class:`KspaceFileError`, a
:class:`~unrolled3d.errors.FileFormatError` (so a ``ValueError``) naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import FileFormatError
from .physics import from_complex_image

__all__ = ["read_kspace_h5", "read_kspace_npy", "as_measurement", "KspaceFileError"]


class KspaceFileError(FileFormatError):
    """The file exists but cannot be read as k-space (truncated, corrupt, not the right format).

    Examples
    --------
    >>> import os, tempfile
    >>> from unrolled3d.mri import KspaceFileError, read_kspace_npy
    >>> path = os.path.join(tempfile.mkdtemp(), "k.npy")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"not a NumPy file")
    >>> try:
    ...     read_kspace_npy(path)
    ... except KspaceFileError as err:
    ...     print(type(err).__name__, isinstance(err, ValueError), err.path == path)
    KspaceFileError True True
    """


def _check_options(coil_axis: int, dtype: torch.dtype | None) -> None:
    if isinstance(coil_axis, bool) or coil_axis not in (0, 1):
        raise ValueError(f"coil_axis must be 0 ((N_c, D, H, W)) or 1 ((D, N_c, H, W), fastMRI-like), got {coil_axis!r}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_complex):
        raise TypeError(f"dtype must be a complex torch.dtype, got {dtype!r}")


def _finish(arr: np.ndarray, path: Path, source: str, coil_axis: int, dtype: torch.dtype | None) -> torch.Tensor:
    if not np.iscomplexobj(arr):
        raise KspaceFileError(path, f"{source}k-space must be complex, got dtype {arr.dtype} (store complex64/complex128)")
    if arr.ndim != 4:
        raise KspaceFileError(path, f"{source}k-space must have 4 axes (N_c, D, H, W) (or (D, N_c, H, W) with "
                                    f"coil_axis=1), got shape {arr.shape}")
    if 0 in arr.shape:
        raise KspaceFileError(path, f"{source}k-space is empty, shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise KspaceFileError(path, f"{source}k-space holds NaN or infinite samples")
    if coil_axis == 1:
        arr = np.moveaxis(arr, 1, 0)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if dtype is not None:
        t = t.to(dtype)
    return t


def _existing(path) -> Path:
    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"no k-space file at {p}")
    return p


def read_kspace_h5(path: str | os.PathLike, key: str = "kspace", coil_axis: int = 0,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Read complex k-space from dataset ``key`` of an HDF5 file -> ``(N_c, D, H, W)`` complex tensor.

    Parameters
    ----------
    coil_axis
        0 if the file stores ``(N_c, D, H, W)``; 1 for ``(D, N_c, H, W)`` (fastMRI order).
    dtype
        cast to this complex dtype (default: as stored).
    """
    import h5py

    _check_options(coil_axis, dtype)
    p = _existing(path)
    try:
        f = h5py.File(p, "r")
    except OSError as err:
        raise KspaceFileError(p, f"cannot open as HDF5 (truncated, corrupt or not HDF5): {err}") from None
    with f:
        if key not in f:
            raise KspaceFileError(p, f"no dataset {key!r}; the file has {sorted(f.keys())}")
        ds = f[key]
        if not isinstance(ds, h5py.Dataset):
            raise KspaceFileError(p, f"{key!r} is a group, not a dataset")
        try:
            arr = ds[()]
        except (OSError, ValueError, TypeError) as err:
            raise KspaceFileError(p, f"cannot read dataset {key!r} (truncated or corrupt): {err}") from None
    return _finish(np.asarray(arr), p, f"dataset {key!r}: ", coil_axis, dtype)


def read_kspace_npy(path: str | os.PathLike, coil_axis: int = 0, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Read complex k-space from a ``.npy`` file -> ``(N_c, D, H, W)`` complex tensor (no pickles)."""
    _check_options(coil_axis, dtype)
    p = _existing(path)
    with open(p, "rb") as f:
        head = f.read(6)
    if head != b"\x93NUMPY":  # np.load would open a zip (a torch file, an .npz) as an archive
        raise KspaceFileError(p, "not a .npy file (no NumPy header: another format, truncated or corrupt)")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        raise KspaceFileError(p, f"cannot read as .npy (truncated, corrupt or not .npy): {err}") from None
    return _finish(arr, p, "", coil_axis, dtype)


def as_measurement(kspace: torch.Tensor) -> torch.Tensor:
    """Complex ``(N_c, D, H, W)`` -> the operator's real ``(1, 2, N_c, D, H, W)`` (a view)."""
    if not isinstance(kspace, torch.Tensor) or not kspace.is_complex() or kspace.ndim != 4:
        raise ValueError(f"kspace must be a complex (N_c, D, H, W) tensor, got "
                         f"{getattr(kspace, 'dtype', type(kspace))} {tuple(getattr(kspace, 'shape', ()))}")
    return from_complex_image(kspace[None])
