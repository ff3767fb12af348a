r"""A training run's configuration: one dataclass per TOML section, and :class:`RunConfig`, the file.

::

    [geometry]   GeometryConfig    the training scan: standard_cone_beam(size, views)
    [phantoms]   PhantomsConfig    synthetic training volumes (the default), or
    [data]       DataConfig        random blocks of volume files (see unrolled3d.cli.train_data)
    [model]      ModelConfig       the unrolled network (unrolled3d.models.config)
    [partition]  PartitionConfig   the training patch
    [train]      TrainConfig       the optimisation (what unrolled3d.training.train takes)
    [mri]        MRIConfig         an MRI run instead of CT: coils, accelerations, mask kind

Every key's default and bounds are stated once, on its field; the keys a table may hold are the
fields. The command line reads a file with :meth:`RunConfig.from_toml`, :func:`train` takes the
:class:`TrainConfig`, :func:`~unrolled3d.models.build_model` the model sections, and a model file
records :meth:`RunConfig.to_dict` (read back with :meth:`RunConfig.from_dict`).

Examples
--------
>>> from unrolled3d.training import RunConfig
>>> run = RunConfig.from_dict({"geometry": {"size": 32}, "train": {"steps": 10}})
>>> run.geometry.size, run.phantoms.kind, run.model.depth, run.train.lr
(32, 'ellipsoids', 2, 0.001)
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Literal, Mapping

from .._config import Section, short_repr, flag, integer_in, one_of, optional, real_in, setting, table_names, text
from .._validation import check_allocation, real_tuple
from ..data import Augmentation, IntensityNormalization, PhantomDataset
from ..data.normalization import NORMALIZATIONS
from ..errors import FileFormatError
from ..models.config import ModelConfig, PartitionConfig
from ..models.cost import check_model_memory

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as the tomli package (a dependency there)
    import tomli as tomllib

__all__ = ["TrainConfig", "GeometryConfig", "PhantomsConfig", "DataConfig", "MRIConfig", "RunConfig", "RECORDS",
           "SEED_MAX"]

#: seeds are 32-bit (numpy's and torch's generators take them; ``seed + rank`` cannot overflow)
SEED_MAX = 2**32 - 1
#: what a model file records beside the sections (how the data were scaled, which files, the start, the command,
#: the scale of the training scans and ||A|| of the training scan: unrolled3d.models.scale, unrolled3d.physics.norm)
RECORDS = ("normalization", "data_files", "init", "command", "training_scale", "operator_norm")
_seed = integer_in(0, SEED_MAX)
_count = integer_in(0, 10**9)


def _folder(name: str, value: Any) -> str | os.PathLike | None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a folder name (str or path) or None, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """``[train]``: the hyper-parameters of :func:`~unrolled3d.training.train`.

    Parameters
    ----------
    steps : int
        optimiser steps in total (a resumed run continues up to this).
    lr : float
        Adam learning rate (peak of the schedule).
    batch_size : int
        volumes per step (gradients accumulated one volume at a time, each with its own random
        patch; the loss is their mean).
    lr_schedule : str
        ``"cosine"`` (from ``lr`` to ``min_lr`` over ``steps``) or ``"constant"``.
    min_lr : float
        final learning rate of the cosine schedule.
    weight_decay : float
        Adam's L2 weight decay.
    grad_clip : float, optional
        clip the gradient norm to this (``None``: no clipping).
    seed : int
        seed of the data generator and of the global torch RNG (0 to ``2**32 - 1``).
    noise_std : float
        standard deviation of the Gaussian noise added to ``A x`` (absolute, in the units of
        ``physics.A``: the normalised measurements ``A x / ||A||`` for ``normalize=True``).
    checkpoint_every : int
        write a checkpoint every this many steps (0: only at the end).
    keep_checkpoints : int
        how many recent checkpoints to keep (>= 1).
    val_every : int
        validate every this many steps (0: never).
    out_dir : str or path, optional
        checkpoint folder (``None``: no checkpoints, no resumption).
    progress : bool
        show a progress bar with the loss, and the validation lines (stderr; not a TOML key).

    Examples
    --------
    >>> from unrolled3d.training import TrainConfig
    >>> TrainConfig(steps=100, lr=1e-3).to_dict()["lr_schedule"]
    'cosine'
    >>> TrainConfig(steps=0)
    Traceback (most recent call last):
        ...
    ValueError: TrainConfig.steps must be a positive integer, got 0
    """

    SECTION = "train"
    #: fields that are not part of a run's identity: how long it runs, how often it saves and
    #: validates, where and how it reports. Everything else is (with the physics, data and model).
    NOT_IDENTITY = ("steps", "checkpoint_every", "keep_checkpoints", "val_every", "out_dir", "progress")

    steps: int = setting(300, integer_in(1, 10**9))
    lr: float = setting(1e-3, real_in(above=0))
    batch_size: int = setting(1, integer_in(1, 10**4))
    lr_schedule: str = setting("cosine", one_of(("cosine", "constant")))
    min_lr: float = setting(0.0, real_in(low=0))
    weight_decay: float = setting(0.0, real_in(low=0))
    grad_clip: float | None = setting(None, optional(real_in(above=0)))
    seed: int = setting(0, _seed)
    noise_std: float = setting(0.01, real_in(low=0))
    checkpoint_every: int = setting(50, _count)
    keep_checkpoints: int = setting(2, integer_in(1, 10**6))
    val_every: int = setting(0, _count)
    out_dir: str | os.PathLike | None = setting(None, _folder)
    progress: bool = setting(True, flag, in_table=False)

    def to_dict(self) -> dict[str, Any]:
        """Every field as a primitive value (``out_dir`` as a string), as checkpoints store it."""
        d = dataclasses.asdict(self)
        d["out_dir"] = None if self.out_dir is None else os.fspath(self.out_dir)
        return d

    def to_table(self) -> dict[str, Any]:
        """The ``[train]`` table (the keys a TOML file may set, unset ones left out)."""
        return super().to_dict()

    def identity(self) -> dict[str, Any]:
        """The settings that make a run what it is (all but :attr:`NOT_IDENTITY`)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_IDENTITY}


