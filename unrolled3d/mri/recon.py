r"""Classical reconstructions for :class:`~unrolled3d.mri.MultiCoilMRI3D`: zero-filled and CG-SENSE."""
from __future__ import annotations

import math
import numbers
from typing import Protocol, runtime_checkable

import torch
from deepinv.optim.linear import conjugate_gradient

from .._validation import integer, real

__all__ = ["zero_filled", "zero_filled_from", "cg_sense", "CoilCombined"]


@runtime_checkable
class CoilCombined(Protocol):
    """A multi-coil physics that reports ``sum_c |S_c|^2`` (e.g. :class:`unrolled3d.mri.MultiCoilMRI3D`).

    Examples
    --------
    >>> from unrolled3d.mri import MultiCoilMRI3D
    >>> from unrolled3d.mri.recon import CoilCombined
    >>> issubclass(MultiCoilMRI3D, CoilCombined)
    True
    """

    def sum_of_squares(self) -> torch.Tensor:
        """``sum_c |S_c|^2``, real ``(D, H, W)``."""
        ...


def zero_filled_from(x: torch.Tensor, sos: torch.Tensor) -> torch.Tensor:
    """``x / sos`` where ``sos > 0`` and 0 elsewhere (``x = A^H y``, ``sos = sum_c |S_c|^2``);
    ``x`` itself when the maps are normalised (``sos = 1``)."""
    s = sos.to(x.dtype)
    if bool(((s - 1).abs() <= 1e-6).all()):
        return x  # normalised maps: A^H y exactly
    return torch.where(s > 0, x / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(x))


def zero_filled(y: torch.Tensor, physics) -> torch.Tensor:
    """Zero-filled coil-combined image ``sum_c conj(S_c) F^-1 y_c / sum_c |S_c|^2`` ``(B, 2, D, H, W)``.

    For maps normalised to ``sum_c |S_c|^2 = 1`` this is ``A^H y``; voxels where every map
    vanishes are 0. A physics that is not :class:`CoilCombined` (e.g. deepinv's) gives plain
    ``A^H y``.
    """
    x = physics.A_adjoint(y)
    if not isinstance(physics, CoilCombined):
        return x
    return zero_filled_from(x, physics.sum_of_squares())


def cg_sense(y: torch.Tensor, physics, n_iter: int = 50, tol: float = 1e-6, lam: float = 0.0,
             x0: torch.Tensor | None = None, return_info: bool = False):
    r"""CG-SENSE: conjugate gradient on ``(A^H A + lam I) x = A^H y`` (per batch item).

    The complex system is solved in the real ``(B, 2, ...)`` representation with the inner
    product ``Re <a, b>``, for which ``A^H A`` is self-adjoint positive semi-definite, by
    deepinv's :func:`deepinv.optim.linear.conjugate_gradient` (batch items stop together, when
    every one has converged).

    Parameters
    ----------
    y
        k-space ``(B, 2, N_c, D, H, W)``.
    physics
        a :class:`~unrolled3d.mri.MultiCoilMRI3D` (or any linear physics with
        ``A_adjoint`` and ``A_adjoint_A``).
    n_iter : int
        maximal iterations.
    tol : float
        stop when ``||r|| < tol * ||A^H y||`` for every batch item.
    lam : float
        Tikhonov weight ``>= 0``.
    x0
        start (default zeros).
    return_info : bool
        also return ``{"products": the number of A^H A products (one per iteration, plus
        deepinv's initial residual and its periodic residual refresh), "relative_residual": (B,)
        tensor ||A^H y - (A^H A + lam I) x|| / ||A^H y|| (one more product)}``.
    """
    n_iter = integer("n_iter", n_iter, 1)
    tol = real("tol", tol, nonnegative=True)
    if not (isinstance(lam, numbers.Real) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite real number >= 0, got {lam!r}")
    products = 0

    def normal(v: torch.Tensor) -> torch.Tensor:
        nonlocal products
        products += 1
        out = physics.A_adjoint_A(v)
        return out + lam * v if lam else out

    b = physics.A_adjoint(y)
    # eps guards deepinv's divisions; its default (1e-8, absolute) is not small beside the squared
    # residual of a tight solve and slows convergence, so only the underflow guard is kept
    x = conjugate_gradient(normal, b, max_iter=n_iter, tol=tol, eps=torch.finfo(b.dtype).tiny, parallel_dim=0,
                           init=None if x0 is None else x0.clone())
    if not return_info:
        return x
    spent = products
    r = (b - normal(x)).flatten(1)
    b_norm = torch.linalg.vector_norm(b.flatten(1), dim=1)
    rel = torch.linalg.vector_norm(r, dim=1) / b_norm.clamp_min(torch.finfo(b.dtype).tiny)
    return x, {"products": spent, "relative_residual": rel}
