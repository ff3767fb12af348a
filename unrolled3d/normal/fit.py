r"""Fitting the diagonal-circulant approximation ``H`` to the exact normal operator of a physics.

``m`` and ``lam`` minimise the Frobenius distance ``E_{x ~ N(0, I)} ||A^T A x / scaling - H x||^2``
(the paper's objective), estimated with fresh Gaussian probes, from a start given by the
point-spread function of ``A^T A`` at the volume's centre. The functions take an ``H``
(:class:`~unrolled3d.normal.DiagCirculantNormal`) and the physics, and use only their public
interfaces: the physics' ``A`` and ``A_adjoint`` (and ``fingerprint`` where it has one), ``H``'s
parameters, settings and :meth:`~unrolled3d.normal.DiagCirculantNormal.set_parameters`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import torch
from deepinv.physics import LinearPhysics
from tqdm.auto import tqdm

from .._validation import boolean, integer, real
from .functional import diag_circulant
from .layout import acquisition_of
from .operator import DiagCirculantNormal

__all__ = ["exact_normal", "init_from_psf", "fit_normal", "relative_error"]


def _check(H: Any, physics: Any) -> None:
    if not isinstance(H, DiagCirculantNormal):
        raise TypeError(f"H must be a unrolled3d.normal.DiagCirculantNormal, got {type(H).__name__}")
    if not isinstance(physics, LinearPhysics):
        raise TypeError(f"physics must be a deepinv LinearPhysics, got {type(physics).__name__}")


def exact_normal(physics: Any, x: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """``A^T A x / scaling`` (``A^H A`` for complex images): the fitting target.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.normal import exact_normal
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 4))
    >>> exact_normal(physics, torch.zeros(1, 1, 8, 8, 8)).abs().max().item()
    0.0
    """
    return physics.A_adjoint(physics.A(x)) / scaling


def _probes(H: DiagCirculantNormal, n: int, gen: torch.Generator) -> torch.Tensor:
    # complex images: re and im i.i.d. N(0, 1), a circular complex Gaussian probe
    return torch.randn((n, H.channels, *H.img_shape), generator=gen, dtype=H.dtype).to(H.device)


@torch.no_grad()
def init_from_psf(H: DiagCirculantNormal, physics: Any) -> DiagCirculantNormal:
    """``m = 1`` and ``lam`` from the point-spread function of ``A^T A / scaling`` at the centre.

    Complex images: the response to a real unit impulse is the complex kernel (``A^H A`` is
    C-linear), transformed with the full FFT. Returns ``H``, updated in place.

    Examples
    --------
    >>> from unrolled3d.normal import DiagCirculantNormal, init_from_psf
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 4), normalize=True)
    >>> init_from_psf(DiagCirculantNormal((8, 8, 8)), physics).fitted
    True
    """
    _check(H, physics)
    delta = torch.zeros((1, H.channels, *H.img_shape), dtype=H.dtype, device=H.device)
    c = tuple(s // 2 for s in H.img_shape)
    delta[(0, 0) + c] = 1.0
    out = exact_normal(physics, delta, H.scaling)
    psf = torch.complex(out[0, 0], out[0, 1]) if H.complex_images else out[0, 0]
    grid = torch.zeros(H.grid, dtype=psf.dtype, device=psf.device)
    grid[: H.img_shape[0], : H.img_shape[1], : H.img_shape[2]] = psf
    grid = torch.roll(grid, shifts=tuple(-ci for ci in c), dims=(0, 1, 2))  # lag 0 to index 0
    spec = torch.fft.fftn(grid) if H.complex_images else torch.fft.rfftn(grid)
    H.set_parameters(spatial_mask=torch.ones_like(H.spatial_mask), fourier_filter=spec)
    H.acquisition = acquisition_of(physics)
    return H


@contextlib.contextmanager
def _recording_grad(params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Make ``params`` require grad inside the block (the fit), then restore their flags."""
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, was):
            p.requires_grad_(flag)


def _unscaled(H: DiagCirculantNormal, x: torch.Tensor) -> torch.Tensor:
    """``H x`` with the full-volume parameters at scale 1 (the fit's target is divided by ``scaling``),
    differentiable in ``m`` and ``lam``."""
    return diag_circulant(x, H.spatial_mask, H.effective_filter(), H.variant, 1.0, H.complex_images, H.grid)


def _check_fit_args(n_iter, batch_size, lr, fit_mask, n_probes, progress) -> tuple:
    n_iter = integer("n_iter", n_iter, 1)
    batch_size = integer("batch_size", batch_size, 1)
    lr = real("lr", lr, positive=True)
    fit_mask = boolean("fit_mask", fit_mask)
    progress = boolean("progress", progress)
    if n_probes is not None and (isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < batch_size):
        raise ValueError(f"n_probes must be None or an integer >= batch_size ({batch_size}), got {n_probes!r}")
    return n_iter, batch_size, lr, fit_mask, progress


