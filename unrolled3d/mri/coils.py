r"""Coil sensitivities: simulated birdcage-like maps and a simple low-resolution estimate.

:func:`birdcage_maps` places ``n_coils`` small loops on one or more rings around the ``D`` (bore)
axis, outside the volume (normalised coordinates: each axis spans ``[-1, 1]``, rings of radius
``radius``), and gives coil ``c`` the Biot-Savart-like sensitivity
``exp(i (atan2(x - x_c, -(y - y_c)) - theta_c)) / |r - r_c|`` (as sigpy's 2D ``birdcage_maps``,
extended to 3D with the distance in 3D), then divides all maps by their root-sum-of-squares so
that ``sum_c |S_c|^2 = 1`` at every voxel.

:func:`estimate_coil_maps` is the simple low-resolution method, **not ESPIRiT**: the fully
sampled calibration block of each coil's k-space is Hann-windowed (zero elsewhere), inverse
transformed (centred, orthonormal FFT as :class:`~unrolled3d.mri.MultiCoilMRI3D`), and each
low-resolution coil image is divided by the root-sum-of-squares over coils. Its result is
``S_c * exp(i phase(x_lowres))`` where ``S_c`` and the object are smooth: the maps up to the
object's (low-resolution) phase, accurate inside the object and meaningless where there is no
signal (see ``threshold``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .._validation import int_triple, integer
from .physics import to_complex_image
from .sampling import calibration_slices

__all__ = ["birdcage_maps", "estimate_coil_maps", "root_sum_of_squares"]


def root_sum_of_squares(z: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``sqrt(sum |z|^2)`` over ``dim`` (real)."""
    return torch.linalg.vector_norm(z, dim=dim)


