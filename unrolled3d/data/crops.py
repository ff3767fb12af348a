r"""Random sub-volumes of volume files as training volumes, read lazily.

Partitioned training (``L_PART``) needs one patch and its context, never a whole scan: each item
of :class:`RandomCropDataset` is a ``size`` sub-volume of one of the files, read through
:class:`~unrolled3d.io.LazyVolume` (a memory map or a sliced dataset), so memory stays flat in
the size of the files. Item ``i`` is drawn from a generator seeded by ``(seed, i)``: the file
(uniformly), the corner (uniformly among those that keep the block inside the volume) and the
augmentation (:class:`~unrolled3d.data.Augmentation`); it is the same on every access, so a run
is reproducible from its seeds and a resumed run continues identically.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .._validation import boolean, int_triple, integer
from ..errors import FileFormatError
from ..io import LazyVolume
from .augment import Augmentation
from .normalization import SAMPLE_VOXELS, IntensityNormalization

__all__ = ["RandomCropDataset", "Crop"]


@dataclasses.dataclass(frozen=True)
class Crop:
    """Where item ``i`` of a :class:`RandomCropDataset` comes from.

    Attributes
    ----------
    file : int
        index into ``dataset.paths``.
    start : (int, int, int)
        ``(z0, y0, x0)`` of the block in the file (negative or past the end where ``pad=True``
        pads a small volume).
    augmentation : dict
        the draws of :meth:`Augmentation.draw <unrolled3d.data.Augmentation.draw>`.

    Examples
    --------
    >>> from unrolled3d.data import Crop
    >>> Crop(0, (1, 2, 3), {}).start
    (1, 2, 3)
    """

    file: int
    start: tuple[int, int, int]
    augmentation: dict


class RandomCropDataset(Dataset):
    r"""Random ``size`` sub-volumes of volume files, normalised and augmented: float32 ``(1, D, H, W)``.

    Parameters
    ----------
    paths : sequence of str or path
        volume files in any format of :class:`~unrolled3d.io.LazyVolume` (see
        :func:`~unrolled3d.data.expand_volume_paths` for folders and globs), of any size and
        voxel size: a block is taken voxel for voxel (no resampling; the voxel sizes are
        recorded in :meth:`describe`).
    size : int or (int, int, int)
        ``(D, H, W)`` of the blocks, in voxels (e.g. the training scan's volume).
    normalization : IntensityNormalization
        the units of the values (default: attenuation in 1/mm, unchanged).
    augmentation : Augmentation
        random flips, quarter turns, intensity scaling (default: none).
    length : int
        number of items (distinct random blocks; ``train`` draws indices among them).
    seed : int
        seed of the blocks and augmentations.
    key : str, optional
        the HDF5 dataset holding the volume (default ``"volume"``).
    pad : bool
        a file smaller than ``size`` along an axis: ``False`` (default) refuses it with a
        :class:`~unrolled3d.errors.FileFormatError`; ``True`` places it at a random position
        inside the block and fills the rest with 0 in the training units (air).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from unrolled3d.data import Augmentation, RandomCropDataset
    >>> d = tempfile.mkdtemp()
    >>> np.save(os.path.join(d, "a.npy"), np.random.rand(20, 16, 16).astype(np.float32))
    >>> ds = RandomCropDataset([os.path.join(d, "a.npy")], 8, augmentation=Augmentation(flip=True), length=10)
    >>> ds[3].shape, bool(torch.equal(ds[3], ds[3]))
    (torch.Size([1, 8, 8, 8]), True)
    """

    def __init__(self, paths: Sequence[str | os.PathLike], size: int | Sequence[int],
                 normalization: IntensityNormalization | None = None, augmentation: Augmentation | None = None,
                 length: int = 100_000, seed: int = 0, key: str | None = None, pad: bool = False) -> None:
        if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, Sequence):
            raise TypeError(f"paths must be a list of volume files, got {paths!r}")
        if not paths:
            raise ValueError("paths is empty: a RandomCropDataset needs at least one volume file")
        self.size = int_triple("size", size, allow_scalar=True)
        norm = IntensityNormalization() if normalization is None else normalization
        if not isinstance(norm, IntensityNormalization):
            raise TypeError(f"normalization must be an IntensityNormalization, got {type(norm).__name__}")
        aug = Augmentation() if augmentation is None else augmentation
        if not isinstance(aug, Augmentation):
            raise TypeError(f"augmentation must be an Augmentation, got {type(aug).__name__}")
        self.normalization, self.augmentation = norm, aug
        self.length = integer("length", length, 1)
        self.seed = integer("seed", seed, 0)
        self.pad = boolean("pad", pad)
        self.key = key
        self.volumes = [LazyVolume(p, key=key if _is_hdf5(p) else None) for p in paths]
        self.paths = [v.path for v in self.volumes]
        for v in self.volumes:
            small = [f"{a} {n} < {s}" for a, n, s in zip("DHW", v.shape, self.size) if n < s]
            if small and not self.pad:
                raise FileFormatError(v.path, f"the volume {v.shape} is smaller than the training block {self.size} "
                                              f"({', '.join(small)}): use larger volumes, a smaller block, or padding "
                                              f"(pad = true pads with air)")
        # the per-file affine map to the training units; a percentile is computed once, from a sample
        self.affines: list[tuple[float, float]] = []
        for v in self.volumes:
            try:
                self.affines.append(norm.affine(v.sample(SAMPLE_VOXELS) if norm.needs_sample else None))
            except ValueError as exc:
                raise FileFormatError(v.path, str(exc)) from None

    def __len__(self) -> int:
        return self.length

    def describe(self) -> dict[str, Any]:
        """The files (resolved names, sizes, shapes, voxel sizes, affine maps) and every option
        (what a training run's fingerprint records)."""
        files = [{"path": str(v.path.resolve()), "bytes": v.path.stat().st_size, "shape": list(v.shape),
                  "voxel_size": list(v.voxel_size), "affine": list(a)} for v, a in zip(self.volumes, self.affines)]
        return {"type": "RandomCropDataset", "files": files, "size": list(self.size), "length": self.length,
                "seed": self.seed, "key": self.key, "pad": self.pad,
                "normalization": self.normalization.to_dict(), "augmentation": self.augmentation.to_dict()}

    def generator(self, i: int) -> torch.Generator:
        """The CPU generator of item ``i`` (a fresh one, seeded by ``(seed, i)``)."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"dataset index must be an integer, got {i!r}")
        i = int(i) + self.length if i < 0 else int(i)
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a dataset of {self.length} blocks")
        state = np.random.SeedSequence([self.seed, i]).generate_state(2, dtype=np.uint32)
        return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))

    def crop(self, i: int) -> Crop:
        """Where item ``i`` comes from (file, corner, augmentation draws), without reading it."""
        gen = self.generator(i)
        f = int(torch.randint(len(self.volumes), (1,), generator=gen))
        shape = self.volumes[f].shape
        # a block inside the volume; a smaller volume (pad=True) lies at a random place inside the block
        start = tuple(int(torch.randint(n - s + 1, (1,), generator=gen)) if n >= s
                      else -int(torch.randint(s - n + 1, (1,), generator=gen)) for n, s in zip(shape, self.size))
        return Crop(f, start, self.augmentation.draw(gen, self.size[1:]))  # type: ignore[arg-type]

    def _block(self, crop: Crop) -> np.ndarray:
        """The block of ``crop`` in training units, ``self.size``, zero outside the volume."""
        vol = self.volumes[crop.file]
        lo = [max(0, s0) for s0 in crop.start]
        hi = [min(n, s0 + s) for s0, s, n in zip(crop.start, self.size, vol.shape)]
        data = vol.read(lo, [h - l for l, h in zip(lo, hi)])
        if not np.isfinite(data).all():
            raise FileFormatError(vol.path, f"the block at {tuple(lo)} of size {data.shape} holds NaN or inf values")
        data = self.normalization.apply(data, *self.affines[crop.file])
        if data.shape == self.size:
            return data
        out = np.zeros(self.size, dtype=np.float32)  # air in the training units
        out[tuple(slice(l - s0, h - s0) for l, h, s0 in zip(lo, hi, crop.start))] = data
        return out

    def __getitem__(self, i: int) -> torch.Tensor:
        crop = self.crop(i)
        return self.augmentation.apply(torch.from_numpy(self._block(crop))[None], crop.augmentation)


def _is_hdf5(path: str | os.PathLike) -> bool:
    return Path(path).name.lower().endswith((".h5", ".hdf5"))
