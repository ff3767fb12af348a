r"""Classical reconstructions for :class:`~unrolled3d.mri.MultiCoilMRI3D`: zero-filled and CG-SENSE."""
from __future__ import annotations

import math
import numbers
from typing import Protocol, runtime_checkable

import torch

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


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-batch real inner product ``Re <a, b>`` over the real/imaginary channels, ``(B, 1, 1, 1, 1)``."""
    return (a * b).sum(dim=tuple(range(1, a.ndim)), keepdim=True)


def cg_sense(y: torch.Tensor, physics, n_iter: int = 50, tol: float = 1e-6, lam: float = 0.0,
             x0: torch.Tensor | None = None, return_info: bool = False):
    r"""CG-SENSE: conjugate gradient on ``(A^H A + lam I) x = A^H y`` (per batch item).

    The complex system is solved in the real ``(B, 2, ...)`` representation with the inner
    product ``Re <a, b>``, for which ``A^H A`` is self-adjoint positive semi-definite.

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
        stop when ``||r|| <= tol * ||A^H y||`` for every batch item.
    lam : float
        Tikhonov weight ``>= 0``.
    x0
        start (default zeros).
    return_info : bool
        also return ``{"iterations": k, "relative_residual": (B,) tensor}``.
    """
    n_iter = integer("n_iter", n_iter, 1)
    tol = real("tol", tol, nonnegative=True)
    if not (isinstance(lam, numbers.Real) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite real number >= 0, got {lam!r}")

    def normal(v: torch.Tensor) -> torch.Tensor:
        out = physics.A_adjoint_A(v)
        return out + lam * v if lam else out

    b = physics.A_adjoint(y)
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - normal(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = _dot(r, r)
    b_norm = _dot(b, b).sqrt()
    stop = (tol * b_norm) ** 2
    k = 0
    for k in range(1, n_iter + 1):
        if bool((rs <= stop).all()):
            k -= 1
            break
        ap = normal(p)
        pap = _dot(p, ap)
        alpha = torch.where(pap > 0, rs / torch.where(pap > 0, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _dot(r, r)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    if not return_info:
        return x
    rel = (rs.sqrt() / b_norm.clamp_min(torch.finfo(b.dtype).tiny)).flatten()
    return x, {"iterations": k, "relative_residual": rel}
