"""The interfaces the layers of unrolled3d declare to each other.

A physics, a patch operator or a model need not inherit from anything here: these are
:class:`typing.Protocol` classes, checked with ``isinstance`` at run time (structurally: by the
methods present), so deepinv's own classes and third-party ones take part when they offer the
methods. They say what each layer may rely on:

* :class:`Restrictable`, :class:`PatchStartPoint` and :class:`Fingerprinted`, together
  :class:`PartitionablePhysics`: what a physics offers to be partitioned cheaply. Without
  ``restrict`` the partitioned reconstructor falls back to a zero-padded full-volume operator
  (:class:`unrolled3d.physics.ZeroPaddedPatchPhysics`), without ``A_dagger_patch`` to the crop
  of the full ``A_dagger``; without ``fingerprint`` a saved normal-operator approximation
  cannot check that it belongs to the acquisition.
* :class:`NormalEquationPhysics`: a problem given as the normal equation ``H x = b`` instead
  of ``A x = y`` (the patch problem of the normal-operator approximation): the unrolled
  network's data step is ``data_gradient(x, b) = H x - b``; as a deepinv physics its ``A`` is
  ``H`` and its ``A_adjoint`` the identity on ``b`` (the whitened normal equation), so deepinv's
  solvers take the same step.
* :class:`NormalApproximation`: an approximation ``H`` of ``A^T A`` that a partitioned
  reconstructor restricts to its patches (``restrict``, ``refresh``), e.g.
  :class:`unrolled3d.normal.DiagCirculantNormal`; :class:`ParametrizedNormal` adds
  ``with_parameters``, what the paper's per-call ``fourier_filter=``/``spatial_mask=`` need.
* :class:`CarriesNormal`: a physics that wraps an exact operator (``physics``) and carries an
  approximation of its normal operator (``normal``), e.g.
  :class:`unrolled3d.normal.DiagCirculantWrapper`: how ``H`` reaches a reconstructor without
  being named, besides the explicit ``rec(y, physics, normal=H)``.
* :class:`ImageKind`: a physics that declares whether its images are complex (MRI: ``(B, 2, ...)``
  real and imaginary channels), which selects the complex form of the approximation ``H``.
* :class:`PatchTrainable`: a model trained with the partitioned loss ``L_PART``.
* :class:`StartPointReconstructor`: what the partitioned reconstructor requires of its base model:
  ``base(y, physics, x_init=x0)``.

Examples
--------
>>> from unrolled3d.physics import ConeBeamCT
>>> from unrolled3d.protocols import PartitionablePhysics
>>> issubclass(ConeBeamCT, PartitionablePhysics)
True
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch

__all__ = [
    "Restrictable", "MeasurementWindow", "PatchStartPoint", "Fingerprinted", "PartitionablePhysics",
    "NormalEquationPhysics", "NormalApproximation", "ParametrizedNormal", "CarriesNormal", "ImageKind",
    "PatchTrainable", "StartPointReconstructor",
]


@runtime_checkable
class Restrictable(Protocol):
    """A physics whose patch operator ``A S^T`` it builds itself.

    Examples
    --------
    >>> from unrolled3d.protocols import Restrictable
    >>> from unrolled3d.mri import MultiCoilMRI3D
    >>> issubclass(MultiCoilMRI3D, Restrictable)
    True
    """

    def restrict(self, offset: Sequence[int], shape: Sequence[int]) -> Any:
        """The operator ``A S^T`` of the sub-volume ``[offset, offset + shape)`` (a deepinv
        ``LinearPhysics`` acting on ``[B, C, *shape]``), whose cost should grow with the patch."""
        ...


@runtime_checkable
class MeasurementWindow(Protocol):
    """A patch operator whose measurements are a part of the whole scan's (e.g. the detector
    pixels the patch's shadow reaches, :class:`unrolled3d.physics.ConeBeamPatch`): the patch
    problem's data are ``crop_measurements(y)`` of the full measurements ``y``.

    Examples
    --------
    >>> from unrolled3d.protocols import MeasurementWindow
    >>> from unrolled3d.physics import ConeBeamCT, ConeBeamPatch
    >>> issubclass(ConeBeamPatch, MeasurementWindow), issubclass(ConeBeamCT, MeasurementWindow)
    (True, False)
    """

    def crop_measurements(self, y: torch.Tensor) -> torch.Tensor:
        """The operator's part of full measurements ``y`` (a linear crop)."""
        ...


