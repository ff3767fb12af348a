"""The model a training configuration describes: its ``[model]`` and ``[partition]`` sections, and
the network they build.

:class:`ModelConfig` and :class:`PartitionConfig` are the two sections (their defaults and
bounds are the ones a TOML file, the Python API and a model file share); :func:`build_model`
turns them (or the configuration a model file records, :func:`unrolled3d.io.save_model`) into
the :class:`~unrolled3d.partition.PartitionedReconstructor` whose ``state_dict`` the weights are,
after costing it (:mod:`unrolled3d.models.cost`): a configuration no machine holds is refused
naming its key, before anything is allocated.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from .._config import Section, flag, integer_in, optional, setting, table_names, text
from ..partition import PartitionedReconstructor
from .cost import check_model_memory
from .unet3d import UNet3D
from .unrolled import UnrolledPGD

__all__ = ["ModelConfig", "PartitionConfig", "build_model", "image_channels", "ARCHITECTURE", "SHARED_DEFAULT"]

SHARED_DEFAULT = True  # `[model] shared` of model files written before the key existed: shared denoisers
#: the [model] keys the weights' shapes depend on (a model file must state them; fine-tuning must match them)
ARCHITECTURE = ("n_iter", "base", "depth", "shared")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """``[model]``: the unrolled network, ``UnrolledPGD(UNet3D(base, depth), n_iter, shared)``.

    Parameters
    ----------
    n_iter : int
        unrolled iterations ``K`` (1 to 1000).
    base : int
        channels of the UNet's first level (1 to 1024).
    depth : int
        the UNet's down-sampling levels (0 to 10; 0: a plain convolutional network).
    shared : bool
        one denoiser for every iteration (``False``: one per iteration, ``n_iter`` times the
        parameters).
    init : str, optional
        a model file to start from (fine-tuning), relative to the configuration file.

    Examples
    --------
    >>> from unrolled3d.models import ModelConfig
    >>> ModelConfig(base=12, shared=False).to_dict()
    {'n_iter': 5, 'base': 12, 'depth': 2, 'shared': False}
    >>> ModelConfig.from_dict({"depth": 64})
    Traceback (most recent call last):
        ...
    ValueError: [model] depth must be an integer in [0, 10], got 64
    """

    SECTION = "model"
    n_iter: int = setting(5, integer_in(1, 1000))
    base: int = setting(8, integer_in(1, 1024))
    depth: int = setting(2, integer_in(0, 10))
    shared: bool = setting(SHARED_DEFAULT, flag)
    init: str | None = setting(None, optional(text))

    def architecture(self) -> dict[str, Any]:
        """The keys the weights' shapes depend on (:data:`ARCHITECTURE`)."""
        return {k: getattr(self, k) for k in ARCHITECTURE}


@dataclasses.dataclass(frozen=True)
class PartitionConfig(Section):
    """``[partition]``: the training patch (a cube of ``patch`` voxels, stride half of it).

    Examples
    --------
    >>> from unrolled3d.models import PartitionConfig
    >>> PartitionConfig().patch
    24
    """

    SECTION = "partition"
    patch: int = setting(24, integer_in(1, 4096))


def _sections(config: Any) -> tuple[ModelConfig, PartitionConfig]:
    """The ``[model]`` and ``[partition]`` of a configuration object or of the mapping a model file
    (or a TOML file) holds; a mapping must state the architecture (no default stands in for it)."""
    if hasattr(config, "model") and hasattr(config, "partition") and not isinstance(config, Mapping):
        return config.model, config.partition
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping) \
            or not isinstance(config.get("partition"), Mapping):
        raise ValueError("the model configuration is malformed: expected tables [model] and [partition]")
    missing = [f"[model] {k}" for k in ARCHITECTURE[:3] if k not in config["model"]]
    missing += [] if "patch" in config["partition"] else ["[partition] patch"]
    if missing:
        raise ValueError(f"the model configuration lacks {', '.join(missing)} (sections [model] n_iter, base, "
                         f"depth and [partition] patch)")
    with table_names():
        return ModelConfig.from_dict(config["model"]), PartitionConfig.from_dict(config["partition"])


def image_channels(config: Any) -> int:
    """Image channels of the model a configuration describes: 2 (real, imaginary) for MRI (an
    ``[mri]`` section: complex images), 1 for CT."""
    mri = config.get("mri") if isinstance(config, Mapping) else getattr(config, "mri", None)
    return 1 if mri is None else 2


def build_model(config: Any, img_shape: Sequence[int], patch: int | None = None) -> PartitionedReconstructor:
    """The partitioned unrolled network of a training configuration.

    Parameters
    ----------
    config : RunConfig or mapping
        An object with ``model`` (:class:`ModelConfig`) and ``partition``
        (:class:`PartitionConfig`), e.g. :class:`unrolled3d.training.RunConfig`, or the mapping
        a model file records (tables ``model`` with ``n_iter``, ``base``, ``depth`` and
        optionally ``shared``; ``partition`` with ``patch``).
    img_shape : sequence of 3 int
        The volume ``(D, H, W)`` to reconstruct (any size: the network works on patches).
    patch : int, optional
        Patch edge instead of the configuration's.

    Returns
    -------
    PartitionedReconstructor
        Randomly initialised; load the weights with ``load_state_dict``. Its images have 2
        channels (real, imaginary) for an MRI configuration (an ``[mri]`` section), else 1.

    Raises
    ------
    ValueError
        A key out of bounds, missing, or a network whose parameters and activations on one
        patch need more than this machine's memory (naming the key to change).

    Examples
    --------
    >>> from unrolled3d.models import build_model
    >>> cfg = {"model": {"n_iter": 2, "base": 4, "depth": 1}, "partition": {"patch": 8}}
    >>> build_model(cfg, (16, 16, 16)).patch_shape
    (8, 8, 8)
    """
    model, partition = _sections(config)
    edge = partition.patch if patch is None else patch
    check_model_memory(model, edge, training=False)
    channels = image_channels(config)
    # shared=False: one denoiser per iteration, all starting from the same initial weights
    net = UnrolledPGD(UNet3D(in_channels=channels, out_channels=channels, base=model.base, depth=model.depth),
                      n_iter=model.n_iter, step_size=1.0, shared=model.shared)
    return PartitionedReconstructor(net, img_shape, (edge,) * 3)
