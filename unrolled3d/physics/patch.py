"""The patch operator ``A S^T`` of any deepinv ``LinearPhysics``, and its start point.

A physics that is :class:`~unrolled3d.protocols.Restrictable` builds its own patch operator
(``ConeBeamCT``: the same projector on the patch's sub-volume, whose cost grows with the patch);
any other ``LinearPhysics`` gets :class:`ZeroPaddedPatchPhysics`, which embeds the patch in a zero
volume (correct, but a full-volume operator per call).
"""
from __future__ import annotations

from typing import Sequence

import torch
from deepinv.physics import LinearPhysics

from ..protocols import MeasurementWindow, PatchStartPoint, Restrictable

__all__ = ["ZeroPaddedPatchPhysics", "restrict", "patch_start", "crop", "patch_measurements"]


def crop(x: torch.Tensor, offset: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """The view ``x[..., o0:o0+p0, o1:o1+p1, o2:o2+p2]`` (no copy).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.physics.patch import crop
    >>> crop(torch.arange(27).reshape(3, 3, 3), (1, 1, 1), (1, 1, 2)).tolist()
    [[[13, 14]]]
    """
    return x[..., offset[0]:offset[0] + shape[0], offset[1]:offset[1] + shape[1], offset[2]:offset[2] + shape[2]]


class ZeroPaddedPatchPhysics(LinearPhysics):
    """``A S^T`` for a ``LinearPhysics`` that cannot restrict itself: the patch is embedded in a
    zero volume, so each call costs a full-volume operator (``ConeBeamCT`` restricts cheaply).

    Parameters
    ----------
    physics : deepinv.physics.LinearPhysics
        The full-volume operator, acting on ``[B, C, *img_shape]``.
    img_shape : tuple of 3 int
        The full volume ``(D, H, W)``.
    offset, shape : tuple of 3 int
        The patch ``[offset, offset + shape)``.

    Examples
    --------
    >>> import torch, deepinv as dinv
    >>> from unrolled3d.physics import ZeroPaddedPatchPhysics
    >>> full = dinv.physics.LinearPhysics(A=lambda x: 2 * x, A_adjoint=lambda y: 2 * y)
    >>> p = ZeroPaddedPatchPhysics(full, (4, 4, 4), (1, 0, 2), (2, 2, 2))
    >>> y = p.A(torch.ones(1, 1, 2, 2, 2))
    >>> float(y.sum()), tuple(p.A_adjoint(y).shape)
    (16.0, (1, 1, 2, 2, 2))
    """

    def __init__(self, physics: LinearPhysics, img_shape: Sequence[int], offset: Sequence[int],
                 shape: Sequence[int]) -> None:
        super().__init__(img_size=(1, *shape))
        self.physics, self.img_shape, self.offset, self.shape = physics, tuple(img_shape), tuple(offset), tuple(shape)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        full = x.new_zeros((*x.shape[:2], *self.img_shape))
        crop(full, self.offset, self.shape).copy_(x)
        return self.physics.A(full, **kwargs)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return crop(self.physics.A_adjoint(y, **kwargs), self.offset, self.shape)


def restrict(physics: LinearPhysics, img_shape: Sequence[int], offset: Sequence[int],
             shape: Sequence[int]) -> LinearPhysics:
    """``A S^T`` of ``physics`` on the patch: its own ``restrict`` if it has one, else zero padding."""
    if isinstance(physics, Restrictable):
        return physics.restrict(offset, shape)
    return ZeroPaddedPatchPhysics(physics, img_shape, offset, shape)


def patch_start(physics: LinearPhysics, y: torch.Tensor, offset: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """``S A_dagger(y)``: the physics' own ``A_dagger_patch`` if it has one, else the crop of the
    full ``A_dagger(y)``."""
    if isinstance(physics, PatchStartPoint):
        return physics.A_dagger_patch(y, offset, shape)
    return crop(physics.A_dagger(y), offset, shape)


def patch_measurements(patch_physics: LinearPhysics, y: torch.Tensor) -> torch.Tensor:
    """The part of full measurements ``y`` a patch operator sees: its detector windows for an
    operator that has them (:class:`~unrolled3d.protocols.MeasurementWindow`, e.g.
    :class:`~unrolled3d.physics.ConeBeamPatch`), else ``y`` itself (the operator's measurements
    are the whole scan's)."""
    if isinstance(patch_physics, MeasurementWindow):
        return patch_physics.crop_measurements(y)
    return y
