r"""Trained models and what their files record: :class:`PretrainedModel` (loaded by
:func:`unrolled3d.load_pretrained`).

A model file (written by ``unrolled3d train``) holds the network's weights and the configuration
it was trained with: the scan recipe (``[geometry] size, views``, ``[train] noise_std``), the
training patch, how the training volumes were scaled (``normalization``), and, since this
release, the scale of the training scans (``training_scale``, :mod:`unrolled3d.models.scale`)
and ``||A||`` of the training scan. :func:`load_pretrained` reads all of it once; the object it
returns reconstructs (:func:`unrolled3d.api.reconstruct`, which applies those rules).

Shipped models, by name:

=============  ===================================================================================
``demo_ct``    the demo's network (base 8, K = 5), trained on random ellipsoids, 48^3, 30 views,
               noise 0.02 (``unrolled3d/weights/demo_ct.toml``)
``heads_ct``   the same network at base 12, trained on real anatomy (MNI152, INIA19 and a T1 head,
               MRI scaled so that the 99.5th percentile of a head is 1; a clinical head CT), same
               scan (``unrolled3d/weights/heads_ct.toml``)
=============  ===================================================================================

These are cone-beam CT models, as :func:`unrolled3d.reconstruct` is a CT reconstruction: an MRI model
file (``unrolled3d/weights/mri_heads.pt``, an ``[mri]`` section) is refused with the command that runs
it (``unrolled3d reconstruct KSPACE.pt --method unrolled --weights FILE``).

Model files written before they recorded their training scale get it from
``unrolled3d/weights/training_scales.json`` (the shipped files, by SHA-256; measured by
``bench/experiments/training_scales.py``), or, for models trained on phantoms, from their recipe
(the phantoms regenerated and scanned as in training). Otherwise the scale check is skipped.

Examples
--------
>>> import unrolled3d
>>> model = unrolled3d.load_pretrained("demo_ct")
>>> model.name, model.scan, model.patch, model.normalization.kind
('demo_ct', {'size': 48, 'views': 30, 'noise_std': 0.02}, 24, 'attenuation')
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ._validation import check_device, choice, int_triple
from .errors import FileFormatError

__all__ = ["PretrainedModel", "PRETRAINED", "WEIGHTS_DIR", "TRAINING_SCALES_FILE", "check_modality"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: the shipped models: name -> file in :data:`WEIGHTS_DIR`
PRETRAINED = {"demo_ct": "demo_ct.pt", "heads_ct": "heads_ct.pt"}
#: why a model of one modality is refused on data of the other (key: what the model was trained for)
_OTHER_MODALITY = {
    "mri": "is an MRI model (trained on multi-coil k-space: its configuration has [mri]), the measurements are "
           "cone-beam CT: use a CT model (e.g. heads_ct)",
    "ct": "is a CT model (trained on cone-beam scans), the file holds MRI k-space: use an MRI model "
          "(e.g. unrolled3d/weights/mri_heads.pt)"}
#: training scales of model files written before files recorded them (SHA-256 -> TrainingScale dict)
TRAINING_SCALES_FILE = WEIGHTS_DIR / "training_scales.json"


class PretrainedModel:
    """A trained partitioned unrolled network and the rules of its training, ready to reconstruct.

    :func:`unrolled3d.load_pretrained` returns one (an :class:`unrolled3d.api.Reconstructor`,
    callable: ``model(y, geometry_or_physics, **options)`` is :func:`unrolled3d.reconstruct`).

    Attributes
    ----------
    name : str or None
        the shipped model's name (``None`` for another file).
    path : Path
        the model file.
    config : dict
        the configuration the file records.
    base : torch.nn.Module
        the unrolled network (``UnrolledPGD``), weights loaded, in eval mode.
    normalization : IntensityNormalization
        how the training volumes were scaled (applied to measurements and undone on the output).
    scan : dict
        the training scan: ``size`` (volume edge), ``views``, ``noise_std`` (on the normalised
        measurements; ``None`` where the file does not say).
    patch : int
        the training patch edge.
    sha256 : str
        the file's SHA-256.

    Examples
    --------
    >>> import torch, unrolled3d
    >>> from unrolled3d.physics import standard_cone_beam
    >>> model = unrolled3d.load_pretrained("demo_ct")
    >>> rec = model.reconstructor((20, 20, 20))          # the training patch, cut to the volume
    >>> rec.patch_shape, rec.img_shape
    ((20, 20, 20), (20, 20, 20))
    >>> model.training_scale.percentile
    99.5
    """

    def __init__(self, path: str | os.PathLike, name: str | None = None, device: torch.device | str = "cpu") -> None:
        from .io import load_model

        self.path, self.name = Path(path), name
        state, self.config = load_model(self.path)
        check_modality(self.config, self.path, "ct")  # this class and unrolled3d.reconstruct serve cone-beam CT
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.normalization = file_normalization(self.config, self.path)
        self.scan = _scan_recipe(self.config)
        self.patch = int(self.config["partition"].get("patch", 24))
        self.base = build_from_file(self.config, state, self.path, (self.patch,) * 3).base
        self.base.to(check_device("device", device))
        self._scale: Any = _UNKNOWN

    def __repr__(self) -> str:
        what = self.name or str(self.path)
        return (f"PretrainedModel({what!r}: patch {self.patch}^3, normalisation {self.normalization.kind}, "
                f"trained at {self.scan})")

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def to(self, device: torch.device | str) -> "PretrainedModel":
        """Move the network to ``device`` (in place); returns ``self``."""
        self.base.to(check_device("device", device))
        return self

    @property
    def training_geometry(self) -> Any:
        """The training scan, ``standard_cone_beam(size, views)`` (``None`` where the file lacks it)."""
        if self.scan["size"] is None or self.scan["views"] is None:
            return None
        from .physics import standard_cone_beam

        return standard_cone_beam(self.scan["size"], self.scan["views"])

    @property
    def training_scale(self) -> Any:
        """The :class:`~unrolled3d.models.scale.TrainingScale` of the training scans, or ``None``
        where it cannot be known (module docstring)."""
        if self._scale is _UNKNOWN:
            self._scale = _training_scale(self)
        return self._scale

    def reconstructor(self, img_shape: Sequence[int], patch: int | None = None) -> Any:
        """A :class:`~unrolled3d.partition.PartitionedReconstructor` of this network (shared
        weights) for volumes ``img_shape``, on cubes of ``patch`` (default the training patch,
        cut to the volume), half overlap, two sweeps."""
        from .partition import PartitionedReconstructor

        shape = int_triple("img_shape", img_shape)
        if patch is None:
            edges = tuple(min(self.patch, n) for n in shape)
        else:
            from ._validation import integer

            p = integer("patch", patch, 1)
            if any(p > n for n in shape):
                raise ValueError(f"patch {p} is larger than the volume {shape}")
            edges = (p,) * 3
        return PartitionedReconstructor(self.base, shape, edges).eval()


class _Unknown:
    pass


_UNKNOWN = _Unknown()


# ---------------------------------------------------------------------------------- reading a file
def check_modality(config: dict, path: str | os.PathLike, expected: str) -> None:
    """Refuse a model file trained for the other modality than ``expected`` (``"ct"`` or ``"mri"``;
    an MRI model's configuration has an ``[mri]`` section): a :class:`FileFormatError` naming ``path``
    and saying what to use instead."""
    trained = "mri" if config.get("mri") is not None else "ct"
    if trained == choice("expected", expected, tuple(_OTHER_MODALITY)):
        return
    hint = (". An MRI model reconstructs k-space with `unrolled3d reconstruct KSPACE.pt --method unrolled "
            "--weights FILE`") if trained == "mri" else ""
    raise FileFormatError(path, _OTHER_MODALITY[trained] + hint)


def file_normalization(config: dict, path: str | os.PathLike) -> Any:
    """The intensity normalisation a model file records (:class:`~unrolled3d.data.IntensityNormalization`;
    attenuation where none is); an invalid entry is a :class:`FileFormatError` naming ``path``."""
    from .data.normalization import IntensityNormalization

    try:  # files before [data] trained on values as they are
        return IntensityNormalization.from_dict(config.get("normalization", {"kind": "attenuation"}))
    except (TypeError, ValueError) as exc:
        raise FileFormatError(path, f"invalid normalisation entry ({exc})") from None


def _scan_recipe(config: dict) -> dict[str, Any]:
    """``size``, ``views`` and ``noise_std`` of the training scan (``None`` where not recorded)."""
    geo, train = config.get("geometry", {}), config.get("train", {})
    out: dict[str, Any] = {"size": None, "views": None, "noise_std": None}
    for key, table, kind in (("size", geo, int), ("views", geo, int), ("noise_std", train, float)):
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = kind(value)
    return out


def build_from_file(config: dict, state: dict, path: str | os.PathLike, img_shape: Sequence[int],
                    patch: int | None = None) -> Any:
    """The :class:`~unrolled3d.partition.PartitionedReconstructor` a model file describes, on volumes
    of ``img_shape`` (``patch``: :func:`~unrolled3d.models.build_model`'s), with the file's weights, in
    eval mode; a configuration that cannot be built or weights that do not fit it are a
    :class:`FileFormatError` naming ``path``."""
    from .models import build_model

    try:  # the configuration is read and costed before anything is allocated
        rec = build_model(config, img_shape, patch=patch)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(path, f"its model configuration cannot be built: {exc}") from None
    try:
        rec.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise FileFormatError(path, f"the weights do not fit the model its configuration describes "
                                    f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None
    return rec.eval()


# ---------------------------------------------------------------------------------- training scale
def _training_scale(model: PretrainedModel) -> Any:
    """Recorded in the file, else from the table of shipped files, else from a phantom recipe."""
    from .models.scale import TrainingScale

    recorded = model.config.get("training_scale")
    if recorded is None:
        recorded = _shipped_scales().get(model.sha256)
    if recorded is not None:
        try:
            return TrainingScale.from_dict(recorded)
        except (TypeError, ValueError) as exc:
            raise FileFormatError(model.path, f"invalid training_scale entry ({exc})") from None
    return _scale_from_phantom_recipe(model)


def _shipped_scales() -> dict[str, Any]:
    try:
        table = json.loads(TRAINING_SCALES_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v["training_scale"] for k, v in table.items() if isinstance(v, dict) and "training_scale" in v}


def _scale_from_phantom_recipe(model: PretrainedModel) -> Any:
    """A model trained on phantoms (``[phantoms]``, no ``[data]``): its training scans made again."""
    cfg = model.config
    phantoms = cfg.get("phantoms")
    geometry = model.training_geometry
    if "data" in cfg or not isinstance(phantoms, dict) or geometry is None or model.scan["noise_std"] is None:
        return None
    from .data import PhantomDataset
    from .models.scale import measure_training_scale
    from .physics import ConeBeamCT

    try:
        dataset = PhantomDataset(100_000, (model.scan["size"],) * 3, kind=phantoms.get("kind", "ellipsoids"),
                                 seed=int(phantoms.get("seed", 0)))
    except (TypeError, ValueError):
        return None
    physics = ConeBeamCT(geometry, normalize=True, norm=_recorded_norm(cfg, geometry))
    return measure_training_scale(dataset, physics, model.scan["noise_std"])


def _recorded_norm(config: dict, geometry: Any) -> float | None:
    from .physics.norm import norm_from_record

    return norm_from_record(config.get("operator_norm"), geometry)
