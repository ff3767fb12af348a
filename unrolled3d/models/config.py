"""The model a ``unrolled3d train`` configuration describes, rebuilt for inference or training.

A model file (:func:`unrolled3d.io.save_model`) holds the weights and the configuration; this
module turns the configuration's ``[model]`` and ``[partition]`` sections back into the
:class:`~unrolled3d.partition.PartitionedReconstructor` whose ``state_dict`` the weights are.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .._validation import boolean, integer
from ..partition import PartitionedReconstructor
from .unet3d import UNet3D
from .unrolled import UnrolledPGD

__all__ = ["build_model"]

SHARED_DEFAULT = True  # `[model] shared` of model files written before the key existed: shared denoisers


def build_model(config: Mapping[str, Any], img_shape: Sequence[int], patch: int | None = None
                ) -> PartitionedReconstructor:
    """The partitioned unrolled network of a training configuration.

    Parameters
    ----------
    config : mapping
        With sections ``model`` (``n_iter``, ``base``, ``depth``, ``shared``) and ``partition``
        (``patch``), as ``unrolled3d train`` writes them into the model file.
    img_shape : sequence of 3 int
        The volume ``(D, H, W)`` to reconstruct (any size: the network works on patches).
    patch : int, optional
        Patch edge instead of the configuration's.

    Returns
    -------
    PartitionedReconstructor
        Randomly initialised; load the weights with ``load_state_dict``.

    Examples
    --------
    >>> from unrolled3d.models import build_model
    >>> cfg = {"model": {"n_iter": 2, "base": 4, "depth": 1}, "partition": {"patch": 8}}
    >>> build_model(cfg, (16, 16, 16)).patch_shape
    (8, 8, 8)
    """
    try:
        m, p = config["model"], config["partition"]
        n_iter, base = integer("[model] n_iter", m["n_iter"], 1), integer("[model] base", m["base"], 1)
        depth, edge = integer("[model] depth", m["depth"], 0), integer("[partition] patch", p["patch"], 1)
    except KeyError as err:
        raise ValueError(f"the model configuration lacks {err} (sections [model] n_iter, base, depth and "
                         f"[partition] patch)") from None
    except TypeError as err:
        if "must be" in str(err):  # a value of the wrong kind, already named
            raise
        raise ValueError(f"the model configuration is malformed ({err}): expected tables [model] and "
                         f"[partition]") from None
    shared = boolean("[model] shared", m.get("shared", SHARED_DEFAULT))
    # shared=False: one denoiser per iteration, all starting from the same initial weights
    model = UnrolledPGD(UNet3D(base=base, depth=depth), n_iter=n_iter, step_size=1.0, shared=shared)
    edge = edge if patch is None else patch
    return PartitionedReconstructor(model, img_shape, (edge,) * 3)