@runtime_checkable
class PatchStartPoint(Protocol):
    """A physics that computes ``S A^dagger(y)`` (the start point on a patch) without forming
    the whole volume.

    Examples
    --------
    >>> from unrolled3d.protocols import PatchStartPoint
    >>> from unrolled3d.physics import ConeBeamCT
    >>> issubclass(ConeBeamCT, PatchStartPoint)
    True
    """

    def A_dagger_patch(self, y: torch.Tensor, offset: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
        """``A_dagger(y)`` restricted to the patch, ``[B, C, *shape]``."""
        ...


@runtime_checkable
class Fingerprinted(Protocol):
    """A physics that can name its acquisition with a short stable hash.

    Examples
    --------
    >>> from unrolled3d.protocols import Fingerprinted
    >>> from unrolled3d.physics import ConeBeamCT
    >>> issubclass(ConeBeamCT, Fingerprinted)
    True
    """

    def fingerprint(self) -> str:
        """A short hash of everything that defines the operator (geometry, sampling, coil maps)."""
        ...


@runtime_checkable
class PartitionablePhysics(Restrictable, PatchStartPoint, Fingerprinted, Protocol):
    """Everything a physics offers to be partitioned cheaply: ``restrict``, ``A_dagger_patch``
    and ``fingerprint`` (see the module docstring for the fallbacks).

    Examples
    --------
    >>> from unrolled3d.protocols import PartitionablePhysics
    >>> from unrolled3d.mri import MultiCoilMRI3D
    >>> issubclass(MultiCoilMRI3D, PartitionablePhysics)
    True
    """


@runtime_checkable
class NormalEquationPhysics(Protocol):
    """A problem in normal-equation form ``H x = b``: the measurement handed to a reconstructor
    is ``b`` (for a patch, ``S A^T y_p``), ``H`` stands for ``A^T A``.

    Examples
    --------
    >>> from unrolled3d.protocols import NormalEquationPhysics
    >>> from unrolled3d.normal import DiagCirculantPatch
    >>> issubclass(DiagCirculantPatch, NormalEquationPhysics)
    True
    """

    def A_adjoint_A(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``H x``. (A deepinv ``LinearPhysics`` in this form has ``A(x) = H x`` and
        ``A_adjoint(b) = b``: see :class:`unrolled3d.normal.DiagCirculantPatch`.)"""
        ...

    def data_gradient(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Gradient of the data term in ``x``: ``H x - b``."""
        ...


@runtime_checkable
class NormalApproximation(Protocol):
    """An approximation ``H`` of a normal operator ``A^T A`` that can be used patch by patch.

    A partitioned reconstructor builds each patch's operator once with ``restrict`` (it must be
    in normal-equation form, :class:`NormalEquationPhysics`) and calls ``refresh`` with them at
    every reconstruction, so that parameters changed since (in place, replaced, or trained)
    reach every patch.

    Examples
    --------
    >>> from unrolled3d.protocols import NormalApproximation
    >>> from unrolled3d.normal import DiagCirculantNormal
    >>> issubclass(DiagCirculantNormal, NormalApproximation)
    True
    """

    def restrict(self, offset: Sequence[int], shape: Sequence[int]) -> Any:
        """``S H S^T`` on the patch ``[offset, offset + shape)``: a :class:`NormalEquationPhysics`."""
        ...

    def refresh(self, patches: Sequence[Any]) -> None:
        """Point patch operators made by ``restrict`` at the current parameters (cheap when
        nothing changed)."""
        ...


@runtime_checkable
class ParametrizedNormal(NormalApproximation, Protocol):
    """A :class:`NormalApproximation` given by a spatial mask ``m`` and a Fourier filter ``lam``
    that can be swapped per call (the paper's ``rec(y, wrapped, fourier_filter=..., spatial_mask=...)``).

    Examples
    --------
    >>> from unrolled3d.protocols import ParametrizedNormal
    >>> from unrolled3d.normal import DiagCirculantNormal
    >>> issubclass(DiagCirculantNormal, ParametrizedNormal)
    True
    """

    def with_parameters(self, spatial_mask: torch.Tensor | None = None,
                        fourier_filter: torch.Tensor | None = None) -> Any:
        """A new approximation of the same settings with these parameters (this one unchanged)."""
        ...


@runtime_checkable
class CarriesNormal(Protocol):
    """A physics that wraps an exact operator and carries an approximation of its normal operator.

    ``physics`` is the exact operator (what the wrapper's ``A``/``A_adjoint`` are, and what a
    partitioned reconstructor restricts for its exact patch operators and start points);
    ``normal`` the approximation (:class:`NormalApproximation`) a reconstructor uses in H mode
    when it is given this physics. Data attributes: check it with ``isinstance``.

    Examples
    --------
    >>> from unrolled3d.protocols import CarriesNormal
    >>> from unrolled3d.normal import DiagCirculantWrapper
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> isinstance(DiagCirculantWrapper(ConeBeamCT(standard_cone_beam(8, 4)), (8, 8, 8)), CarriesNormal)
    True
    """

    physics: Any
    normal: Any


@runtime_checkable
class ImageKind(Protocol):
    """A physics that declares whether it acts on complex images ``(B, 2, ...)`` (real, imaginary
    channels) or real ones (a data attribute: check it with ``isinstance``, not ``issubclass``).

    Examples
    --------
    >>> from unrolled3d.protocols import ImageKind
    >>> from unrolled3d.mri import MultiCoilMRI3D
    >>> MultiCoilMRI3D.complex_images
    True
    """

    complex_images: bool


@runtime_checkable
class PatchTrainable(Protocol):
    """A model trained with the partitioned loss ``L_PART`` (one random patch per volume).

    Examples
    --------
    >>> from unrolled3d.protocols import PatchTrainable
    >>> from unrolled3d.partition import PartitionedReconstructor
    >>> issubclass(PartitionedReconstructor, PatchTrainable)
    True
    """

    def training_loss(self, y: torch.Tensor, physics: Any, x_true: torch.Tensor,
                      generator: torch.Generator | None = None, **kwargs: Any) -> torch.Tensor:
        """The loss of one training step on the measurements ``y`` of ``x_true``. The training loop
        passes ``residual=`` (``y - A x_true``, the noise it drew) so that a partitioned loss need
        not project the whole volume again; a model that has no use for it ignores it."""
        ...


@runtime_checkable
class StartPointReconstructor(Protocol):
    """A reconstructor that takes its start point: the base model of a partitioned reconstruction.

    :class:`unrolled3d.partition.PartitionedReconstructor` calls its base as
    ``base(y_p, physics_p, x_init=x0_p)`` -- always with the keyword ``x_init``, never guessing
    from the signature (a ``torch.compile``-d module's is ``(*args, **kwargs)``) -- and expects
    ``[B, C, *patch]`` back. ``y_p`` and ``physics_p`` are the patch problem: the measurements with
    the context removed and the patch operator ``A S^T``, or in H mode the backprojected data
    ``b`` and the normal-equation operator (:class:`NormalEquationPhysics`); ``x0_p`` is the
    patch's start point (the first estimate's patch). Several patches may come as one batch
    (``patch_batch_size``), each with its own operator.

    :class:`unrolled3d.models.UnrolledPGD` follows it; deepinv's optimisers (``init=``) and
    ``ArtifactRemoval`` (no start point) are adapted by
    :func:`unrolled3d.partition.as_base_reconstructor`, which also refuses what cannot take
    ``(y, physics)`` (a denoiser ``D(x, sigma)``). A structural ``isinstance`` cannot see
    signatures, so that function is the check; this class documents the call and types it.

    Examples
    --------
    >>> from unrolled3d.protocols import StartPointReconstructor
    >>> from unrolled3d.models import UnrolledPGD
    >>> issubclass(UnrolledPGD, StartPointReconstructor)
    True
    """

    def __call__(self, y: torch.Tensor, physics: Any, x_init: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction ``[B, C, D, H, W]`` of ``y``, starting from ``x_init``."""
        ...