def fit_normal(H: DiagCirculantNormal, physics: Any, n_iter: int = 200, batch_size: int = 1, lr: float = 1e-2,
               optimizer: Callable[..., torch.optim.Optimizer] | None = None, fit_mask: bool = True,
               n_probes: int | None = None, generator: torch.Generator | None = None, progress: bool = True
               ) -> list[float]:
    r"""Fit ``m`` and ``lam`` of ``H`` by minimising ``E_x ||A^T A x / scaling - H x||^2``, ``x ~ N(0, I)``.

    Each step draws ``batch_size`` fresh Gaussian probes (two projections each), so the
    stochastic objective is the Frobenius distance itself; ``n_probes`` instead fixes a bank
    of probes computed once (cheaper per step, but the fit may then overfit the bank: the
    filter has 8x more unknowns than a volume). Starts from :func:`init_from_psf` unless
    parameters were set. The learning rate decays with a cosine schedule.

    Parameters
    ----------
    H : DiagCirculantNormal
        The approximation, updated in place (its ``acquisition`` set to the physics' fingerprint).
    physics : deepinv.physics.LinearPhysics
        The operator ``A`` whose ``A^T A`` is approximated.
    n_iter : int
        Optimiser steps.
    batch_size : int
        Probes per step.
    lr : float
        Initial learning rate (Adam by default).
    optimizer : callable, optional
        ``optimizer(params, lr=...) -> torch.optim.Optimizer``.
    fit_mask : bool
        Learn ``m`` (``False``: the best unmasked circulant, ``m = 1``).
    n_probes : int, optional
        Size of a fixed probe bank (default: fresh probes every step).
    generator : torch.Generator, optional
        Source of the probes (default: seeded with 0).
    progress : bool
        Show a progress bar with the current error.

    Returns
    -------
    list of float
        Relative error ``||A^T A x - H x|| / ||A^T A x||`` of each step's batch.

    Examples
    --------
    >>> from unrolled3d.normal import DiagCirculantNormal, fit_normal, relative_error
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 10), normalize=True)
    >>> H = DiagCirculantNormal((8, 8, 8))
    >>> errors = fit_normal(H, physics, n_iter=5, progress=False)
    >>> relative_error(H, physics) < 1
    True
    """
    _check(H, physics)
    n_iter, batch_size, lr, fit_mask, progress = _check_fit_args(n_iter, batch_size, lr, fit_mask, n_probes, progress)
    gen = generator or torch.Generator().manual_seed(0)
    if not H.fitted:
        init_from_psf(H, physics)
    if not fit_mask:
        H.set_parameters(spatial_mask=torch.ones_like(H.spatial_mask))

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = _probes(H, n, gen)
        with torch.no_grad():
            return x, torch.cat([exact_normal(physics, x[i : i + 1], H.scaling) for i in range(n)])

    bank = draw(n_probes) if n_probes is not None else None
    params = [H.fourier_filter] + ([H.spatial_mask] if fit_mask else [])
    opt = (optimizer or torch.optim.Adam)(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_iter)
    history: list[float] = []
    bar = tqdm(range(n_iter), desc="fitting H", disable=not progress, leave=False)
    with _recording_grad(params):
        for _ in bar:
            if bank is None:
                x, t = draw(batch_size)
            else:
                idx = torch.randperm(len(bank[0]), generator=gen)[:batch_size].to(H.device)  # n_probes
                x, t = bank[0][idx], bank[1][idx]
            with torch.enable_grad():
                opt.zero_grad(set_to_none=True)
                loss = (_unscaled(H, x) - t).square().sum() / t.square().sum()
                loss.backward()
                opt.step()
            sched.step()
            history.append(float(loss.detach().sqrt()))
            bar.set_postfix(rel_err=f"{history[-1]:.4f}")
            # A diverged fit must stop here, not hand a NaN operator to a file or a reconstruction.
            if not math.isfinite(history[-1]) or not all(bool(torch.isfinite(p).all()) for p in params):
                raise FloatingPointError(f"fitting H diverged at step {len(history)} of {n_iter} (relative error "
                                         f"{history[-1]}): lower the learning rate (lr={lr:g})")
    H.acquisition = acquisition_of(physics)
    return history


@torch.no_grad()
def relative_error(H: DiagCirculantNormal, physics: Any, n_probes: int = 2,
                   generator: torch.Generator | None = None) -> float:
    """``||A^T A x / scaling - H x|| / ||A^T A x / scaling||`` on fresh Gaussian probes.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.normal import DiagCirculantNormal, init_from_psf, relative_error
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 10), normalize=True)
    >>> 0 < relative_error(init_from_psf(DiagCirculantNormal((8, 8, 8)), physics), physics) < 1
    True
    """
    _check(H, physics)
    H.require_fitted()
    x = _probes(H, n_probes, generator or torch.Generator().manual_seed(12345))
    t = torch.cat([exact_normal(physics, x[i : i + 1], H.scaling) for i in range(n_probes)])
    return float((_unscaled(H, x) - t).norm() / t.norm())
