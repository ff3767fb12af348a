"""The plan of a partitioned sweep: every patch operator, group and window, built once.

Building a patch operator is Python work (a sub-volume geometry, NumPy, a deepinv ``Physics``
module, a cropped mask and the patch's filter spectrum); applying it is tensor work. A
:class:`SweepPlan` holds the first kind for one physics on one device and dtype, so that a sweep
(and a ``torch.compile``-d ``forward``) does only the second: the plan is built outside the
traced region (:func:`build_plan` is excluded from compilation) and reused by every sweep and
every call with the same physics.

The plan of the normal-operator approximation keeps the mask crops as views of the wrapper's
mask (in-place changes, e.g. ``set_parameters``, reach them) and refreshes the patch filter
spectrum, which depends on ``lam``, at each call (:meth:`SweepPlan.refresh_filters`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from deepinv.physics import LinearPhysics

from .._distributed import rank_and_world
from ..normal import DiagCirculantPatch, DiagCirculantWrapper
from ..physics.patch import restrict
from .batch import NormalPatchBatch, PatchBatch
from .grid import blend_window

__all__ = ["PatchGroup", "SweepPlan", "build_plan", "patch_operator", "group_physics"]


def _unwrap(physics: LinearPhysics) -> LinearPhysics:
    """The exact operator behind a ``DiagCirculantWrapper`` (any other physics: itself)."""
    return physics.physics if isinstance(physics, DiagCirculantWrapper) else physics


@torch.compiler.disable
def patch_operator(physics: LinearPhysics, normal: DiagCirculantWrapper | None, img_shape: Sequence[int],
                   offset: Sequence[int], shape: Sequence[int]) -> Any:
    """The operator of one patch problem: ``H_p`` (normal-equation form) when ``normal`` is given,
    else the exact ``A S^T`` of the physics behind ``physics``. Not traced by ``torch.compile``
    (it builds modules and geometries)."""
    if normal is not None:
        return normal.restrict(offset, shape)
    return restrict(_unwrap(physics), img_shape, offset, shape)


@torch.compiler.disable
def group_physics(operators: Sequence[Any], normal: DiagCirculantWrapper | None) -> Any:
    """The physics of patches solved together: the operator itself for one patch, else a
    :class:`PatchBatch` (:class:`NormalPatchBatch` in H mode) of them."""
    if len(operators) == 1:
        return operators[0]
    return NormalPatchBatch(operators) if normal is not None else PatchBatch(operators)


@dataclass
class PatchGroup:
    """Patches solved together: their offsets and the physics of the stacked batch (the patch
    operator itself for a group of one, a :class:`PatchBatch` otherwise).

    Examples
    --------
    >>> from unrolled3d.partition.plan import PatchGroup
    >>> PatchGroup(offsets=((0, 0, 0), (0, 0, 4)), physics=None, operators=(None, None)).size
    2
    """

    offsets: tuple[tuple[int, int, int], ...]
    physics: Any
    operators: tuple[Any, ...]

    @property
    def size(self) -> int:
        return len(self.offsets)


class SweepPlan:
    """Patch groups, operators and blending window of one physics on one device and dtype.

    Built by :func:`build_plan` (or :meth:`unrolled3d.partition.PartitionedReconstructor.prepare`);
    a sweep reads it and does tensor work only.

    Parameters
    ----------
    physics : deepinv.physics.LinearPhysics
        The full operator the plan was built for (compared by identity).
    normal : DiagCirculantWrapper or None
        The approximation whose patches the plan holds (H mode), or ``None`` (exact mode).
    device, dtype
        Of the volumes the plan serves (the window's).
    window : torch.Tensor
        The blending window ``(pd, ph, pw)``.
    groups : list of PatchGroup
        This rank's patches, in groups of at most ``patch_batch_size``.
    rank, world : int
        This process's share of the patch list (``torch.distributed``).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.models import UNet3D, UnrolledPGD
    >>> from unrolled3d.partition import PartitionedReconstructor
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 6))
    >>> rec = PartitionedReconstructor(UnrolledPGD(UNet3D(base=4, depth=1), n_iter=1), (8, 8, 8), (4, 4, 4),
    ...                                patch_batch_size=4)
    >>> plan = rec.prepare(physics)
    >>> [g.size for g in plan.groups]           # 27 patches in groups of 4
    [4, 4, 4, 4, 4, 4, 3]
    """

    def __init__(self, physics: LinearPhysics, normal: DiagCirculantWrapper | None, device: torch.device,
                 dtype: torch.dtype, window: torch.Tensor, groups: list[PatchGroup], rank: int, world: int) -> None:
        self.physics, self.normal = physics, normal
        self.device, self.dtype = device, dtype
        self.window, self.groups = window, groups
        self.rank, self.world = rank, world
        # the wrapper's mask the patch masks are views of: a new tensor (not an in-place change) voids the plan
        self.mask = None if normal is None else normal.spatial_mask

    def matches(self, physics: LinearPhysics, normal: DiagCirculantWrapper | None, like: torch.Tensor) -> bool:
        """Whether this plan serves ``physics`` (and ``normal``) for volumes like ``like``."""
        return (self.physics is physics and self.normal is normal and self.device == like.device
                and self.dtype == like.dtype and (normal is None or self.mask is normal.spatial_mask))

    def refresh_filters(self) -> None:
        """Point every patch operator of the approximation at the current patch filter spectrum
        (:meth:`unrolled3d.normal.DiagCirculantWrapper.patch_filter`: cached while ``lam`` is
        unchanged, recomputed in traced code and while ``lam`` records gradients)."""
        if self.normal is None:
            return
        lam_p = None
        for group in self.groups:
            for op in group.operators:
                if isinstance(op, DiagCirculantPatch):
                    if lam_p is None:
                        lam_p = self.normal.patch_filter(tuple(op.mask.shape))
                    if op.lam is not lam_p:
                        op.lam = lam_p


@torch.compiler.disable
def build_plan(physics: LinearPhysics, normal: DiagCirculantWrapper | None, img_shape: Sequence[int],
               patch_shape: Sequence[int], stride: Sequence[int], offsets: Sequence[tuple[int, int, int]],
               patch_batch_size: int, like: torch.Tensor) -> SweepPlan:
    """Build the :class:`SweepPlan` of ``physics`` for volumes like ``like`` (not traced by
    ``torch.compile``: it builds geometries and modules)."""
    rank, world = rank_and_world()
    mine = list(offsets)[rank::world]
    window = blend_window(patch_shape, stride, dtype=like.dtype, device=like.device)
    groups = []
    for i in range(0, len(mine), patch_batch_size):
        offs = tuple(tuple(int(v) for v in o) for o in mine[i:i + patch_batch_size])
        ops = tuple(patch_operator(physics, normal, img_shape, o, patch_shape) for o in offs)
        groups.append(PatchGroup(offs, group_physics(ops, normal), ops))
    return SweepPlan(physics, normal, like.device, like.dtype, window, groups, rank, world)
