"""Volume datasets: synthetic phantoms made on the fly, and volumes stored in files.

Every item is a ``float32`` tensor ``(1, D, H, W)`` (one channel), as the training loop and
``torch.utils.data.DataLoader`` expect.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .._validation import boolean, choice, int_triple, int_tuple, integer, real, real_tuple
from ..errors import FileFormatError
from ..io.lazy import _npy_map
from ..io.hdf5 import dataset as _h5_dataset, open_file as _h5_open, read_whole as _h5_read_whole
from .phantoms import Ellipsoid, random_ellipsoids, shepp_logan_3d, voxelize
from .textured import textured_phantom

__all__ = ["PhantomDataset", "VolumeFileDataset"]

_NPY_SUFFIXES = (".npy",)
_H5_SUFFIXES = (".h5", ".hdf5")


def _index(i, n: int) -> int:
    if isinstance(i, bool) or not isinstance(i, numbers.Integral):
        raise TypeError(f"dataset index must be an integer, got {i!r}")
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for a dataset of {n} volumes")
    return i


class PhantomDataset(Dataset):
    r"""Synthetic volumes generated on the fly, deterministically: item ``i`` is always the same.

    Item ``i`` draws from a CPU generator seeded by ``(seed, i)`` (numpy ``SeedSequence``), so
    it does not depend on the order of access, on workers, or on other items.

    Parameters
    ----------
    length : int
        number of items.
    vol_shape
        ``(D, H, W)`` (or one int).
    kind : str
        ``"ellipsoids"`` (random foam/blob phantoms,
        :func:`~unrolled3d.data.random_ellipsoids`) or ``"shepp_logan"`` (the 3D Shepp-Logan head,
        randomly scaled in ``scale_range`` and rotated about ``z`` per item) or ``"textured"``
        (smooth soft tissue, organs, texture, fine high-contrast structure, made on the voxel grid:
        :func:`~unrolled3d.data.textured.textured_phantom`; the options below other than
        ``seed`` do not apply to it).
    n_ellipsoids
        number of ellipsoids, an int or an inclusive range ``(low, high)``.
    seed : int
        dataset seed.
    voxel_size
        ``(sz, sy, sx)`` in mm (as for the geometry; default 1).
    fill : float
        phantom radius as a fraction of the volume's smallest half extent.
    value_range
        densities of the random ellipsoids (``kind="ellipsoids"``).
    max_semi_axis : float
        largest semi-axis as a fraction of the radius.
    scale_range
        random radius scale of the Shepp-Logan phantom.
    supersample : int
        partial-volume sub-samples per voxel and axis (see :func:`voxelize`).

    Examples
    --------
    >>> from unrolled3d.data import PhantomDataset
    >>> phantoms = PhantomDataset(3, (8, 10, 12), seed=1)
    >>> len(phantoms), phantoms[0].shape
    (3, torch.Size([1, 8, 10, 12]))
    >>> bool((phantoms[2] == phantoms[2]).all())    # made on the fly, the same every time
    True
    """

    KINDS = ("ellipsoids", "shepp_logan", "textured")

    def __init__(self, length: int, vol_shape: int | Sequence[int], kind: str = "ellipsoids",
                 n_ellipsoids: int | Sequence[int] = (4, 12), seed: int = 0,
                 voxel_size: float | Sequence[float] = 1.0, fill: float = 0.9,
                 value_range: Sequence[float] = (0.1, 1.0), max_semi_axis: float = 0.4,
                 scale_range: Sequence[float] = (0.8, 1.0), supersample: int = 1) -> None:
        length = integer("length", length, 1)
        kind = kind.replace("-", "_").lower() if isinstance(kind, str) else kind
        choice("kind", kind, self.KINDS)
        seed = integer("seed", seed, 0)
        n_range = int_tuple("n_ellipsoids", n_ellipsoids, 2, minimum=0, allow_scalar=True)
        if n_range[0] > n_range[1]:
            raise ValueError(f"n_ellipsoids must satisfy 0 <= low <= high, got {n_ellipsoids!r}")
        voxel_size = real_tuple("voxel_size", voxel_size, 3, positive=True, allow_scalar=True)
        fill = real("fill", fill, positive=True)
        if fill > 1:
            raise ValueError(f"fill must be in (0, 1], got {fill!r}")
        lo, hi = real_tuple("scale_range", scale_range, 2, positive=True)
        if lo > hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
        value_range = real_tuple("value_range", value_range, 2)
        max_semi_axis = real("max_semi_axis", max_semi_axis, positive=True)
        supersample = integer("supersample", supersample, 1)
        self.length = int(length)
        self.vol_shape = int_triple("vol_shape", vol_shape, allow_scalar=True)
        self.kind = kind
        self.n_range = n_range
        self.seed = int(seed)
        self.voxel_size = voxel_size
        self.fill = float(fill)
        self.value_range = tuple(value_range)
        self.max_semi_axis = float(max_semi_axis)
        self.scale_range = (lo, hi)
        self.supersample = supersample
        self.radius = self.fill * 0.5 * min(n * s for n, s in zip(self.vol_shape, self.voxel_size))

    def __len__(self) -> int:
        return self.length

    def describe(self) -> dict:
        """Every setting that decides the items (what a training run's fingerprint records)."""
        return {"type": "PhantomDataset", "length": self.length, "vol_shape": list(self.vol_shape),
                "kind": self.kind, "n_ellipsoids": list(self.n_range), "seed": self.seed,
                "voxel_size": list(self.voxel_size), "fill": self.fill, "value_range": list(self.value_range),
                "max_semi_axis": self.max_semi_axis, "scale_range": list(self.scale_range),
                "supersample": self.supersample}

    def generator(self, i: int) -> torch.Generator:
        """The CPU generator of item ``i`` (a fresh one, seeded by ``(seed, i)``)."""
        state = np.random.SeedSequence([self.seed, _index(i, self.length)]).generate_state(2, dtype=np.uint32)
        return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))

    def phantom(self, i: int) -> list[Ellipsoid]:
        """The analytic phantom (list of ellipsoids, world mm) of item ``i``."""
        if self.kind == "textured":
            raise ValueError("a textured phantom is made on the voxel grid: it has no list of ellipsoids (use "
                             "dataset[i])")
        gen = self.generator(i)
        if self.kind == "ellipsoids":
            lo, hi = self.n_range
            n = int(torch.randint(lo, hi + 1, (1,), generator=gen))
            return random_ellipsoids(n, radius=self.radius, generator=gen, value_range=self.value_range,
                                     max_semi_axis=self.max_semi_axis)
        u = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
        scale = self.scale_range[0] + (self.scale_range[1] - self.scale_range[0]) * u[0]
        alpha = 2 * math.pi * u[1]  # rotation about z: R' = Rz(alpha) R, centre' = Rz(alpha) centre
        c, s = math.cos(alpha), math.sin(alpha)
        out = []
        for e in shepp_logan_3d(radius=self.radius * scale):
            x, y, z = e.centre
            phi, theta, psi = e.angles
            out.append(Ellipsoid(value=e.value, centre=(c * x - s * y, s * x + c * y, z),
                                 semi_axes=e.semi_axes, angles=(phi + alpha, theta, psi)))
        return out

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.kind == "textured":
            return textured_phantom(self.vol_shape, self.generator(i)).unsqueeze(0)
        vol = voxelize(self.phantom(i), self.vol_shape, voxel_size=self.voxel_size, supersample=self.supersample)
        return vol.unsqueeze(0)


