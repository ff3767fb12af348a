"""``DiagCirculantPatch``: the approximation ``H`` restricted to one patch, in normal-equation form.

Built by :meth:`unrolled3d.normal.DiagCirculantNormal.restrict`; it declares the normal-equation
protocol (:class:`unrolled3d.protocols.NormalEquationPhysics`): the patch problem is
``H_p x = b`` with ``b = S A^T y_p``, and the data step of an unrolled network is
``data_gradient(x, b) = H_p x - b``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from deepinv.physics import LinearPhysics

from ..protocols import NormalEquationPhysics
from .functional import check_image, diag_circulant

__all__ = ["DiagCirculantPatch"]


class DiagCirculantPatch(LinearPhysics, NormalEquationPhysics):
    r"""``S H S^T``: the approximation restricted to one patch, in normal-equation form.

    Built by :meth:`unrolled3d.normal.DiagCirculantNormal.restrict`. The measurement handed to a
    reconstructor with this physics is ``b = S A^T y_p`` (the patch's backprojected data), and
    the operator is that of the normal equation ``H_p x = b``:

    * ``A(x) = H_p x``: the backprojected measurement of ``x`` (``S A^T A S^T x ~ H_p x``), in
      the space of ``b``;
    * ``A_adjoint(b) = b``: the data are backprojected already;
    * ``A_adjoint_A(x) = H_p x`` and ``data_gradient(x, b) = H_p x - b``.

    With the inner product ``<u, v> = u^T H_p^{-1} v`` on the space of ``b`` (the whitened
    normal equation), the identity is the adjoint of ``H_p`` for a self-adjoint ``H_p``, and
    ``||A x - b||^2`` is ``x^T H_p x - 2 b^T x`` up to a constant: the data term whose gradient is
    ``H_p x - b``. So deepinv's generic code is exact on it: ``L2().grad`` is ``H_p x - b``,
    ``prox_l2`` solves ``(H_p + I / gamma) x = b + z / gamma``, ``A_adjoint(b)`` (an optimiser's
    default start, ``ArtifactRemoval``'s input) is the backprojection. One caveat: ``L2().fn``
    evaluates the Euclidean ``||H_p x - b||^2 / 2``, not that energy (it matters only to
    backtracking line searches and cost-based stopping rules), and deepinv's ``adjointness_test``
    (Euclidean) does not apply. ``A_dagger(b)`` is the start point given by :meth:`with_start`
    (the patch of the context, or of the first estimate), as a partitioned sweep sets it.

    Parameters
    ----------
    mask : torch.Tensor
        ``m`` cropped to the patch, ``(pd, ph, pw)``.
    lam : torch.Tensor
        The kernel's spectrum on the patch's FFT grid (rFFT, or full FFT for complex images).
    scaling : float
        ``H`` approximates ``A^T A / scaling``.
    variant : str
        Form of ``H`` (:data:`unrolled3d.normal.VARIANTS`).
    offset : tuple of 3 int
        Position of the patch in the volume.
    complex_images : bool
        Images are complex ``(B, 2, ...)``.
    grid : tuple of 3 int
        The patch's FFT grid.
    x_start : torch.Tensor, optional
        ``[B, C, pd, ph, pw]``: what ``A_dagger`` returns.

    Examples
    --------
    >>> import torch
    >>> from deepinv.optim import L2
    >>> from unrolled3d.normal import DiagCirculantPatch
    >>> lam = torch.ones(4, 4, 3)                        # a unit impulse kernel on the 4^3 grid
    >>> h = DiagCirculantPatch(torch.full((2, 2, 2), 2.0), lam, 1.0, "sandwich", (0, 0, 0), grid=(4, 4, 4))
    >>> x, b = torch.randn(1, 1, 2, 2, 2), torch.randn(1, 1, 2, 2, 2)
    >>> torch.allclose(h.A_adjoint_A(x), 4 * x, atol=1e-6)    # H = diag(m)^2
    True
    >>> torch.allclose(L2().grad(x, b, h), 4 * x - b, atol=1e-6), torch.equal(h.A_adjoint(b), b)
    (True, True)
    >>> torch.equal(h.with_start(x).A_dagger(b), x)
    True
    """

    def __init__(self, mask: torch.Tensor, lam: torch.Tensor, scaling: float, variant: str,
                 offset: Sequence[int], complex_images: bool = False, grid: Sequence[int] | None = None,
                 x_start: torch.Tensor | None = None) -> None:
        self.complex_images = bool(complex_images)
        super().__init__(img_size=(2 if self.complex_images else 1, *mask.shape), device=mask.device)
        self.mask, self.lam = mask, lam
        self.scaling, self.variant, self.offset = scaling, variant, tuple(offset)
        self.grid = tuple(2 * s for s in mask.shape) if grid is None else tuple(grid)
        self.x_start = x_start

    def A_adjoint_A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """``H_p x = scaling * S H S^T x`` for ``x`` of shape ``[B, C, *patch]`` (``C = 2`` for
        complex images)."""
        check_image(x, self.mask, self.complex_images)
        return diag_circulant(x, self.mask, self.lam, self.variant, self.scaling, self.complex_images, self.grid)

    def data_gradient(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Gradient of the patch data term with ``A^T A`` replaced by ``H_p``: ``H_p x - b``, with
        ``b = S A^T y_p`` (shaped like ``x``)."""
        if b.shape != x.shape:
            raise ValueError(f"b (A^T y) has shape {tuple(b.shape)}, x has {tuple(x.shape)}")
        return self.A_adjoint_A(x) - b

    def with_start(self, x_start: torch.Tensor) -> "DiagCirculantPatch":
        """The same operator with ``A_dagger`` returning ``x_start`` (tensors shared, not copied)."""
        return DiagCirculantPatch(self.mask, self.lam, self.scaling, self.variant, self.offset, self.complex_images,
                                  self.grid, x_start)

    def A_dagger(self, b: torch.Tensor, **kwargs) -> torch.Tensor:
        """The start point set by :meth:`with_start` (the patch problem's initial estimate)."""
        if self.x_start is None:
            raise ValueError("this patch operator has no start point: build it with with_start(x_start)")
        return self.x_start

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """``H_p x``: the backprojected measurement of ``x`` (the normal equation's operator)."""
        return self.A_adjoint_A(x)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """``b`` itself: the data of the normal equation are backprojected already (see the class
        docstring for the inner product in which this is the adjoint of :meth:`A`)."""
        return y
