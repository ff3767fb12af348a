r"""Self-ensembles of a denoiser: ``D'(z) = (1/|G|) sum_g g^{-1} D(g z)`` over a group ``G`` of
symmetries of the training data.

A denoiser trained on flipped volumes (``[data] flip = true`` of a training configuration) has
seen every flip of an anatomy, but its output is not exactly flip-equivariant; averaging its
answers over the flips removes part of its error. The same holds for complex (MRI) images and
conjugation, ``x -> conj(x)``, when the training phases are smooth random fields (a conjugated
phase is as likely as the phase). Every symmetry here is an involution (``g^{-1} = g``) and they
commute, so one function applies and undoes them.

Cost: ``|G|`` network evaluations per denoiser call (8 for ``"flips"``, 16 for
``"flips+conj"``); memory: one more output-sized buffer. The data steps are unchanged. Measured
(``bench/results/README.md``, "Self-ensembles"): ``heads_ct`` at 96^3, 30 views, ``"flips"``: +0.25 dB
on the validation heads (its training anatomy), +0.09 dB on held-out volumes (+0.02 to +0.12 per
volume), for 6x the CPU time (35 against 5.5 s); ``mri_heads`` (stage 3) at 64^3, R = 8, ``"flips+conj"``:
+0.36 dB on validation, +0.10 dB on held-out heads. A small, sure gain where time is cheap.

Examples
--------
>>> import torch
>>> from unrolled3d.models.ensemble import self_ensemble, symmetries
>>> z = torch.rand(1, 1, 4, 4, 4)
>>> out = self_ensemble(lambda v: 2 * v, z, symmetries("flips", channels=1))  # an equivariant map
>>> torch.allclose(out, 2 * z)
True
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import choice

__all__ = ["SELF_ENSEMBLES", "Symmetry", "symmetries", "self_ensemble", "with_self_ensemble", "ensembled"]

#: the self-ensembles by name: none; the 8 flips of the axes z, y, x; those times conjugation
#: (two-channel real/imaginary images only)
SELF_ENSEMBLES = ("none", "flips", "flips+conj")


@dataclass(frozen=True)
class Symmetry:
    """Flips of the spatial dimensions ``flip_dims`` of a ``[B, C, D, H, W]`` tensor, then, with
    ``conj``, the negation of channel 1 (the imaginary part of a ``C = 2`` real/imaginary image).
    Its own inverse.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.models.ensemble import Symmetry
    >>> z = torch.arange(8.0).view(1, 2, 1, 1, 4)
    >>> Symmetry(flip_dims=(4,), conj=True)(z).flatten().tolist()
    [3.0, 2.0, 1.0, 0.0, -7.0, -6.0, -5.0, -4.0]
    """

    flip_dims: tuple[int, ...] = ()
    conj: bool = False

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.flip_dims:
            z = z.flip(self.flip_dims)
        if self.conj:
            z = torch.cat([z[:, :1], -z[:, 1:2], z[:, 2:]], dim=1)
        return z


def symmetries(name: str, channels: int) -> list[Symmetry]:
    """The group of the self-ensemble ``name`` (:data:`SELF_ENSEMBLES`) for images of ``channels``
    channels; the identity first.

    Raises
    ------
    ValueError
        an unknown name, or ``"flips+conj"`` for images that are not two-channel (real, imaginary).
    """
    choice("self_ensemble", name, SELF_ENSEMBLES)
    if name == "none":
        return [Symmetry()]
    flips = [dims for r in range(4) for dims in itertools.combinations((2, 3, 4), r)]
    if name == "flips":
        return [Symmetry(dims) for dims in flips]
    if channels != 2:
        raise ValueError(f"self_ensemble='flips+conj' needs complex images (2 channels: real, imaginary), "
                         f"got {channels} channel(s); use 'flips'")
    return [Symmetry(dims, conj) for dims in flips for conj in (False, True)]


def self_ensemble(denoise: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                  group: list[Symmetry]) -> torch.Tensor:
    """``(1/|G|) sum_g g(denoise(g(z)))`` for ``z`` ``[B, C, D, H, W]``; the network runs once per
    symmetry, one after another (peak memory of one call plus the running sum)."""
    total = group[0](denoise(group[0](z)))
    for g in group[1:]:
        total = total + g(denoise(g(z)))
    return total / len(group)


def with_self_ensemble(base: torch.nn.Module, name: str) -> torch.nn.Module:
    """The base model (an :class:`~unrolled3d.models.UnrolledPGD`) with its denoisers
    self-ensembled over ``name`` (:data:`SELF_ENSEMBLES`): a shallow copy when the setting
    changes (same weights; the caller's model is left as it was).

    Raises
    ------
    ValueError
        an unknown name, or a ``name`` other than ``"none"`` for a base without the setting.
    """
    choice("self_ensemble", name, SELF_ENSEMBLES)
    if not hasattr(base, "self_ensemble"):
        if name == "none":
            return base
        raise ValueError(f"self_ensemble={name!r} needs an UnrolledPGD base model, got {type(base).__name__}")
    if base.self_ensemble == name:
        return base
    copied: Any = copy.copy(base)  # nn.Module's attribute types do not include a plain string
    copied.self_ensemble = name
    return copied


def ensembled(rec: Any, name: str) -> Any:
    """A partitioned reconstructor (``with_base``) whose base is self-ensembled over ``name``
    (:func:`with_self_ensemble`); ``rec`` itself for ``"none"``."""
    if choice("self_ensemble", name, SELF_ENSEMBLES) == "none":
        return rec
    return rec.with_base(with_self_ensemble(rec.base, name))
