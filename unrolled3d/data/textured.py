r"""A procedural phantom closer to real anatomy than piecewise-constant ellipsoids.

Random ellipsoids teach a network sharp edges between flat regions; a CT of a head or a body
also has (i) smooth variations of soft tissue, (ii) fine-grained texture, and (iii) fine
high-contrast structure (trabecular bone, vessels with contrast, calcifications) that sparse-view
streaks must not erase. :func:`textured_phantom` draws all of these on the voxel grid:

* a body: an ellipsoid (semi-axes 70-90 % of the volume's half extents), soft tissue at
  ``0.25 (1 + 0.15 s)`` with ``s`` a smooth Gaussian random field (correlation about 1/6 of
  the volume), optionally a dense shell (a "skull", value about 0.8, with probability 1/2);
* organs: 4 to 10 random ellipsoids inside it, values 0.1 to 0.45 (partial-volume voxelised);
* texture: band-pass Gaussian noise of correlation about 1.5 voxels, amplitude 0.02 (8 % of soft tissue);
* fine structure: inside one or two random ellipsoidal "bone" regions, the thin sheets where a
  band-pass field crosses zero (a trabecular-like network, 1-2 voxels thick, value about +0.5),
  and 5 to 20 bright dots of 1-2 voxels (value about 1).

Values are non-negative attenuation-like numbers (soft tissue ~0.25, dense structure ~0.8-1),
zero outside the body. Everything comes from the ``generator`` the caller passes.

Examples
--------
>>> import torch
>>> from unrolled3d.data.textured import textured_phantom
>>> x = textured_phantom((16, 16, 16), torch.Generator().manual_seed(0))
>>> x.shape, bool((x >= 0).all()), float(x[0, 0, 0])
(torch.Size([16, 16, 16]), True, 0.0)
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .._validation import int_triple
from .phantoms import random_ellipsoids, voxelize

__all__ = ["textured_phantom"]


def _gaussian_field(shape: tuple[int, int, int], sigma: float, generator: torch.Generator,
                    band: float | None = None) -> torch.Tensor:
    """White noise low-passed by a Gaussian of ``sigma`` voxels (minus one of ``band`` voxels:
    a band-pass field), scaled to unit standard deviation. float32 ``shape``."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    k2 = sum(torch.fft.fftfreq(n).reshape([-1 if a == i else 1 for a in range(3)]) ** 2
             for i, n in enumerate(shape))
    filt = torch.exp(-2 * math.pi**2 * sigma**2 * k2)
    if band is not None:
        filt = filt - torch.exp(-2 * math.pi**2 * band**2 * k2)
    field = torch.fft.ifftn(torch.fft.fftn(noise) * filt).real
    return (field - field.mean()) / field.std().clamp_min(1e-12)


def _ellipsoid_mask(shape: tuple[int, int, int], centre: Sequence[float], semi: Sequence[float]) -> torch.Tensor:
    """Voxel centres inside the axis-aligned ellipsoid (voxel units, centre relative to the middle)."""
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    r2 = ((zz - centre[0]) / semi[0]) ** 2 + ((yy - centre[1]) / semi[1]) ** 2 + ((xx - centre[2]) / semi[2]) ** 2
    return r2 <= 1


def textured_phantom(shape: int | Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """One random textured phantom (see the module docstring).

    Parameters
    ----------
    shape : int or (int, int, int)
        ``(D, H, W)`` in voxels (at least 8 on every axis).
    generator : torch.Generator
        CPU generator all draws come from (its state advances).

    Returns
    -------
    torch.Tensor
        float32 ``(D, H, W)``, non-negative, zero outside the body.
    """
    shape = int_triple("shape", shape, allow_scalar=True)
    if min(shape) < 8:
        raise ValueError(f"shape must be at least 8 voxels on every axis, got {shape}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))

    half = [n / 2 for n in shape]
    body_semi = [h * uniform(0.7, 0.9) for h in half]
    body = _ellipsoid_mask(shape, (0.0, 0.0, 0.0), body_semi)
    smooth = _gaussian_field(shape, max(shape) / 6, generator)
    x = 0.25 * (1 + 0.15 * smooth)
    if uniform(0, 1) < 0.5:  # a dense shell: the inner 88-93 % of the body is soft tissue
        inner = _ellipsoid_mask(shape, (0.0, 0.0, 0.0), [s * uniform(0.88, 0.93) for s in body_semi])
        x = torch.where(body & ~inner, torch.full_like(x, uniform(0.7, 0.9)), x)
    else:
        inner = body
    # organs: random ellipsoids (in voxel units, a ball of 60 % of the smallest body semi-axis)
    n_organs = int(torch.randint(4, 11, (), generator=generator))
    organs = random_ellipsoids(n_organs, radius=0.6 * min(body_semi), generator=generator,
                               value_range=(-0.15, 0.2), max_semi_axis=0.6)
    x = x + voxelize(organs, shape, supersample=1)
    x = x + 0.02 * _gaussian_field(shape, 0.8, generator, band=2.5)
    # fine high-contrast structure in one or two "bone" regions: the zero crossings of a band-pass field
    sheets = _gaussian_field(shape, 1.2, generator, band=4.0).abs() < 0.3
    bone = torch.zeros(shape, dtype=torch.bool)
    for _ in range(int(torch.randint(1, 3, (), generator=generator))):
        semi = [s * uniform(0.25, 0.45) for s in body_semi]
        centre = [uniform(-0.5, 0.5) * s for s in body_semi]
        bone |= _ellipsoid_mask(shape, centre, semi)
    x = torch.where(bone & inner & sheets, x + uniform(0.4, 0.6), x)  # once, where regions overlap too
    # calcification-like dots of 1-2 voxels
    for _ in range(int(torch.randint(5, 21, (), generator=generator))):
        centre = [uniform(-0.7, 0.7) * s for s in body_semi]
        r = uniform(0.6, 1.2)
        x = torch.where(_ellipsoid_mask(shape, centre, (r, r, r)) & inner, torch.full_like(x, uniform(0.9, 1.1)), x)
    return torch.where(body, x.clamp_min(0), torch.zeros_like(x)).contiguous()
