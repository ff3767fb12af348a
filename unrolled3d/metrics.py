"""Image quality metrics on volumes."""
from __future__ import annotations

import math

import torch

__all__ = ["psnr"]


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
