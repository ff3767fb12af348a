"""The plan of a partitioned sweep: every patch operator, group and window, built once.

Building a patch operator is Python work (a sub-volume geometry, NumPy, a deepinv ``Physics``
module, a cropped mask and the patch's filter spectrum); applying it is tensor work. A
:class:`SweepPlan` holds the first kind for one physics on one device and dtype, so that a sweep
(and a ``torch.compile``-d ``forward``) does only the second: the plan is built outside the
traced region (:func:`build_plan` is excluded from compilation) and reused by every sweep and
every call with the same physics.

In H mode the plan holds the patch operators of an approximation ``H``
(:class:`~unrolled3d.protocols.NormalApproximation`) and lets ``H`` point them at its current
parameters at each call (:meth:`SweepPlan.refresh`): parameters set in place, replaced or trained
reach every patch. Which operator is exact and which ``H`` serves a call is decided here too
(:func:`resolve_normal`), through protocols: ``H`` given explicitly (``normal=``) or carried by
the physics (:class:`~unrolled3d.protocols.CarriesNormal`, e.g. the paper's
``DiagCirculantWrapper``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from deepinv.physics import LinearPhysics

from .._distributed import rank_and_world
from ..physics.patch import restrict
from ..protocols import CarriesNormal, NormalApproximation, NormalEquationPhysics, ParametrizedNormal
from .batch import NormalPatchBatch, PatchBatch
from .grid import blend_window

__all__ = ["PatchGroup", "SweepPlan", "build_plan", "patch_operator", "group_physics", "exact_physics",
           "resolve_normal"]


def exact_physics(physics: LinearPhysics) -> LinearPhysics:
    """The exact operator of ``physics``: the one it wraps if it carries an approximation
    (:class:`~unrolled3d.protocols.CarriesNormal`), else ``physics`` itself."""
    return physics.physics if isinstance(physics, CarriesNormal) else physics


def resolve_normal(physics: LinearPhysics, normal: NormalApproximation | None = None,
                   fourier_filter: torch.Tensor | None = None, spatial_mask: torch.Tensor | None = None
                   ) -> tuple[LinearPhysics, NormalApproximation | None]:
    """``(exact operator, H or None)`` of a call: which patch operators it uses.

    ``H`` is ``normal`` if given, else the one ``physics`` carries (a ``DiagCirculantWrapper``),
    else none (exact patch operators). ``fourier_filter``/``spatial_mask`` (the paper's API) give
    that ``H`` new parameters for this call only (:class:`~unrolled3d.protocols.ParametrizedNormal`:
    a new ``H``; the caller's is left unchanged).
    """
    carried = physics.normal if isinstance(physics, CarriesNormal) else None
    if normal is not None and not isinstance(normal, NormalApproximation):
        raise TypeError(f"normal must be an approximation of the normal operator with restrict() and refresh() "
                        f"(unrolled3d.protocols.NormalApproximation, e.g. unrolled3d.normal.DiagCirculantNormal), "
                        f"got {type(normal).__name__}")
    H = normal if normal is not None else carried
    if fourier_filter is not None or spatial_mask is not None:
        if H is None:
            raise TypeError("fourier_filter and spatial_mask are the parameters of a normal-operator approximation: "
                            "pass normal=H (unrolled3d.normal.DiagCirculantNormal) or wrap the physics in "
                            f"unrolled3d.normal.DiagCirculantWrapper (got {type(physics).__name__})")
        if not isinstance(H, ParametrizedNormal):
            raise TypeError(f"fourier_filter and spatial_mask need an approximation that takes them "
                            f"(unrolled3d.protocols.ParametrizedNormal), got {type(H).__name__}")
        H = H.with_parameters(spatial_mask=spatial_mask, fourier_filter=fourier_filter)
    return exact_physics(physics), H


@torch.compiler.disable
def patch_operator(physics: LinearPhysics, normal: NormalApproximation | None, img_shape: Sequence[int],
                   offset: Sequence[int], shape: Sequence[int]) -> Any:
    """The operator of one patch problem: ``H_p`` (normal-equation form) when ``normal`` is given,
    else the exact ``A S^T`` of ``physics`` (the exact operator, see :func:`exact_physics`). Not
    traced by ``torch.compile`` (it builds modules and geometries)."""
    if normal is not None:
        op = normal.restrict(offset, shape)
        if not isinstance(op, NormalEquationPhysics):
            raise TypeError(f"{type(normal).__name__}.restrict must return a patch operator in normal-equation form "
                            f"(unrolled3d.protocols.NormalEquationPhysics), got {type(op).__name__}")
        return op
    return restrict(physics, img_shape, offset, shape)


@torch.compiler.disable
def group_physics(operators: Sequence[Any], normal: NormalApproximation | None) -> Any:
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
        The exact full operator the plan was built for (compared by identity).
    normal : NormalApproximation or None
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
    >>> from unrolled3d.models import UNet3D, UnrolledPGD
    >>> from unrolled3d.normal import DiagCirculantNormal, init_from_psf
    >>> from unrolled3d.partition import PartitionedReconstructor
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 6))
    >>> H = init_from_psf(DiagCirculantNormal((8, 8, 8)), physics)
    >>> rec = PartitionedReconstructor(UnrolledPGD(UNet3D(base=4, depth=1), n_iter=1), (8, 8, 8), (4, 4, 4),
    ...                                patch_batch_size=4)
    >>> plan = rec.prepare(physics, normal=H)   # H mode: 27 patch operators of H in groups of 4
    >>> [g.size for g in plan.groups], type(plan.groups[0].physics).__name__
    ([4, 4, 4, 4, 4, 4, 3], 'NormalPatchBatch')
    """

    def __init__(self, physics: LinearPhysics, normal: NormalApproximation | None, device: torch.device,
                 dtype: torch.dtype, window: torch.Tensor, groups: list[PatchGroup], rank: int, world: int) -> None:
        self.physics, self.normal = physics, normal
        self.device, self.dtype = device, dtype
        self.window, self.groups = window, groups
        self.rank, self.world = rank, world

    def matches(self, physics: LinearPhysics, normal: NormalApproximation | None, like: torch.Tensor) -> bool:
        """Whether this plan serves ``physics`` (and ``normal``) for volumes like ``like``."""
        return (self.physics is physics and self.normal is normal and self.device == like.device
                and self.dtype == like.dtype)

    def refresh(self) -> None:
        """H mode: let the approximation point every patch operator at its current parameters
        (:meth:`unrolled3d.protocols.NormalApproximation.refresh`; for
        :class:`~unrolled3d.normal.DiagCirculantNormal` the patch filter spectrum is cached while
        ``lam`` is unchanged and recomputed in traced code and while ``lam`` records gradients)."""
        if self.normal is not None:
            self.normal.refresh([op for group in self.groups for op in group.operators])


@torch.compiler.disable
def build_plan(physics: LinearPhysics, normal: NormalApproximation | None, img_shape: Sequence[int],
               patch_shape: Sequence[int], stride: Sequence[int], offsets: Sequence[tuple[int, int, int]],
               patch_batch_size: int, like: torch.Tensor) -> SweepPlan:
    """Build the :class:`SweepPlan` of ``physics`` for volumes like ``like`` (not traced by
    ``torch.compile``: it builds geometries and modules)."""
    rank, world = rank_and_world()
    mine = list(offsets)[rank::world]
    window = blend_window(patch_shape, stride, dtype=like.dtype, device=like.device)
    groups = []
    for i in range(0, len(mine), patch_batch_size):
        offs = tuple((int(o[0]), int(o[1]), int(o[2])) for o in mine[i:i + patch_batch_size])
        ops = tuple(patch_operator(physics, normal, img_shape, o, patch_shape) for o in offs)
        groups.append(PatchGroup(offs, group_physics(ops, normal), ops))
    return SweepPlan(physics, normal, like.device, like.dtype, window, groups, rank, world)
