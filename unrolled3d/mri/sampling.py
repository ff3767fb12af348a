r"""Cartesian 3D undersampling masks: two phase-encode axes ``(D, H)``, a fully sampled readout ``W``.

:func:`variable_density_mask` keeps a fully sampled calibration block at the k-space centre
(index ``n // 2`` on each axis: the zero frequency of the centred FFT of
:class:`~unrolled3d.mri.MultiCoilMRI3D` and of deepinv) and adds exactly
``round(D H / acceleration) - |calibration|`` phase-encode lines outside it, so the achieved
acceleration ``D H / n_lines`` is the requested one up to the rounding of one line.

Density: with ``rho`` the elliptical radius in the phase-encode plane (``0`` at the centre, ``1``
at the middle of each edge), the target density is ``~ (1 + slope * rho)^-2`` (``slope=2``: nine
times denser at the centre than at the edge midpoints).

* ``kind="random"``: lines drawn without replacement with probability ``~ (1 + slope rho)^-2``.
* ``kind="poisson"``: variable-radius Poisson-disc sampling by plain dart throwing (random
  sequential addition): grid points are visited in a random order and accepted unless they
  fall inside the exclusion disc of an already accepted point (calibration included), a disc of
  radius ``r0 * (1 + slope * rho)`` evaluated at that accepted point. ``r0`` is the largest radius (bisection) at which the throw
  still reaches the required count (to 1%); the throw stops as soon as it has the required number of
  lines. Not Bridson's algorithm, not BART's: simple and seeded, adequate for experiments.

Both are reproducible given ``seed`` (numpy ``default_rng``).
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np
import torch

from .._validation import int_triple

__all__ = ["variable_density_mask", "acceleration", "calibration_slices"]

KINDS = ("poisson", "random")


def calibration_slices(shape: Sequence[int], calib: Sequence[int]) -> tuple[slice, ...]:
    """Slices of the centred calibration block in the phase-encode plane ``(D, H)`` (or in all three
    axes when ``calib`` has three entries)."""
    return tuple(slice(n // 2 - c // 2, n // 2 - c // 2 + c) for n, c in zip(shape, calib))


def acceleration(mask: torch.Tensor) -> float:
    """Achieved acceleration ``numel / sum(mask != 0)`` of a ``(D, H, W)`` (or ``(D, H)``) mask."""
    n = int((mask != 0).sum())
    if n == 0:
        raise ValueError("the mask samples nothing")
    return mask.numel() / n


def _density_radius(shape: tuple[int, int]) -> np.ndarray:
    d, h = shape
    i = (np.arange(d) - d // 2) / max(d / 2, 1)
    j = (np.arange(h) - h // 2) / max(h / 2, 1)
    return np.sqrt(i[:, None] ** 2 + j[None, :] ** 2)


def _dart_throw(order: np.ndarray, radius: np.ndarray, occupied: np.ndarray, n_needed: int) -> np.ndarray | None:
    """Random sequential addition: visit ``order`` and accept a point unless it lies within the
    exclusion disc of an accepted (or pre-occupied) point, a disc of that point's own ``radius``.
    Returns the accepted flat indices, or None if fewer than ``n_needed`` could be placed."""
    d, h = occupied.shape
    rmax = int(math.ceil(float(radius.max())))
    hp = h + 2 * rmax
    blocked = np.zeros((d + 2 * rmax, hp), dtype=bool)
    off = np.arange(-rmax, rmax + 1)
    dist2 = off[:, None] ** 2 + off[None, :] ** 2

    def stamp(i: int, j: int) -> None:
        r = float(radius[i, j])
        k = int(math.ceil(r))
        blocked[i + rmax - k:i + rmax + k + 1, j + rmax - k:j + rmax + k + 1] |= (
            dist2[rmax - k:rmax + k + 1, rmax - k:rmax + k + 1] < r * r)

    for i, j in zip(*np.nonzero(occupied)):
        stamp(int(i), int(j))
    flat = blocked.reshape(-1)
    rows, cols = np.divmod(order, h)
    padded = ((rows + rmax) * hp + cols + rmax).tolist()
    accepted = []
    for idx, pidx, i, j in zip(order.tolist(), padded, rows.tolist(), cols.tolist()):
        if flat[pidx]:
            continue
        stamp(i, j)
        accepted.append(idx)
        if len(accepted) == n_needed:
            return np.asarray(accepted, dtype=np.int64)
    return None


def variable_density_mask(shape: Sequence[int], acceleration: float = 8.0, calib: Sequence[int] | None = None,
                          seed: int = 0, kind: str = "poisson", slope: float = 2.0,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A 0/1 mask ``(D, H, W)`` undersampling the phase-encode plane ``(D, H)``, constant along ``W``.

    Parameters
    ----------
    shape
        ``(D, H, W)``.
    acceleration : float
        ``R >= 1``; the mask has exactly ``round(D H / R)`` phase-encode lines.
    calib
        ``(c_D, c_H)`` fully sampled centred calibration block (``(0, 0)``: none; default
        ``min(24, n // 4)`` per axis, i.e. 24x24 from 96x96 phase-encode planes up).
    seed : int
        random seed (masks are reproducible).
    kind : str
        ``"poisson"`` (variable-radius dart throwing) or ``"random"`` (variable-density
        random draw), see the module docstring.
    slope : float
        density falloff, ``density ~ (1 + slope * rho)^-2`` (``0``: uniform).
    """
    D, H, W = int_triple("shape", shape)
    if isinstance(acceleration, bool) or not isinstance(acceleration, numbers.Real) or not math.isfinite(acceleration):
        raise TypeError(f"acceleration must be a finite real number, got {acceleration!r}")
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    if calib is None:
        calib = (min(24, D // 4), min(24, H // 4))
    try:
        cd, ch = (int(c) for c in calib)
    except (TypeError, ValueError):
        raise TypeError(f"calib must be 2 integers (c_D, c_H), got {calib!r}") from None
    if not (0 <= cd <= D and 0 <= ch <= H):
        raise ValueError(f"calib {(cd, ch)} must lie within the phase-encode plane {(D, H)}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(slope, bool) or not isinstance(slope, numbers.Real) or slope < 0:
        raise ValueError(f"slope must be a real number >= 0, got {slope!r}")
    n_total = D * H
    n_target = max(1, int(round(n_total / acceleration)))
    pe = np.zeros((D, H), dtype=bool)
    pe[calibration_slices((D, H), (cd, ch))] = True
    n_calib = int(pe.sum())
    if n_calib > n_target:
        raise ValueError(f"the {cd}x{ch} calibration block has {n_calib} lines, more than the {n_target} that "
                         f"acceleration {acceleration} allows on a {D}x{H} phase-encode plane")
    n_needed = n_target - n_calib
    rng = np.random.default_rng(seed)
    rho = _density_radius((D, H))
    free = np.flatnonzero(~pe.ravel())
    if n_needed > 0 and kind == "random":
        w = (1.0 + slope * rho.ravel()[free]) ** -2
        pe.ravel()[rng.choice(free, size=n_needed, replace=False, p=w / w.sum())] = True
    elif n_needed > 0:
        order = rng.permutation(free)
        shape_r = 1.0 + slope * rho
        # bracket: a radius <= 1 everywhere blocks nothing (count always reached); the jammed
        # density of random sequential addition is ~0.7 / r^2, which gives the guess r_est.
        floor = 1.0 / float(shape_r.max())
        r_est = math.sqrt(0.7 * float((shape_r.ravel()[free] ** -2).sum()) / n_needed)
        lo, hi, best = floor, None, _dart_throw(order, floor * shape_r, pe, n_needed)
        for guess in (0.9 * r_est, 1.15 * r_est):
            if guess <= lo:
                continue
            got = _dart_throw(order, guess * shape_r, pe, n_needed)
            if got is None:
                hi = guess
                break
            lo, best = guess, got
        hi = hi if hi is not None else float(max(D, H))
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            got = _dart_throw(order, mid * shape_r, pe, n_needed)
            if got is not None:
                lo, best = mid, got
            else:
                hi = mid
            if hi - lo < 0.01 * lo:
                break
        pe.ravel()[best] = True
    mask = torch.from_numpy(pe).to(dtype)
    return mask[:, :, None].expand(D, H, W).contiguous()