@dataclasses.dataclass(frozen=True)
class GeometryConfig(Section):
    """``[geometry]``: the training scan, ``standard_cone_beam(size, views)`` (circular, 1 mm voxels).

    Examples
    --------
    >>> from unrolled3d.training import GeometryConfig
    >>> GeometryConfig(size=64).to_dict()
    {'size': 64, 'views': 30}
    """

    SECTION = "geometry"
    size: int = setting(48, integer_in(4, 2**62))
    views: int = setting(30, integer_in(1, 100_000))

    def check(self) -> None:
        # a volume no machine holds fails here, naming the key, not deep in the projector
        check_allocation(self.name("size"), (self.size,) * 3)


@dataclasses.dataclass(frozen=True)
class PhantomsConfig(Section):
    """``[phantoms]``: synthetic training volumes made on the fly (the default training data).

    Examples
    --------
    >>> from unrolled3d.training import PhantomsConfig
    >>> PhantomsConfig(kind="shepp-logan").kind
    'shepp_logan'
    """

    SECTION = "phantoms"
    kind: str = setting("ellipsoids", one_of(PhantomDataset.KINDS, hyphens=True))
    seed: int = setting(0, _seed)


def _paths(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a string or a list of strings (files, folders, glob patterns), "
                        f"got {short_repr(value)}")
    if not value:
        raise ValueError(f"{name} is empty: give at least one volume file, folder or glob pattern")
    return tuple(value)


