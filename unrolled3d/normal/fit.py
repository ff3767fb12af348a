r"""Fitting the diagonal-circulant approximation to the exact normal operator.

``m`` and ``lam`` minimise the Frobenius distance ``E_{x ~ N(0, I)} ||A^T A x / scaling - H x||^2``
(the paper's objective), estimated with fresh Gaussian probes, from a start given by the
point-spread function of ``A^T A`` at the volume's centre. The functions take a
:class:`~unrolled3d.normal.DiagCirculantWrapper` and update its parameters in place; the wrapper's
methods of the same names call them.
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .._validation import boolean, integer, real
from .functional import diag_circulant

if TYPE_CHECKING:  # pragma: no cover - types only
    from .wrapper import DiagCirculantWrapper

__all__ = ["exact_normal", "init_from_psf", "fit", "relative_error"]


def exact_normal(op: "DiagCirculantWrapper", x: torch.Tensor) -> torch.Tensor:
    """``A^T A x / scaling`` (``A^H A`` for complex images) with the wrapped physics: the target."""
    return op.physics.A_adjoint(op.physics.A(x)) / op.scaling


@torch.no_grad()
def init_from_psf(op: "DiagCirculantWrapper") -> "DiagCirculantWrapper":
    """``m = 1`` and ``lam`` from the point-spread function of ``A^T A / scaling`` at the centre.

    Complex images: the response to a real unit impulse is the complex kernel (``A^H A`` is
    C-linear), transformed with the full FFT.
    """
    delta = torch.zeros((1, op.channels, *op.img_shape), dtype=op.dtype, device=op.spatial_mask.device)
    c = tuple(s // 2 for s in op.img_shape)
    delta[(0, 0, *c)] = 1.0
    out = exact_normal(op, delta)
    psf = torch.complex(out[0, 0], out[0, 1]) if op.complex_images else out[0, 0]
    grid = torch.zeros(tuple(2 * s for s in op.img_shape), dtype=psf.dtype, device=psf.device)
    grid[: op.img_shape[0], : op.img_shape[1], : op.img_shape[2]] = psf
    op.spatial_mask.fill_(1.0)
    grid = torch.roll(grid, shifts=tuple(-ci for ci in c), dims=(0, 1, 2))  # lag 0 to index 0
    spec = torch.fft.fftn(grid) if op.complex_images else torch.fft.rfftn(grid)
    op.fourier_filter.copy_(spec.to(op.fourier_filter.dtype))
    op.fitted = True
    return op


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


def _apply(op: "DiagCirculantWrapper", x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``H x`` with the full-volume parameters (scale 1: the fit's target is divided by ``scaling``)."""
    return diag_circulant(x, op.spatial_mask, lam, op.variant, 1.0, op.complex_images, op._grid())


def fit(op: "DiagCirculantWrapper", n_iter: int = 200, batch_size: int = 1, lr: float = 1e-2,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None, fit_mask: bool = True,
        n_probes: int | None = None, generator: torch.Generator | None = None, progress: bool = True) -> list[float]:
    """Fit ``m`` and ``lam`` of ``op`` (see :meth:`unrolled3d.normal.DiagCirculantWrapper.fit`)."""
    n_iter = integer("n_iter", n_iter, 1)
    batch_size = integer("batch_size", batch_size, 1)
    lr = real("lr", lr, positive=True)
    fit_mask = boolean("fit_mask", fit_mask)
    progress = boolean("progress", progress)
    if n_probes is not None and (isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < batch_size):
        raise ValueError(f"n_probes must be None or an integer >= batch_size ({batch_size}), got {n_probes!r}")
    gen = generator or torch.Generator().manual_seed(0)
    device = op.spatial_mask.device
    if not op.fitted:
        init_from_psf(op)
    if not fit_mask:
        with torch.no_grad():
            op.spatial_mask.fill_(1.0)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        # complex images: re and im i.i.d. N(0, 1), a circular complex Gaussian probe
        x = torch.randn((n, op.channels, *op.img_shape), generator=gen, dtype=op.dtype).to(device)
        with torch.no_grad():
            return x, torch.cat([exact_normal(op, x[i : i + 1]) for i in range(n)])

    bank = draw(n_probes) if n_probes is not None else None
    params = [op.fourier_filter] + ([op.spatial_mask] if fit_mask else [])
    opt = (optimizer or torch.optim.Adam)(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_iter)
    history: list[float] = []
    bar = tqdm(range(n_iter), desc="fitting H", disable=not progress, leave=False)
    with _recording_grad(params):
        for _ in bar:
            if bank is None:
                x, t = draw(batch_size)
            else:
                idx = torch.randperm(n_probes, generator=gen)[:batch_size].to(device)
                x, t = bank[0][idx], bank[1][idx]
            with torch.enable_grad():
                opt.zero_grad(set_to_none=True)
                hx = _apply(op, x, op.effective_filter(op.fourier_filter))
                loss = (hx - t).square().sum() / t.square().sum()
                loss.backward()
                opt.step()
            sched.step()
            history.append(float(loss.detach().sqrt()))
            bar.set_postfix(rel_err=f"{history[-1]:.4f}")
            # A diverged fit must stop here, not hand a NaN operator to save() or a reconstruction.
            if not math.isfinite(history[-1]) or not all(bool(torch.isfinite(p).all()) for p in params):
                raise FloatingPointError(f"fitting H diverged at step {len(history)} of {n_iter} (relative error "
                                         f"{history[-1]}): lower the learning rate (lr={lr:g})")
    return history


@torch.no_grad()
def relative_error(op: "DiagCirculantWrapper", n_probes: int = 2, generator: torch.Generator | None = None) -> float:
    """``||A^T A x / scaling - H x|| / ||A^T A x / scaling||`` on fresh Gaussian probes."""
    gen = generator or torch.Generator().manual_seed(12345)
    x = torch.randn((n_probes, op.channels, *op.img_shape), generator=gen, dtype=op.dtype).to(op.spatial_mask.device)
    t = torch.cat([exact_normal(op, x[i : i + 1]) for i in range(n_probes)])
    mask, lam = op._params()
    hx = diag_circulant(x, mask, lam, op.variant, 1.0, op.complex_images, op._grid())
    return float((hx - t).norm() / t.norm())
