"""Image quality metrics on volumes."""
from __future__ import annotations

import math

import torch

__all__ = ["psnr", "ssim"]


def psnr(estimate: torch.Tensor, truth: torch.Tensor, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB over the whole volume.

    Parameters
    ----------
    estimate, truth : torch.Tensor
        Same shape (any).
    data_range : float, optional
        Peak value; default ``truth.max() - truth.min()``.
    """
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate has shape {tuple(estimate.shape)} but truth has {tuple(truth.shape)}")
    if data_range is None:
        data_range = float(truth.max() - truth.min())
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    mse = float((estimate.double() - truth.double()).square().mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def _gaussian_window(sigma: float, radius: int, dtype: torch.dtype) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def ssim(estimate: torch.Tensor, truth: torch.Tensor, data_range: float | None = None,
         sigma: float = 1.5, radius: int = 5) -> float:
    """Structural similarity (Wang et al. 2004) of two volumes, averaged over the volume.

    Local statistics use a separable Gaussian window (``sigma`` voxels, truncated at ``radius``:
    the classic 11-tap window) applied in 3D without padding, so only voxels whose whole window
    lies inside the volume count; ``K1 = 0.01``, ``K2 = 0.03``; statistics in float64.

    Parameters
    ----------
    estimate, truth : torch.Tensor
        Same shape, the last three axes ``(D, H, W)`` spatial (each > ``2 * radius``); leading axes
        are averaged over.
    data_range : float, optional
        Dynamic range ``L``; default ``truth.max() - truth.min()``.
    """
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate has shape {tuple(estimate.shape)} but truth has {tuple(truth.shape)}")
    if truth.ndim < 3 or min(truth.shape[-3:]) <= 2 * radius:
        raise ValueError(f"ssim needs 3 spatial axes longer than {2 * radius} voxels, got shape {tuple(truth.shape)}")
    if data_range is None:
        data_range = float(truth.max() - truth.min())
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    x = estimate.detach().double().reshape(-1, 1, *truth.shape[-3:])
    y = truth.detach().double().reshape(-1, 1, *truth.shape[-3:])
    w = _gaussian_window(sigma, radius, torch.float64).to(x.device)
    kernels = (w.view(1, 1, -1, 1, 1), w.view(1, 1, 1, -1, 1), w.view(1, 1, 1, 1, -1))

    def blur(t: torch.Tensor) -> torch.Tensor:
        for k in kernels:  # separable: three 1D passes
            t = torch.nn.functional.conv3d(t, k)
        return t

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def magnitude_psnr(estimate: torch.Tensor, truth: torch.Tensor, peak: float | None = None) -> float:
    """PSNR in dB of the magnitude images of complex volumes (MRI).

    ``10 log10(peak^2 / mean((|estimate| - |truth|)^2))`` over every voxel (and batch item), with
    ``|x| = sqrt(re^2 + im^2)`` and ``peak = max |truth|`` by default.

    Parameters
    ----------
    estimate, truth : torch.Tensor
        Real ``[B, 2, D, H, W]`` (channels real, imaginary), same shape.
    peak : float, optional
        Peak magnitude; default the truth's maximum magnitude.
    """
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate has shape {tuple(estimate.shape)} but truth has {tuple(truth.shape)}")
    if truth.ndim < 2 or truth.shape[1] != 2 or truth.is_complex():
        raise ValueError(f"magnitude_psnr expects real [B, 2, ...] tensors (real, imaginary channels), "
                         f"got {truth.dtype} of shape {tuple(truth.shape)}")
    mag_est = torch.linalg.vector_norm(estimate.double(), dim=1)
    mag_true = torch.linalg.vector_norm(truth.double(), dim=1)
    return psnr(mag_est, mag_true, data_range=float(mag_true.max()) if peak is None else float(peak))