def _check_volume(path, shape: tuple[int, ...], dtype: np.dtype, expected: tuple[int, int, int] | None) -> None:
    if dtype.hasobject or dtype.kind not in "fiu":
        raise FileFormatError(path, f"volumes must hold real numbers (float or integer), got dtype {dtype}")
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3:
        raise FileFormatError(path, f"expected a volume of shape (D, H, W) or (1, D, H, W), got {shape}")
    if expected is not None and tuple(shape) != expected:
        raise FileFormatError(path, f"volume has shape {tuple(shape)}, expected {expected}")


class VolumeFileDataset(Dataset):
    r"""Volumes stored one per file: ``.npy`` (memory-mapped) or HDF5 (``.h5`` / ``.hdf5``, needs
    ``h5py``), returned as ``float32`` tensors ``(1, D, H, W)``.

    A file holds an array ``(D, H, W)`` or ``(1, D, H, W)`` of a real dtype. Headers are
    checked when the dataset is made (``validate=True``): a ``.npy`` file shorter than its header
    announces (truncated copy), a corrupt header, a wrong shape or dtype raise a ``ValueError`` /
    ``TypeError`` naming the file, before training starts.

    Parameters
    ----------
    paths
        list of files, or one directory (its ``*.npy``, ``*.h5``, ``*.hdf5``, sorted).
    key : str
        dataset name inside HDF5 files (default: the file's only dataset).
    vol_shape
        required ``(D, H, W)`` of every volume (default: any, checked per file).
    validate : bool
        check every file's header when the dataset is made.
    check_finite : bool
        raise on NaN / inf values when an item is loaded.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from unrolled3d.data import VolumeFileDataset
    >>> path = os.path.join(tempfile.mkdtemp(), "v.npy")
    >>> np.save(path, np.zeros((4, 5, 6), np.float32))
    >>> VolumeFileDataset(path)[0].shape
    torch.Size([1, 4, 5, 6])
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], key: str | None = None,
                 vol_shape: int | Sequence[int] | None = None, validate: bool = True,
                 check_finite: bool = True) -> None:
        if isinstance(paths, (str, os.PathLike)):
            root = Path(paths)
            if root.is_dir():
                paths = sorted(p for p in root.iterdir() if p.suffix.lower() in _NPY_SUFFIXES + _H5_SUFFIXES)
            else:
                paths = [root]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("VolumeFileDataset needs at least one file")
        for p in self.paths:
            if p.suffix.lower() not in _NPY_SUFFIXES + _H5_SUFFIXES:
                raise ValueError(f"{p}: unsupported file type {p.suffix!r} (expected .npy, .h5 or .hdf5)")
            if not p.is_file():
                raise FileNotFoundError(f"volume file not found: {p}")
        self.key = key
        self.vol_shape = None if vol_shape is None else int_triple("vol_shape", vol_shape, allow_scalar=True)
        self.check_finite = boolean("check_finite", check_finite)
        if validate:
            for p in self.paths:
                self._inspect(p)

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self) -> dict:
        """The files (resolved names, sizes) and options (what a training run's fingerprint records)."""
        files = [[str(p.resolve()), p.stat().st_size if p.exists() else None] for p in self.paths]
        return {"type": "VolumeFileDataset", "files": files, "key": self.key,
                "vol_shape": None if self.vol_shape is None else list(self.vol_shape)}

    # ----------------------------------------------------------------- npy
    def _inspect_npy(self, path: Path) -> np.ndarray:  # a read-only memory map
        arr = _npy_map(path)  # a truncated file fails to map: caught here, naming it
        _check_volume(path, arr.shape, arr.dtype, self.vol_shape)
        return arr

    # ----------------------------------------------------------------- hdf5
    def _inspect_h5(self, path: Path, f):
        """The checked dataset of the open file ``f`` (no ``key``: the file's only dataset)."""
        ds = _h5_dataset(path, f, self.key, default=None, chooser="key=")
        _check_volume(path, tuple(ds.shape), ds.dtype, self.vol_shape)
        return ds

    def _inspect(self, path: Path) -> None:
        if path.suffix.lower() in _NPY_SUFFIXES:
            self._inspect_npy(path)
            return
        with _h5_open(path) as f:
            self._inspect_h5(path, f)

    # ----------------------------------------------------------------- items
    def load(self, i: int) -> np.ndarray:
        """The raw array of item ``i`` (``.npy``: a read-only memory map)."""
        path = self.paths[_index(i, len(self.paths))]
        if path.suffix.lower() in _NPY_SUFFIXES:
            return self._inspect_npy(path)
        with _h5_open(path) as f:
            # its size checked against the memory first; a corrupt dataset is a FileFormatError
            return _h5_read_whole(path, self._inspect_h5(path, f))

    def __getitem__(self, i: int) -> torch.Tensor:
        arr = self.load(i)
        vol = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
        if vol.ndim == 3:
            vol = vol.unsqueeze(0)
        if self.check_finite and not bool(torch.isfinite(vol).all()):
            raise FileFormatError(self.paths[_index(i, len(self.paths))], "the volume holds NaN or inf values")
        return vol
