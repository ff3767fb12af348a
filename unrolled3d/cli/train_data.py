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
from typing import Any

from .._validation import boolean, choice, integer, real, real_tuple

__all__ = ["DATA_DEFAULTS", "parse_data_section", "normalization_of", "augmentation_of", "build_file_data"]

DATA_DEFAULTS: dict[str, Any] = {"h5_key": None, "normalization": "attenuation", "seed": 0, "val_files": 0,
                                 "val_crops": 2, "flip": True, "rot90": True, "intensity": False, "pad": False}
# keys that belong to one normalisation only (given with another, they would be silently ignored)
_KIND_KEYS = {"mu_water": "hu", "percentile": "percentile", "percentile_value": "percentile"}
_KEYS = ("paths", *DATA_DEFAULTS, *_KIND_KEYS)
#: how many blocks the training set draws its items among (as many as the phantoms' 100 000)
TRAIN_BLOCKS = 100_000


def _paths(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"[data] paths must be a string or a list of strings (files, folders, glob patterns), "
                        f"got {value!r}")
    if not value:
        raise ValueError("[data] paths is empty: give at least one volume file, folder or glob pattern")
    return list(value)


def parse_data_section(values: dict[str, Any]) -> dict[str, Any]:
    """The checked ``[data]`` table with its defaults filled in (a ``ValueError``/``TypeError``
    naming ``[data] <key>`` for anything else)."""
    unknown = set(values) - set(_KEYS)
    if unknown:
        raise ValueError(f"unknown keys in [data]: {', '.join(sorted(unknown))} (known: {', '.join(_KEYS)})")
    if "paths" not in values:
        raise ValueError("[data] needs paths (volume files, folders or glob patterns)")
    out: dict[str, Any] = {"paths": _paths(values["paths"]), **DATA_DEFAULTS}
    for key, value in values.items():
        name = f"[data] {key}"
        if key == "h5_key":
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be the name of an HDF5 dataset (a string), got {value!r}")
        elif key == "normalization":
            value = choice(name, value, ("attenuation", "hu", "percentile"))
        elif key in ("seed", "val_files"):
            value = integer(name, value, 0)
        elif key == "val_crops":
            value = integer(name, value, 1)
        elif key in ("flip", "rot90", "pad"):
            value = boolean(name, value)
        elif key == "intensity":
            if value is not False:
                if value is True:
                    raise TypeError(f"{name} must be false or a range [low, high] of factors, got true")
                lo, hi = real_tuple(name, value, 2, positive=True)
                if lo > hi:
                    raise ValueError(f"{name} must be a range [low, high] with low <= high, got {value!r}")
                value = [lo, hi]
        elif key in ("mu_water", "percentile_value"):
            value = real(name, value, positive=True)
        elif key == "percentile":
            value = real(name, value, positive=True)
            if value > 100:
                raise ValueError(f"{name} must be in (0, 100], got {value!r}")
        if key != "paths":
            out[key] = value
    for key, kind in _KIND_KEYS.items():
        if key in values and out["normalization"] != kind:
            raise ValueError(f"[data] {key} applies to normalization = \"{kind}\" only, not to "
                             f"\"{out['normalization']}\"")
    return out


def normalization_of(data: dict[str, Any]):
    """The :class:`~unrolled3d.data.IntensityNormalization` of a parsed ``[data]`` table."""
    from ..data import IntensityNormalization

    params = {"mu_water": data.get("mu_water"), "percentile": data.get("percentile"),
              "value": data.get("percentile_value")}
    return IntensityNormalization(data["normalization"], **{k: v for k, v in params.items() if v is not None})


def augmentation_of(data: dict[str, Any]):
    """The :class:`~unrolled3d.data.Augmentation` of a parsed ``[data]`` table."""
    from ..data import Augmentation

    intensity = data["intensity"]
    return Augmentation(flip=data["flip"], rot90=data["rot90"], intensity=None if intensity is False else intensity)


def build_file_data(data: dict[str, Any], size: int, root: str | Path):
    """``(training set, validation set or None, held-out files, normalisation)`` of a parsed
    ``[data]`` table: the files expanded (relative to ``root``), split by file, and random
    ``size``^3 blocks of them (the validation blocks without augmentation, another seed)."""
    from ..data import RandomCropDataset, expand_volume_paths, split_by_file

    files = expand_volume_paths(data["paths"], root=root, name="[data] paths")
    if data["val_files"] >= len(files):
        raise ValueError(f"[data] val_files = {data['val_files']} holds out every one of the {len(files)} files: "
                         f"at least one must remain for training")
    train_files, held_out = split_by_file(files, data["val_files"], seed=data["seed"])
    norm = normalization_of(data)
    common = {"size": size, "normalization": norm, "key": data["h5_key"], "pad": data["pad"]}
    train_set = RandomCropDataset(train_files, augmentation=augmentation_of(data), length=TRAIN_BLOCKS,
                                  seed=data["seed"], **common)
    val_set = None
    if held_out:
        val_set = RandomCropDataset(held_out, length=data["val_crops"], seed=data["seed"] + 1, **common)
    return train_set, val_set, held_out, norm
