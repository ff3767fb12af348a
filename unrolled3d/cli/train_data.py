"""The ``[data]`` section of a training configuration: volume files instead of synthetic phantoms.

::

    [data]
    paths = ["scans/*.nii.gz", "more/head.h5"]   # files, folders, glob patterns (relative to the TOML)
    h5_key = "volume"            # HDF5 dataset holding the volume
    normalization = "hu"         # "attenuation" (1/mm, as is), "hu" or "percentile"
    mu_water = 0.0193            # "hu" only: water's attenuation in 1/mm
    # percentile = 99.0          # "percentile" only: this percentile of each volume ...
    # percentile_value = 1.0     # ... maps to this value
    seed = 0                     # the blocks, the augmentations and the held-out split
    val_files = 1                # files held out for validation (whole files, drawn by seed)
    val_crops = 2                # validation blocks drawn from them ([train] val_every)
    flip = true                  # random flips of z, y, x
    rot90 = true                 # random quarter turns in the axial plane
    intensity = [0.9, 1.1]       # random intensity scaling (false: none)
    pad = false                  # volumes smaller than the block: refuse (false) or pad with air

Every training item is a random block of ``[geometry] size``^3 voxels of one of the training
files (:class:`~unrolled3d.data.RandomCropDataset`, read lazily); see :mod:`unrolled3d.data.normalization`
for what the normalisations do and how ``reconstruct`` applies them from the model file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..training.config import DataConfig

__all__ = ["normalization_of", "augmentation_of", "build_file_data", "TRAIN_BLOCKS"]

#: how many blocks the training set draws its items among (as many as the phantoms' 100 000)
TRAIN_BLOCKS = 100_000


def _section(data: DataConfig | Mapping[str, Any]) -> DataConfig:
    """A :class:`~unrolled3d.training.DataConfig` (a ``[data]`` table is read as one)."""
    return data if isinstance(data, DataConfig) else DataConfig.from_dict(data)


def normalization_of(data: DataConfig | Mapping[str, Any]):
    """The :class:`~unrolled3d.data.IntensityNormalization` of a ``[data]`` section."""
    return _section(data).normalization_map()


def augmentation_of(data: DataConfig | Mapping[str, Any]):
    """The :class:`~unrolled3d.data.Augmentation` of a ``[data]`` section."""
    return _section(data).augmentation()


def build_file_data(data: DataConfig | Mapping[str, Any], size: int, root: str | Path):
    """``(training set, validation set or None, held-out files, normalisation)`` of a ``[data]``
    section: the files expanded (relative to ``root``), split by file, and random ``size``^3
    blocks of them (the validation blocks without augmentation, another seed)."""
    from ..data import RandomCropDataset, expand_volume_paths, split_by_file

    data = _section(data)
    files = expand_volume_paths(list(data.paths), root=root, name="[data] paths")
    if data.val_files >= len(files):
        raise ValueError(f"[data] val_files = {data.val_files} holds out every one of the {len(files)} files: "
                         f"at least one must remain for training")
    train_files, held_out = split_by_file(files, data.val_files, seed=data.seed)
    norm = data.normalization_map()
    train_set = RandomCropDataset(train_files, size, normalization=norm, augmentation=data.augmentation(),
                                  length=TRAIN_BLOCKS, seed=data.seed, key=data.h5_key, pad=data.pad)
    val_set = None
    if held_out:
        val_set = RandomCropDataset(held_out, size, normalization=norm, length=data.val_crops, seed=data.seed + 1,
                                    key=data.h5_key, pad=data.pad)
    return train_set, val_set, held_out, norm