def _intensity(name: str, value: Any) -> Literal[False] | tuple[float, float]:
    if value is False:
        return False
    if value is True:
        raise TypeError(f"{name} must be false or a range [low, high] of factors, got true")
    lo, hi = real_tuple(name, value, 2, positive=True)
    if lo > hi:
        raise ValueError(f"{name} must be a range [low, high] with low <= high, got {value!r}")
    return (lo, hi)


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """``[data]``: random blocks of volume files instead of phantoms (keys: :mod:`unrolled3d.cli.train_data`).

    Examples
    --------
    >>> from unrolled3d.training import DataConfig
    >>> data = DataConfig(paths="scans/*.nii.gz", normalization="hu", mu_water=0.02)
    >>> data.paths, data.normalization_map()
    (('scans/*.nii.gz',), IntensityNormalization(kind='hu', mu_water=0.02, percentile=99.0, value=1.0))
    >>> DataConfig.from_dict({"paths": "a.npy", "percentile": 90.0})
    Traceback (most recent call last):
        ...
    ValueError: [data] percentile applies to normalization = "percentile" only, not to "attenuation"
    """

    SECTION = "data"
    #: keys that belong to one normalisation only (given with another, they would be silently ignored)
    KIND_KEYS = {"mu_water": "hu", "percentile": "percentile", "percentile_value": "percentile"}

    paths: tuple[str, ...] = setting(rule=_paths)
    h5_key: str | None = setting(None, optional(text))
    normalization: str = setting("attenuation", one_of(NORMALIZATIONS))
    mu_water: float | None = setting(None, optional(real_in(above=0)))
    percentile: float | None = setting(None, optional(real_in(above=0, high=100)))
    percentile_value: float | None = setting(None, optional(real_in(above=0)))
    seed: int = setting(0, _seed)
    val_files: int = setting(0, integer_in(0, 10**6))
    val_crops: int = setting(2, integer_in(1, 10**4))
    flip: bool = setting(True, flag)
    rot90: bool = setting(True, flag)
    intensity: Literal[False] | tuple[float, float] = setting(False, _intensity)  # true is refused
    pad: bool = setting(False, flag)

    def check(self) -> None:
        for key, kind in self.KIND_KEYS.items():
            if getattr(self, key) is not None and self.normalization != kind:
                raise ValueError(f"{self.name(key)} applies to normalization = \"{kind}\" only, not to "
                                 f"\"{self.normalization}\"")

    def normalization_map(self) -> IntensityNormalization:
        """The :class:`~unrolled3d.data.IntensityNormalization` these keys describe."""
        params = {"mu_water": self.mu_water, "percentile": self.percentile, "value": self.percentile_value}
        return IntensityNormalization(self.normalization, **{k: v for k, v in params.items() if v is not None})

    def augmentation(self) -> Augmentation:
        """The :class:`~unrolled3d.data.Augmentation` these keys describe."""
        intensity = None if self.intensity is False else self.intensity
        return Augmentation(flip=self.flip, rot90=self.rot90, intensity=intensity)