def birdcage_maps(n_coils: int, shape: Sequence[int], radius: float = 1.5, n_rings: int | None = None,
                  ring_spacing: float = 1.0, dtype: torch.dtype = torch.complex64,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Smooth complex coil maps ``(n_coils, D, H, W)`` with ``sum_c |S_c|^2 = 1``.

    Parameters
    ----------
    n_coils : int
        number of coils (>= 1).
    shape
        volume ``(D, H, W)``; ``D`` is the ring axis.
    radius : float
        ring radius in normalised units (the volume spans ``[-1, 1]`` per axis;
        > ``sqrt(2)`` keeps every coil outside the volume's corners).
    n_rings : int
        rings along ``D`` (default: 2 when ``n_coils >= 8`` is even, else 1);
        ``n_coils`` must be a multiple of it. Rings sit at ``z`` spread over ``[-ring_spacing/2, ring_spacing/2]``.
    dtype
        complex dtype of the result.
    """
    n_coils = integer("n_coils", n_coils, 1)
    D, H, W = int_triple("shape", shape)
    if not (isinstance(dtype, torch.dtype) and dtype.is_complex):
        raise TypeError(f"dtype must be a complex torch.dtype, got {dtype!r}")
    if not (math.isfinite(radius) and radius > math.sqrt(2)):
        raise ValueError(f"radius must exceed sqrt(2) (coils outside the volume), got {radius!r}")
    if n_rings is None:
        n_rings = 2 if n_coils >= 8 and n_coils % 2 == 0 else 1
    if isinstance(n_rings, bool) or not isinstance(n_rings, int) or n_rings < 1 or n_coils % n_rings:
        raise ValueError(f"n_rings must be a positive divisor of n_coils={n_coils}, got {n_rings!r}")
    per_ring = n_coils // n_rings
    f64 = torch.float64
    z = (torch.arange(D, dtype=f64) - (D - 1) / 2) / (D / 2)
    y = (torch.arange(H, dtype=f64) - (H - 1) / 2) / (H / 2)
    x = (torch.arange(W, dtype=f64) - (W - 1) / 2) / (W / 2)
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    rings = [0.0] if n_rings == 1 else torch.linspace(-ring_spacing / 2, ring_spacing / 2, n_rings).tolist()
    maps = []
    for ring, zc in enumerate(rings):
        for c in range(per_ring):
            theta = 2 * math.pi * c / per_ring + (math.pi / per_ring) * ring  # stagger the rings
            yc, xc = radius * math.sin(theta), radius * math.cos(theta)
            dist = torch.sqrt((x - xc) ** 2 + (y - yc) ** 2 + (z - zc) ** 2)
            phase = torch.atan2(x - xc, -(y - yc)) - theta
            maps.append(torch.polar(1.0 / dist, phase.expand_as(dist)))
    s = torch.stack(maps)
    s = s / root_sum_of_squares(s, dim=0)
    return s.to(dtype=dtype, device=device)


def _hann(n: int, dtype, device) -> torch.Tensor:
    # symmetric Hann without its zero end points
    return torch.hann_window(n + 2, periodic=False, dtype=dtype, device=device)[1:-1]


def estimate_coil_maps(kspace: torch.Tensor, calib: Sequence[int], threshold: float = 0.0) -> torch.Tensor:
    """Coil maps from the fully sampled calibration block (low-resolution method, not ESPIRiT).

    Parameters
    ----------
    kspace : torch.Tensor
        complex ``(N_c, D, H, W)``, or real ``(B, 2, N_c, D, H, W)`` in
        :class:`~unrolled3d.mri.MultiCoilMRI3D`'s layout (then the maps are ``(B, N_c, D, H, W)``).
    calib
        calibration block ``(c_D, c_H)`` (phase-encode plane; the fully sampled readout
        is windowed over ``max(c_D, c_H)`` samples) or ``(c_D, c_H, c_W)``; centred at ``n // 2``
        as :func:`~unrolled3d.mri.variable_density_mask` places it.
    threshold : float
        zero the maps where the root-sum-of-squares of the low-resolution
        images is below ``threshold * max`` (default 0: keep every voxel).

    Returns
    -------
    torch.Tensor
        Complex maps with ``sum_c |S_c|^2 = 1`` wherever the low-resolution signal is non-zero.
    """
    if not isinstance(kspace, torch.Tensor):
        raise TypeError(f"kspace must be a torch.Tensor, got {type(kspace).__name__}")
    batched = not kspace.is_complex()
    if batched:
        if kspace.ndim != 6 or kspace.shape[1] != 2:
            raise ValueError(f"real kspace must be (B, 2, N_c, D, H, W), got shape {tuple(kspace.shape)}")
        k = to_complex_image(kspace)  # (B, N_c, D, H, W)
    else:
        if kspace.ndim != 4:
            raise ValueError(f"complex kspace must be (N_c, D, H, W), got shape {tuple(kspace.shape)}")
        k = kspace[None]
    D, H, W = k.shape[-3:]
    calib = tuple(int(c) for c in calib)
    if len(calib) == 2:
        calib = (*calib, min(W, max(calib)))
    if len(calib) != 3 or any(c < 1 for c in calib) or any(c > n for c, n in zip(calib, (D, H, W))):
        raise ValueError(f"calib must be 2 or 3 positive sizes within {(D, H, W)}, got {calib}")
    if not (0.0 <= threshold < 1.0):
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    rdtype = k.real.dtype
    sl = calibration_slices((D, H, W), calib)
    win = (_hann(calib[0], rdtype, k.device)[:, None, None] * _hann(calib[1], rdtype, k.device)[None, :, None]
           * _hann(calib[2], rdtype, k.device)[None, None, :])
    low = torch.zeros_like(k)
    region = (Ellipsis,) + sl
    low[region] = k[region] * win
    dims = (-3, -2, -1)
    img = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(low, dim=dims), dim=dims, norm="ortho"), dim=dims)
    rss = root_sum_of_squares(img, dim=1)[:, None]  # (B, 1, D, H, W)
    tiny = torch.finfo(rdtype).tiny
    maps = img / rss.clamp_min(tiny)
    if threshold > 0:
        maps = maps * (rss > threshold * rss.amax(dim=(-3, -2, -1), keepdim=True))
    return maps if batched else maps[0]
