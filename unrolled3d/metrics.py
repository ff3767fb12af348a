"""Image quality metrics on volumes: pooled figures (``psnr``, ``ssim``: one float) and per-sample
ones (``psnr_per_sample``, ``ssim_per_sample``: one value per batch item), the latter also as
deepinv ``Metric`` classes (:class:`VolumePSNR`, :class:`VolumeSSIM`) for ``deepinv.Trainer``.

Two definitions of SSIM
-----------------------
Both follow Wang et al. (2004) with a Gaussian window (``sigma = 1.5``, 11 taps), ``K1 = 0.01``,
``K2 = 0.03``; they differ at the border and in the default dynamic range:

* ``definition="skimage"`` (the default, and the one of every SSIM figure in this package's
  tables, README and ``bench/results``): the mean over the voxels whose whole window lies inside
  the volume (no padding), equal to ``skimage.metrics.structural_similarity(truth, estimate,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=...)``; default
  ``data_range`` the truth's ``max - min``.
* ``definition="deepinv"``: the mean over every voxel of the volume reflect-padded by the window's
  radius, local variances clamped at 0: ``deepinv.loss.metric.SSIM`` and torchmetrics'
  ``structural_similarity_index_measure`` on ``[B, C, D, H, W]``. deepinv's ``SSIM()`` uses
  ``data_range = 1`` unless ``max_pixel=None, min_pixel=None``: pass ``data_range=1.0`` to match it.

How far apart they are depends on the volume (the border windows, often air around an object,
weigh in deepinv's): on the demo's held-out 48^3 phantom FDK reads 0.192 (scikit-image) and
0.153 (deepinv), the shipped network 0.968 and 0.968; a noisy cube in air (the example of
:func:`ssim`) 0.962 and 0.608; issue 30 met 0.827 and 0.698 on one volume. Compare figures of
one definition only.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from deepinv.loss.metric import Metric

__all__ = ["SSIM_DEFINITIONS", "psnr", "ssim", "psnr_per_sample", "ssim_per_sample", "magnitude_psnr", "VolumePSNR", "VolumeSSIM"]


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


#: the SSIM definitions (see the module docstring)
SSIM_DEFINITIONS = ("skimage", "deepinv")


def _check_ssim_args(estimate: torch.Tensor, truth: torch.Tensor, radius: int, definition: str = "skimage") -> None:
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate has shape {tuple(estimate.shape)} but truth has {tuple(truth.shape)}")
    if definition not in SSIM_DEFINITIONS:
        raise ValueError(f"definition must be one of {SSIM_DEFINITIONS}, got {definition!r}")
    if definition == "skimage" and (truth.ndim < 3 or min(truth.shape[-3:]) <= 2 * radius):
        raise ValueError(f"ssim needs 3 spatial axes longer than {2 * radius} voxels, got shape {tuple(truth.shape)}")
    if definition == "deepinv" and (truth.ndim < 3 or min(truth.shape[-3:]) <= radius):
        # reflect padding by the radius needs more voxels than the radius on every axis
        raise ValueError(f"ssim (deepinv) needs 3 spatial axes longer than {radius} voxels, "
                         f"got shape {tuple(truth.shape)}")


def _ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: torch.Tensor, sigma: float, radius: int,
              definition: str = "skimage") -> torch.Tensor:
    """Local SSIM of ``x``, ``y`` ``(N, 1, D, H, W)`` (float64): at every voxel whose window fits
    (``"skimage"``), or at every voxel of the volume reflect-padded by ``radius`` with the local
    variances clamped at 0 (``"deepinv"``); ``data_range`` broadcasts against ``(N, 1, 1, 1, 1)``."""
    if definition == "deepinv":
        x = torch.nn.functional.pad(x, (radius,) * 6, mode="reflect")
        y = torch.nn.functional.pad(y, (radius,) * 6, mode="reflect")
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
    if definition == "deepinv":  # torchmetrics clamps the variances (rounding can make them negative)
        vx, vy = vx.clamp_min(0), vy.clamp_min(0)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(estimate: torch.Tensor, truth: torch.Tensor, data_range: float | None = None,
         sigma: float = 1.5, radius: int = 5, definition: Literal["skimage", "deepinv"] = "skimage") -> float:
    """Structural similarity (Wang et al. 2004) of two volumes, averaged over the volume.

    Local statistics use a separable Gaussian window (``sigma`` voxels, truncated at ``radius``:
    the classic 11-tap window); ``K1 = 0.01``, ``K2 = 0.03``; statistics in float64. With
    ``definition="skimage"`` (default) the window is applied in 3D without padding, so only voxels
    whose whole window lies inside the volume count: scikit-image's
    ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``. With
    ``definition="deepinv"``, deepinv's and torchmetrics' SSIM (reflect padding, every voxel; see
    the module docstring: the two differ by about 0.1 on a reconstruction).

    Parameters
    ----------
    estimate, truth : torch.Tensor
        Same shape, the last three axes ``(D, H, W)`` spatial (each > ``2 * radius``, or >
        ``radius`` for ``"deepinv"``); leading axes are averaged over (pooled: one figure for the
        whole batch, see :func:`ssim_per_sample`).
    data_range : float, optional
        Dynamic range ``L``; default ``truth.max() - truth.min()`` (deepinv's ``SSIM()`` uses 1).
    sigma, radius
        The Gaussian window's standard deviation and half-width, in voxels.
    definition : {"skimage", "deepinv"}
        Which SSIM (see above). The package's tables use ``"skimage"``.

    Returns
    -------
    float
        The mean local SSIM, at most 1.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.metrics import ssim
    >>> x = torch.zeros(16, 16, 16); x[4:12, 4:12, 4:12] = 1.0
    >>> noisy = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    >>> round(ssim(noisy, x), 3), round(ssim(noisy, x, definition="deepinv"), 3)
    (0.962, 0.608)
    """
    _check_ssim_args(estimate, truth, radius, definition)
    if data_range is None:
        data_range = float(truth.max() - truth.min())
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    x = estimate.detach().double().reshape(-1, 1, *truth.shape[-3:])
    y = truth.detach().double().reshape(-1, 1, *truth.shape[-3:])
    return float(_ssim_map(x, y, torch.tensor(data_range, dtype=torch.float64), sigma, radius, definition).mean())


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
                    sigma: float = 1.5, radius: int = 5,
                    definition: Literal["skimage", "deepinv"] = "skimage") -> torch.Tensor:
    """SSIM of each batch item: ``(B,)`` float64, each the :func:`ssim` of ``estimate[i]`` and
    ``truth[i]`` (channels averaged) with that item's ``data_range`` (default its truth's
    ``max - min``).

    Parameters
    ----------
    estimate, truth : torch.Tensor
        ``(B, C, D, H, W)`` (or ``(B, D, H, W)``), same shape.
    data_range : float, optional
        One range for every item instead.
    sigma, radius, definition
        As in :func:`ssim` (``definition="deepinv"`` with ``data_range=1.0`` is
        ``deepinv.loss.metric.SSIM()``; with the default range, ``SSIM(max_pixel=None, min_pixel=None)``).
    """
    _check_ssim_args(estimate, truth, radius, definition)
    if truth.ndim < 4:
        raise ValueError(f"ssim_per_sample needs a batch axis: (B, [C,] D, H, W), got shape {tuple(truth.shape)}")
    b = truth.shape[0]
    rng = _per_sample_range(truth, data_range)
    x = estimate.detach().double().reshape(b, -1, *truth.shape[-3:])
    y = truth.detach().double().reshape(b, -1, *truth.shape[-3:])
    channels = x.shape[1]
    rng_map = rng.repeat_interleave(channels).view(-1, 1, 1, 1, 1)
    s = _ssim_map(x.reshape(-1, 1, *x.shape[-3:]), y.reshape(-1, 1, *y.shape[-3:]), rng_map, sigma, radius, definition)
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

    ``metric(x_net, x)`` returns ``(B,)``. Higher is better. ``definition="skimage"`` (default:
    scikit-image's SSIM, the one of the package's tables) or ``"deepinv"`` (deepinv's own
    ``SSIM``, through torchmetrics: reflect padding, every voxel); they differ by about 0.1 on a
    reconstruction (see :mod:`unrolled3d.metrics`).

    Parameters
    ----------
    data_range : float, optional
        Dynamic range; default each ground truth's ``max - min`` (deepinv's ``SSIM()`` uses 1).
    sigma, radius
        The Gaussian window (:func:`ssim`).
    definition : {"skimage", "deepinv"}
        Which SSIM.
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

    def __init__(self, data_range: float | None = None, sigma: float = 1.5, radius: int = 5,
                 definition: Literal["skimage", "deepinv"] = "skimage", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if definition not in SSIM_DEFINITIONS:
            raise ValueError(f"definition must be one of {SSIM_DEFINITIONS}, got {definition!r}")
        self.data_range, self.sigma, self.radius, self.definition = data_range, sigma, radius, definition
        self.lower_better = False

    def metric(self, x_net: torch.Tensor, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return ssim_per_sample(x_net, x, self.data_range, self.sigma, self.radius, self.definition)


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
