r"""``DiagCirculantWrapper``: the paper's API, a physics that carries a learned approximation ``H``.

The paper wraps a physics and hands the wrapper to the partitioned reconstructor::

    wrapped = DiagCirculantWrapper(physics, img_size, scaling=1.0, device=device)
    x_hat = partitioner(y, wrapped, fourier_filter=fourier_filter, spatial_mask=spatial_mask)

This class keeps that call working as a *consistent* physics: ``A``, ``A_adjoint``,
``A_adjoint_A`` and ``A_dagger`` are those of the wrapped physics (exact, so any deepinv solver
sees one operator whichever method it calls), and the approximation is a separate object it
carries, :attr:`DiagCirculantWrapper.normal` (a :class:`~unrolled3d.normal.DiagCirculantNormal`).
A reconstructor finds it through the protocol :class:`unrolled3d.protocols.CarriesNormal`
(``physics`` and ``normal``), the same way as an explicit ``rec(y, physics, normal=H)``.

The wrapper's other methods are conveniences with the physics filled in: :meth:`fit`,
:meth:`init_from_psf`, :meth:`relative_error` (:mod:`unrolled3d.normal.fit`), :meth:`save`,
:meth:`load`, :meth:`from_file` (:mod:`unrolled3d.normal.files`), and the parameters and settings
of ``H`` read through (``spatial_mask``, ``fourier_filter``, ``img_shape``, ...).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch
from deepinv.physics import LinearPhysics

from .files import load_normal, load_parameters, save_normal
from .fit import exact_normal, fit_normal, init_from_psf, relative_error
from .layout import acquisition_of
from .operator import DiagCirculantNormal

__all__ = ["DiagCirculantWrapper"]


def _check_physics(physics: Any) -> None:
    if not isinstance(physics, LinearPhysics):
        raise TypeError(f"physics must be a deepinv LinearPhysics, got {type(physics).__name__}")


#: what the wrapper reads through from the ``H`` it carries (the attributes of the paper's wrapper)
_READ_THROUGH = {
    "img_shape": "Volume shape ``(D, H, W)`` of ``H``.",
    "scaling": "``H`` approximates ``A^T A / scaling``.",
    "variant": "Form of ``H``.",
    "dtype": "Real dtype of ``H``'s parameters.",
    "complex_images": "Whether ``H`` acts on complex images ``(B, 2, ...)``.",
    "kernel_radius": "``H``'s kernel radius (``None``: every lag).",
    "channels": "Image channels: 2 for complex images, 1 for real ones.",
    "filter_shape": "Shape of ``fourier_filter``.",
    "spatial_mask": "``m`` (a parameter of :attr:`normal`).",
    "fourier_filter": "``lam`` (a parameter of :attr:`normal`).",
    "fitted": "Whether ``H`` has parameters.",
    "kernel": "``H``'s convolution kernel on the doubled grid.",
}


def _read_through(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.normal, name), doc=doc)


class DiagCirculantWrapper(LinearPhysics):
    r"""A ``LinearPhysics`` (exact) that carries the approximation ``A^T A ~ scaling * H(m, lam)``.

    Parameters
    ----------
    physics : deepinv.physics.LinearPhysics
        The operator ``A`` (e.g. :class:`ConeBeamCT`, :class:`unrolled3d.mri.MultiCoilMRI3D`).
    img_size : tuple
        Volume shape ``(D, H, W)``, or ``(C, D, H, W)`` with ``C = 1`` (real images) or ``C = 2``
        (complex images).
    scaling : float
        ``H`` approximates ``A^T A / scaling``: pass ``||A||^2`` if ``A`` is not normalised.
    device : torch.device
        Device of ``m`` and ``lam``.
    variant, dtype, spatial_mask, fourier_filter, kernel_radius
        As in :class:`~unrolled3d.normal.DiagCirculantNormal`.
    complex_images : bool, optional
        As there; ``None`` (default) also reads it from the physics (complex for
        :class:`~unrolled3d.mri.MultiCoilMRI3D`, its patches, deepinv's ``MRI``/``MultiCoilMRI``).

    Attributes
    ----------
    physics : deepinv.physics.LinearPhysics
        The wrapped (exact) operator.
    normal : DiagCirculantNormal
        The approximation ``H`` it carries.

    ``A``, ``A_adjoint``, ``A_adjoint_A`` and ``A_dagger`` are the wrapped physics' own. ``H`` is
    applied by ``wrapper.normal.apply(x)`` and restricted to a patch by
    ``wrapper.normal.restrict(offset, shape)``.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.normal import DiagCirculantWrapper
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 10), normalize=True)
    >>> wrapped = DiagCirculantWrapper(physics, (8, 8, 8))
    >>> errors = wrapped.fit(n_iter=5, progress=False)       # E ||A^T A x - H x||^2 over Gaussian probes
    >>> wrapped.relative_error() < 1
    True
    >>> x = torch.rand(1, 1, 8, 8, 8)
    >>> torch.equal(wrapped.A_adjoint_A(x), physics.A_adjoint_A(x))   # the physics is exact
    True
    >>> wrapped.normal.restrict((0, 2, 4), (4, 4, 4)).A_adjoint_A(torch.rand(1, 1, 4, 4, 4)).shape
    torch.Size([1, 1, 4, 4, 4])
    """

    def __init__(
        self,
        physics: LinearPhysics,
        img_size: Sequence[int],
        scaling: float = 1.0,
        device: torch.device | str = "cpu",
        variant: str = "sandwich",
        dtype: torch.dtype = torch.float32,
        spatial_mask: torch.Tensor | None = None,
        fourier_filter: torch.Tensor | None = None,
        complex_images: bool | None = None,
        kernel_radius: int | Sequence[int] | None = None,
    ) -> None:
        _check_physics(physics)
        normal = DiagCirculantNormal.for_physics(
            physics, img_size, scaling=scaling, variant=variant, complex_images=complex_images,
            kernel_radius=kernel_radius, dtype=dtype, device=device, spatial_mask=spatial_mask,
            fourier_filter=fourier_filter)
        self._setup(physics, normal)

    def _setup(self, physics: LinearPhysics, normal: DiagCirculantNormal) -> None:
        LinearPhysics.__init__(self, img_size=(normal.channels, *normal.img_shape), device=normal.device)
        self.physics = physics
        self.normal = normal

    @classmethod
    def around(cls, physics: LinearPhysics, normal: DiagCirculantNormal) -> "DiagCirculantWrapper":
        """The wrapper of ``physics`` carrying the given ``H`` (shared, not copied), taken to be the
        approximation of this physics' normal operator.

        Examples
        --------
        >>> from unrolled3d.normal import DiagCirculantNormal, DiagCirculantWrapper
        >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
        >>> H = DiagCirculantNormal((8, 8, 8))
        >>> DiagCirculantWrapper.around(ConeBeamCT(standard_cone_beam(8, 4)), H).normal is H
        True
        """
        _check_physics(physics)
        if not isinstance(normal, DiagCirculantNormal):
            raise TypeError(f"normal must be a unrolled3d.normal.DiagCirculantNormal, got {type(normal).__name__}")
        out = cls.__new__(cls)
        out._setup(physics, normal)
        return out

    # ----------------------------------------------------------------- the physics (exact)
    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.physics.A(x, **kwargs)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.physics.A_adjoint(y, **kwargs)

    def A_adjoint_A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """The exact ``A^T A x`` of the wrapped physics (``H`` is ``self.normal.apply``)."""
        return self.physics.A_adjoint_A(x, **kwargs)

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.physics.A_dagger(y, **kwargs)

    def set_parameters(self, spatial_mask: torch.Tensor | None = None,
                       fourier_filter: torch.Tensor | None = None) -> "DiagCirculantWrapper":
        """Load ``m`` and/or ``lam`` into ``H`` (:meth:`DiagCirculantNormal.set_parameters`)."""
        self.normal.set_parameters(spatial_mask=spatial_mask, fourier_filter=fourier_filter)
        return self

    def with_parameters(self, spatial_mask: torch.Tensor | None = None,
                        fourier_filter: torch.Tensor | None = None) -> "DiagCirculantWrapper":
        """A new wrapper of the same physics carrying a new ``H`` with these parameters (those not
        given copied); this wrapper is left unchanged."""
        return DiagCirculantWrapper.around(self.physics, self.normal.with_parameters(spatial_mask, fourier_filter))

    def make_self_adjoint(self) -> "DiagCirculantWrapper":
        """Symmetrise ``H`` in place (:meth:`DiagCirculantNormal.make_self_adjoint`)."""
        self.normal.make_self_adjoint()
        return self

    # ----------------------------------------------------------------- fitting (unrolled3d.normal.fit)
    def exact_normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A x / scaling`` (``A^H A`` for complex images): the fitting target."""
        return exact_normal(self.physics, x, self.normal.scaling)

    def init_from_psf(self) -> "DiagCirculantWrapper":
        """``m = 1`` and ``lam`` from the point-spread function of ``A^T A / scaling`` at the centre."""
        init_from_psf(self.normal, self.physics)
        return self

    def fit(self, n_iter: int = 200, batch_size: int = 1, lr: float = 1e-2,
            optimizer: Callable[..., torch.optim.Optimizer] | None = None, fit_mask: bool = True,
            n_probes: int | None = None, generator: torch.Generator | None = None, progress: bool = True
            ) -> list[float]:
        """Fit ``H`` to this physics: :func:`unrolled3d.normal.fit_normal` (same arguments, same
        returned history of relative errors)."""
        return fit_normal(self.normal, self.physics, n_iter, batch_size, lr, optimizer, fit_mask, n_probes,
                          generator, progress)

    def relative_error(self, n_probes: int = 2, generator: torch.Generator | None = None) -> float:
        """``||A^T A x / scaling - H x|| / ||A^T A x / scaling||`` on fresh Gaussian probes."""
        return relative_error(self.normal, self.physics, n_probes, generator)

    # ----------------------------------------------------------------- files (unrolled3d.normal.files)
    def save(self, path: str | os.PathLike, force: bool = False) -> None:
        """Write ``H`` with the fingerprint of this physics (:func:`unrolled3d.normal.save_normal`)."""
        self.normal.acquisition = acquisition_of(self.physics)
        save_normal(self.normal, path, force=force)

    def load(self, path: str | os.PathLike) -> "DiagCirculantWrapper":
        """Load parameters saved by :meth:`save`; refuse those of another acquisition or setting."""
        load_parameters(self.normal, path, acquisition_of(self.physics))
        return self

    @classmethod
    def from_file(cls, path: str | os.PathLike, physics: LinearPhysics,
                  device: torch.device | str = "cpu") -> "DiagCirculantWrapper":
        """The wrapper of ``physics`` carrying the ``H`` saved in ``path`` (its settings as saved),
        which must have been fitted for this acquisition."""
        _check_physics(physics)
        return cls.around(physics, load_normal(path, physics, device=device))


for _name, _doc in _READ_THROUGH.items():  # read-only: H's parameters are set through H (set_parameters)
    setattr(DiagCirculantWrapper, _name, _read_through(_name, _doc))
del _name, _doc
