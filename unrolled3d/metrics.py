"""Image quality metrics on volumes: pooled figures (``psnr``, ``ssim``: one float) and per-sample
ones (``psnr_per_sample``, ``ssim_per_sample``: one value per batch item), the latter also as
deepinv ``Metric`` classes (:class:`VolumePSNR`, :class:`VolumeSSIM`) for ``deepinv.Trainer``."""
from __future__ import annotations

import math

import torch
from deepinv.loss.metric import Metric

__all__ = ["psnr", "ssim", "psnr_per_sample", "ssim_per_sample", "magnitude_psnr", "VolumePSNR", "VolumeSSIM"]


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


def _check_ssim_args(estimate: torch.Tensor, truth: torch.Tensor, radius: int) -> None:
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate has shape {tuple(estimate.shape)} but truth has {tuple(truth.shape)}")
    if truth.ndim < 3 or min(truth.shape[-3:]) <= 2 * radius:
        raise ValueError(f"ssim needs 3 spatial axes longer than {2 * radius} voxels, got shape {tuple(truth.shape)}")


def _ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Local SSIM of ``x``, ``y`` ``(N, 1, D, H, W)`` (float64) at every voxel whose window fits;
    ``data_range`` broadcasts against ``(N, 1, 1, 1, 1)``."""
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
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


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
        are averaged over (pooled: one figure for the whole batch, see :func:`ssim_per_sample`).
    data_range : float, optional
        Dynamic range ``L``; default ``truth.max() - truth.min()``.
    """
    _check_ssim_args(estimate, truth, radius)
    if data_range is None:
        data_range = float(truth.max() - truth.min())
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    x = estimate.detach().double().reshape(-1, 1, *truth.shape[-3:])
    y = truth.detach().double().reshape(-1, 1, *truth.shape[-3:])
    return float(_ssim_map(x, y, torch.tensor(data_range, dtype=torch.float64), sigma, radius).mean())


def _per_sample_range(truth: torch.Tensor, data_range: float | None) -> torch.Tensor:
    """``(B,)`` float64 dynamic range per batch item: ``data_range``, or each item's ``max - min``."""
    if data_range is not None:
        if not data_range > 0:
            raise ValueError(f"data_range must be positive, got {data_range}")
        return torch.full((truth.shape[0],), float(data_range), dtype=torch.float64, device=truth.device)
    flat = truth.detach().double().flatten(1)
    rng = flat.amax(1) - flat.amin(1)
    if bool((rng <= 0).any()):
        raise ValueError("a ground-truth volume is constant (max - min = 0): pass data_range")
    return rng


def ssim_per_sample(estimate: torch.Tensor, truth: torch.Tensor, data_range: float | None = None,
                    sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    """SSIM of each batch item: ``(B,)`` float64, each the :func:`ssim` of ``estimate[i]`` and
    ``truth[i]`` (channels averaged) with that item's ``data_range`` (default its truth's
    ``max - min``).

    Parameters
    ----------
    estimate, truth : torch.Tensor
        ``(B, C, D, H, W)`` (or ``(B, D, H, W)``), same shape.
    data_range : float, optional
        One range for every item instead.
    sigma, radius
        As in :func:`ssim`.
    """
    _check_ssim_args(estimate, truth, radius)
    if truth.ndim < 4:
        raise ValueError(f"ssim_per_sample needs a batch axis: (B, [C,] D, H, W), got shape {tuple(truth.shape)}")
    b = truth.shape[0]
    rng = _per_sample_range(truth, data_range)
    x = estimate.detach().double().reshape(b, -1, *truth.shape[-3:])
    y = truth.detach().double().reshape(b, -1, *truth.shape[-3:])
    channels = x.shape[1]
    rng_map = rng.repeat_interleave(channels).view(-1, 1, 1, 1, 1)
    s = _ssim_map(x.reshape(-1, 1, *x.shape[-3:]), y.reshape(-1, 1, *y.shape[-3:]), rng_map, sigma, radius)
    return s.reshape(b, -1).mean(1)


def psnr_per_sample(estimate: torch.Tensor, truth: torch.Tensor, data_range: float | None = None) -> torch.Tensor:
    """PSNR in dB of each batch item: ``(B,)`` float64, each the :func:`psnr` of ``estimate[i]``
    and ``truth[i]`` with that item's ``data_range`` (default its truth's ``max - min``);
    ``inf`` where they are equal.

    Parameters
    ----------
    estimate, truth : torch.Tensor
        ``(B, ...)``, same shape.
    data_range : float, optional
        One peak for every item instead.
    """
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate has shape {tuple(estimate.shape)} but truth has {tuple(truth.shape)}")
    rng = _per_sample_range(truth, data_range)
    mse = (estimate.detach().double() - truth.detach().double()).square().flatten(1).mean(1)
    return 10 * torch.log10(rng**2 / mse)


class VolumePSNR(Metric):
    r"""Per-sample volume PSNR (dB) as a deepinv ``Metric`` (:func:`psnr_per_sample`).

    ``metric(x_net, x)`` returns ``(B,)``; deepinv's ``reduction`` applies on top (default none).
    Higher is better.

    Parameters
    ----------
    data_range : float, optional
        Peak; default each ground truth's ``max - min``.
    **kwargs
        deepinv ``Metric`` options (``reduction``, ``complex_abs``, ...).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.metrics import VolumePSNR
    >>> x = torch.rand(2, 1, 4, 4, 4)
    >>> VolumePSNR(data_range=1.0)(x + 0.1, x)          # one value per volume
    tensor([20.0000, 20.0000], dtype=torch.float64)
    """

    def __init__(self, data_range: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_range = data_range
        self.lower_better = False

    def metric(self, x_net: torch.Tensor, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return psnr_per_sample(x_net, x, self.data_range)


class VolumeSSIM(Metric):
    r"""Per-sample 3D SSIM as a deepinv ``Metric`` (:func:`ssim_per_sample`).

    ``metric(x_net, x)`` returns ``(B,)``. Higher is better.

    Parameters
    ----------
    data_range : float, optional
        Dynamic range; default each ground truth's ``max - min``.
    sigma, radius
        The Gaussian window (:func:`ssim`).
    **kwargs
        deepinv ``Metric`` options.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.metrics import VolumeSSIM
    >>> x = torch.rand(2, 1, 12, 12, 12)
    >>> [round(float(v), 3) for v in VolumeSSIM()(torch.stack([x[0], x[1] * 0]), x)]  # identical; blank
    [1.0, 0.0]
    """

    def __init__(self, data_range: float | None = None, sigma: float = 1.5, radius: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_range, self.sigma, self.radius = data_range, sigma, radius
        self.lower_better = False

    def metric(self, x_net: torch.Tensor, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return ssim_per_sample(x_net, x, self.data_range, self.sigma, self.radius)


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