def _accelerations(name: str, value: Any) -> tuple[float, float]:
    """``R`` or a range ``[R_low, R_high]`` of accelerations, each ``>= 1``."""
    pair = [value, value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    lo, hi = real_tuple(name, pair, 2)
    if lo < 1 or lo > hi:
        raise ValueError(f"{name} must be an acceleration R >= 1 or a range [low, high] with 1 <= low <= high, "
                         f"got {short_repr(value)}")
    return (lo, hi)


@dataclasses.dataclass(frozen=True)
class MRIConfig(Section):
    """``[mri]``: train for 3D multi-coil Cartesian MRI (:class:`~unrolled3d.mri.MultiCoilMRI3D`)
    instead of cone-beam CT.

    The training volumes (``[phantoms]`` or ``[data]``) are magnitudes: each item gets a random
    smooth phase (:func:`~unrolled3d.data.smooth_phase`, range up to ``max_phase``), is seen by
    ``coils`` birdcage coils (:func:`~unrolled3d.mri.birdcage_maps`) and undersampled by a
    ``mask`` mask (:func:`~unrolled3d.mri.variable_density_mask`) of an acceleration drawn
    uniformly in ``acceleration``, one of ``masks`` masks drawn once per run. ``[geometry] size``
    is the volume's edge; ``[geometry] views`` does not apply. Validation scans
    (``[train] val_every``) use one fixed mask of acceleration ``val_acceleration``.

    Examples
    --------
    >>> from unrolled3d.training import MRIConfig
    >>> MRIConfig.from_dict({"coils": 8, "acceleration": [4, 10]}).acceleration
    (4.0, 10.0)
    >>> MRIConfig(acceleration=0.5)
    Traceback (most recent call last):
        ...
    ValueError: MRIConfig.acceleration must be an acceleration R >= 1 or a range [low, high] ..., got 0.5
    """

    SECTION = "mri"
    coils: int = setting(8, integer_in(1, 256))
    acceleration: tuple[float, float] = setting((4.0, 10.0), _accelerations)
    mask: str = setting("poisson", one_of(("poisson", "random")))
    masks: int = setting(100, integer_in(1, 10**6))
    max_phase: float = setting(3.141592653589793, real_in(low=0, high=10))
    val_acceleration: float = setting(8.0, real_in(low=1))
    seed: int = setting(0, _seed)


_SECTIONS: dict[str, type[Section]] = {"geometry": GeometryConfig, "phantoms": PhantomsConfig, "data": DataConfig,
                                       "model": ModelConfig, "partition": PartitionConfig, "train": TrainConfig,
                                       "mri": MRIConfig}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole training configuration (a TOML file): one object per section.

    ``phantoms`` and ``data`` are exclusive (without ``data``, the default phantoms). The rules
    between sections are checked here: the patch fits the volume, validation needs held-out
    files, and the network with its optimiser state and the activations of one patch fits this
    machine's memory (:func:`~unrolled3d.models.cost.check_model_memory`).

    Examples
    --------
    >>> from unrolled3d.models import PartitionConfig
    >>> from unrolled3d.training import GeometryConfig, RunConfig
    >>> RunConfig(geometry=GeometryConfig(size=16), partition=PartitionConfig(patch=8)).to_dict()["partition"]
    {'patch': 8}
    >>> RunConfig(geometry=GeometryConfig(size=16))
    Traceback (most recent call last):
        ...
    ValueError: [partition] patch 24 is larger than the volume ([geometry] size 16)
    """

    geometry: GeometryConfig = dataclasses.field(default_factory=GeometryConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    partition: PartitionConfig = dataclasses.field(default_factory=PartitionConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    phantoms: PhantomsConfig | None = None
    data: DataConfig | None = None
    mri: MRIConfig | None = None

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls) and not (value is None and name in ("phantoms", "data", "mri")):
                raise TypeError(f"RunConfig.{name} must be a {cls.__name__}, got {type(value).__name__}")
        if self.phantoms is not None and self.data is not None:
            raise ValueError("[phantoms] and [data] are exclusive: train on synthetic phantoms or on volume files, "
                             "not both (remove one of the sections)")
        if self.data is None and self.phantoms is None:
            object.__setattr__(self, "phantoms", PhantomsConfig())
        if self.train.val_every and (self.data is None or not self.data.val_files):
            raise ValueError("[train] val_every needs held-out volumes: train from files ([data]) and hold some out "
                             "with [data] val_files")
        if self.partition.patch > self.geometry.size:
            raise ValueError(f"[partition] patch {self.partition.patch} is larger than the volume ([geometry] size "
                             f"{self.geometry.size})")
        check_model_memory(self.model, self.partition.patch, training=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], records: bool = False) -> "RunConfig":
        """The configuration of TOML tables (``records=True``: a model file's configuration, whose
        :data:`RECORDS` are skipped). Raises a ``ValueError``/``TypeError`` naming ``[section] key``."""
        if not isinstance(values, Mapping):
            raise TypeError(f"a configuration must be a table of sections, got {type(values).__name__}")
        unknown = [str(s)[:80] for s in values if s not in _SECTIONS and not (records and s in RECORDS)]
        if unknown:
            raise ValueError(f"unknown section [{unknown[0]}] (known: {', '.join(_SECTIONS)})")
        if "mri" in values and isinstance(values.get("geometry"), Mapping) and "views" in values["geometry"]:
            raise ValueError("[geometry] views is a CT setting: an MRI run ([mri]) samples k-space as [mri] says "
                             "(remove views)")
        with table_names():
            sections = {name: cls_.from_dict(values[name]) for name, cls_ in _SECTIONS.items() if name in values}
            return cls(**sections)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "RunConfig":
        """Read a TOML configuration; a :class:`~unrolled3d.errors.FileFormatError` names the file and
        the ``[section] key`` of any problem (values of the wrong kind are refused, never truncated)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except UnicodeDecodeError:
            raise FileFormatError(path, "not a text (TOML) file") from None
        except tomllib.TOMLDecodeError as exc:
            raise FileFormatError(path, f"not valid TOML ({exc})") from None
        except RecursionError:  # tomllib parses nested arrays and tables recursively
            raise FileFormatError(path, "not a usable TOML file: its arrays or tables are nested too deeply") from None
        try:
            return cls.from_dict(raw)
        except (TypeError, ValueError) as exc:
            raise FileFormatError(path, str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        """The TOML tables (what a model file records; ``[train] out_dir`` left out)."""
        out = {name: getattr(self, name).to_dict() for name in ("geometry", "phantoms", "data", "model", "partition")
               if getattr(self, name) is not None}
        if self.mri is not None:  # an MRI run: no views (the acquisition is [mri]'s)
            out["geometry"].pop("views")
            out["mri"] = self.mri.to_dict()
        out["train"] = {k: v for k, v in self.train.to_table().items() if k != "out_dir"}
        return out

    def identity(self) -> dict[str, Any]:
        """The sections that, with the training settings' :meth:`TrainConfig.identity`, make a run
        what it is (for :func:`~unrolled3d.training.run_description`'s ``extra``)."""
        return {k: v for k, v in self.to_dict().items() if k != "train"}
