"""Several patch problems as one batch: the physics of a group of patches solved together.

A partitioned sweep with ``patch_batch_size = G`` stacks the patches of a group along the batch
axis, patch-major: item ``g * B + b`` is batch item ``b`` of patch ``g`` (``B`` items per
patch). The network then runs once on ``G * B`` patches, and the data step applies each patch's
own operator to its slice: patches differ in their operators (the exact operator's sub-volume
geometry, the approximation's cropped mask), not in their shapes.
"""
from __future__ import annotations

from typing import Sequence

import torch
from deepinv.physics import LinearPhysics

from ..physics.patch import patch_measurements
from ..protocols import NormalEquationPhysics

__all__ = ["PatchBatch", "NormalPatchBatch"]


class PatchBatch(LinearPhysics):
    """The patch operators of ``G`` patches acting on a patch-major stacked batch ``[G * B, ...]``.

    Each method splits its input into ``G`` equal slices along the batch axis, applies the
    matching patch operator and concatenates the results, so a model sees one physics (deepinv's
    ``LinearPhysics``) for the whole group.

    Parameters
    ----------
    operators : sequence of deepinv.physics.LinearPhysics
        One patch operator per patch (e.g. ``ConeBeamCT.restrict(...)``), all of one image shape.

    Examples
    --------
    >>> import torch, deepinv as dinv
    >>> from unrolled3d.partition import PatchBatch
    >>> ops = [dinv.physics.LinearPhysics(A=lambda x, k=k: k * x, A_adjoint=lambda y, k=k: k * y) for k in (1.0, 2.0)]
    >>> batch = PatchBatch(ops)
    >>> batch.A(torch.ones(2, 1, 2, 2, 2))[:, 0, 0, 0, 0]      # patch 0 gets A_0, patch 1 gets A_1
    tensor([1., 2.])
    """

    def __init__(self, operators: Sequence[LinearPhysics]) -> None:
        operators = list(operators)
        if not operators:
            raise ValueError("operators must hold at least one patch operator")
        for i, op in enumerate(operators):
            self._check_member(i, op)
        super().__init__(img_size=getattr(operators[0], "img_size", None))
        # a plain list, not a ModuleList: the operators belong to the physics they were cut from
        # (and to the plan that caches them), not to this group's state
        self.operators = operators
        # Patches see detector windows of their own shapes (ConeBeamPatch): their measurements are
        # zero-padded at the end of each axis to the group's largest, so that they stack. The
        # padding is zero in both A x and the cropped data, so every data step is unchanged.
        shapes = [getattr(op, "measurement_shape", None) for op in operators]
        known = [tuple(sh) for sh in shapes if sh is not None]
        self._shapes: list[tuple[int, ...]] | None = None
        if len(known) == len(shapes) and len(set(known)) > 1:
            self._shapes = known
            self._padded = tuple(max(d) for d in zip(*known))
        self.complex_images = bool(getattr(operators[0], "complex_images", False))

    @staticmethod
    def _check_member(i: int, op: object) -> None:
        if not isinstance(op, LinearPhysics):
            raise TypeError(f"operators[{i}] must be a deepinv LinearPhysics, got {type(op).__name__}")

    def __len__(self) -> int:
        return len(self.operators)

    def _split(self, t: torch.Tensor, name: str) -> tuple[torch.Tensor, ...]:
        if t.shape[0] % len(self.operators):
            raise ValueError(f"{name} has a batch of {t.shape[0]}, not a multiple of the {len(self.operators)} patches")
        return t.chunk(len(self.operators))

    def _map(self, method: str, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.cat([getattr(op, method)(part, **kwargs)
                          for op, part in zip(self.operators, self._split(t, "the input"))])

    def stack_measurements(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Measurements of each patch, zero-padded to the group's measurement shape, stacked."""
        if self._shapes is None:
            return torch.cat(list(parts))
        out = []
        for part in parts:
            pad: list[int] = []
            for have, want in zip(reversed(part.shape[-len(self._padded):]), reversed(self._padded)):
                pad += [0, want - have]
            out.append(torch.nn.functional.pad(part, pad))
        return torch.cat(out)

    def _unpad(self, y: torch.Tensor) -> list[torch.Tensor]:
        """The inverse of :meth:`_pad`'s stacking: each patch's measurements, padding dropped."""
        parts = self._split(y, "the measurements")
        if self._shapes is None:
            return list(parts)
        return [part[(Ellipsis,) + tuple(slice(0, n) for n in shape)] for part, shape in zip(parts, self._shapes)]

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """``A_g x_g`` for each patch ``g``, stacked."""
        return self.stack_measurements([op.A(part, **kwargs) for op, part in zip(self.operators, self._split(x, "the input"))])

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """``A_g^T y_g`` for each patch ``g``, stacked."""
        return torch.cat([op.A_adjoint(part, **kwargs) for op, part in zip(self.operators, self._unpad(y))])

    def A_adjoint_A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """``A_g^T A_g x_g`` for each patch ``g``, stacked (each operator's own, possibly fused, form)."""
        return self._map("A_adjoint_A", x, **kwargs)

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Each patch operator's ``A_dagger``, stacked."""
        return torch.cat([op.A_dagger(part, **kwargs) for op, part in zip(self.operators, self._unpad(y))])

    def crop_measurements(self, y: torch.Tensor) -> torch.Tensor:
        """Each patch's part of the full measurements ``y`` ``[B, ...]``, stacked patch-major
        (``[G * B, ...]``; the whole ``y`` for operators without detector windows)."""
        return self.stack_measurements([patch_measurements(op, y) for op in self.operators])


class NormalPatchBatch(PatchBatch, NormalEquationPhysics):
    """A :class:`PatchBatch` of patch problems in normal-equation form ``H_g x = b_g``
    (:class:`unrolled3d.protocols.NormalEquationPhysics`, e.g. :class:`unrolled3d.normal.DiagCirculantPatch`).

    ``A_dagger`` returns the start point set in ``x_start`` (as a partitioned sweep sets it), or
    the members' own start points.

    Parameters
    ----------
    operators : sequence
        One normal-equation patch operator per patch.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.normal import DiagCirculantPatch
    >>> from unrolled3d.partition import NormalPatchBatch
    >>> lam = torch.ones(4, 4, 3)                      # unit impulse: H_g = diag(m_g)^2
    >>> ops = [DiagCirculantPatch(torch.full((2, 2, 2), m), lam, 1.0, "sandwich", (0, 0, 0)) for m in (1.0, 3.0)]
    >>> x = torch.ones(2, 1, 2, 2, 2)
    >>> NormalPatchBatch(ops).data_gradient(x, torch.zeros_like(x))[:, 0, 0, 0, 0]
    tensor([1., 9.])
    """

    def __init__(self, operators: Sequence) -> None:
        super().__init__(operators)
        self.x_start: torch.Tensor | None = None

    @staticmethod
    def _check_member(i: int, op: object) -> None:
        if not isinstance(op, NormalEquationPhysics):
            raise TypeError(f"operators[{i}] must be in normal-equation form (A_adjoint_A and data_gradient, "
                            f"unrolled3d.protocols.NormalEquationPhysics), got {type(op).__name__}")

    def data_gradient(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``H_g x_g - b_g`` for each patch ``g``, stacked."""
        parts = zip(self.operators, self._split(x, "x"), self._split(b, "b"))
        return torch.cat([op.data_gradient(xg, bg) for op, xg, bg in parts])

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """The start point ``x_start`` if set, else each operator's own ``A_dagger``, stacked."""
        if self.x_start is not None:
            return self.x_start
        return super().A_dagger(y, **kwargs)

