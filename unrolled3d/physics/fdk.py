"""Feldkamp-Davis-Kress (FDK) reconstruction for circular and near-circular cone-beam scans.

Per view ``p`` (source ``s``, detector plane with unit normal ``n`` pointing away from the source,
source-to-detector distance ``D_sd``, source-to-axis distance ``R``):

1. cosine weighting ``D_sd / sqrt(D_sd^2 + u^2 + v^2)``, ``(u, v)`` in mm from the principal point
   (the foot of the perpendicular from the source to the detector plane);
2. ramp filtering along detector rows (the ``u`` direction) with the discrete Ram-Lak kernel of
   Kak & Slaney (no DC bias), zero padding to a power of two >= 2 cols, and an optional window;
3. redundancy weighting: 1/2 for a full scan, Parker weights for a short scan;
4. voxel-driven backprojection with bilinear interpolation on the detector and the distance
   weight ``R * D_sd / U^2``, ``U = (x - s) . n`` the depth of the voxel along the principal ray,
   times the angular step ``d beta``.

For a circular trajectory these are the exact FDK weights. For a vector (``cone_vec``)
geometry the same formula is applied view by view with the view's own ``R``, ``D_sd`` and
principal point, and ``beta`` the polar angle of the source about the ``z`` axis: exact when the
trajectory is a circle about ``z`` (whatever the detector shifts and tilts per view), a
first-order approximation for wobbling trajectories such as real scanners'. The rotation axis
must be the world ``z`` axis.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from ..geometry import ConeBeamGeometry
from ..ops.projector import check_sinogram

__all__ = ["fdk", "ramp_filter_response", "FDK_WINDOWS"]

FDK_WINDOWS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


def ramp_filter_response(
    n_pad: int, spacing: float, window: str = "ram-lak", dtype=torch.float64, device="cpu"
) -> torch.Tensor:
    """Frequency response (rFFT, ``n_pad // 2 + 1`` bins) of the discrete ramp filter.

    Built from the spatial Ram-Lak kernel ``h[0] = 1/(4 t^2)``, ``h[odd m] = -1/(pi m t)^2``
    (``t`` = ``spacing``) so that the response has no DC offset, times ``spacing`` (the
    quadrature weight of the convolution), times the window.
    """
    if window not in FDK_WINDOWS:
        raise ValueError(f"window must be one of {FDK_WINDOWS}, got {window!r}")
    m = torch.arange(n_pad, dtype=torch.float64)
    m = torch.where(m < n_pad / 2, m, m - n_pad)
    h = torch.zeros(n_pad, dtype=torch.float64)
    h[m == 0] = 1.0 / (4 * spacing**2)
    odd = (m.abs() % 2) == 1
    h[odd] = -1.0 / (math.pi * m[odd] * spacing) ** 2
    response = torch.fft.rfft(h).real * spacing
    fn = torch.arange(n_pad // 2 + 1, dtype=torch.float64) / (n_pad / 2)  # 1 = Nyquist
    if window == "shepp-logan":
        response = response * torch.special.sinc(fn / 2)
    elif window == "cosine":
        response = response * torch.cos(math.pi * fn / 2)
    elif window == "hamming":
        response = response * (0.54 + 0.46 * torch.cos(math.pi * fn))
    elif window == "hann":
        response = response * (0.5 + 0.5 * torch.cos(math.pi * fn))
    return response.to(device=device, dtype=dtype)


def _per_view_frames(geometry: ConeBeamGeometry) -> dict[str, np.ndarray]:
    """Source, detector frame, distances and angles of every view (float64 numpy)."""
    vec = geometry.vectors
    src, det, u, v = vec[:, 0:3], vec[:, 3:6], vec[:, 6:9], vec[:, 9:12]
    du, dv = np.linalg.norm(u, axis=1), np.linalg.norm(v, axis=1)
    u_hat, v_hat = u / du[:, None], v / dv[:, None]
    n_hat = np.cross(u_hat, v_hat)
    n_hat /= np.linalg.norm(n_hat, axis=1, keepdims=True)
    flip = ((det - src) * n_hat).sum(1) < 0
    n_hat[flip] *= -1
    d_sd = ((det - src) * n_hat).sum(1)
    principal = src + d_sd[:, None] * n_hat
    pu = ((principal - det) * u_hat).sum(1)
    pv = ((principal - det) * v_hat).sum(1)
    radius = np.hypot(src[:, 0], src[:, 1])
    if geometry.trajectory is not None:
        beta = np.asarray(geometry.trajectory.angles, dtype=np.float64)
    else:
        beta = np.unwrap(np.arctan2(src[:, 0], -src[:, 1]))
    return dict(src=src, det=det, u_hat=u_hat, v_hat=v_hat, n_hat=n_hat, du=du, dv=dv,
                d_sd=d_sd, pu=pu, pv=pv, radius=radius, beta=beta)


def _angular_steps(beta: np.ndarray, full: bool) -> np.ndarray:
    """Quadrature weights d beta per view (radians)."""
    n = beta.shape[0]
    if n == 1:
        return np.array([2 * math.pi if full else math.pi])
    order = np.argsort(beta)
    b = beta[order]
    steps = np.empty(n)
    if full:
        prev = np.roll(b, 1)
        prev[0] -= 2 * math.pi
        nxt = np.roll(b, -1)
        nxt[-1] += 2 * math.pi
        steps_sorted = 0.5 * (nxt - prev)
    else:
        steps_sorted = np.gradient(b)
    steps[order] = steps_sorted
    return np.abs(steps)


def _parker_weights(beta: np.ndarray, gamma: np.ndarray, gamma_max: float) -> np.ndarray:
    """Parker (1982) weights, ``beta`` (V,) from the first view, ``gamma`` (cols,) fan angles."""
    b = beta[:, None]
    g = gamma[None, :]
    w = np.ones((beta.shape[0], gamma.shape[0]))
    rise = b < 2 * (gamma_max - g)
    fall = b > math.pi - 2 * g
    with np.errstate(divide="ignore", invalid="ignore"):
        w_rise = np.sin(math.pi / 4 * b / (gamma_max - g)) ** 2
        w_fall = np.sin(math.pi / 4 * (math.pi + 2 * gamma_max - b) / (gamma_max + g)) ** 2
    w = np.where(rise, w_rise, w)
    w = np.where(fall, w_fall, w)
    w = np.where(b > math.pi + 2 * gamma_max, 0.0, w)
    return np.nan_to_num(w, nan=0.0)


def fdk(
    sino: torch.Tensor,
    geometry: ConeBeamGeometry,
    window: str = "ram-lak",
    padding: bool = True,
    scan: str | None = None,
    progress: bool = False,
    slab_voxels: int | None = None,
) -> torch.Tensor:
    """FDK reconstruction.

    Parameters
    ----------
    sino : torch.Tensor
        Measurements ``(B, C, n_views, rows, cols)``: line integrals (mm x volume units), float32
        or float64, CPU or CUDA.
    geometry : ConeBeamGeometry
        Circular, or vector with a near-circular trajectory about ``z`` (see module docstring).
    window : str
        Apodisation of the ramp filter: ``"ram-lak"`` (none), ``"shepp-logan"``, ``"cosine"``,
        ``"hamming"``, ``"hann"``.
    padding : bool
        Zero-pad each detector row to a power of two >= 2 cols before filtering (no wrap-around).
    scan : {"full", "short"}, optional
        Override the scan type; default: the trajectory's, or from the angular span of the views.
    progress : bool
        Show a progress bar over the views of the backprojection.
    slab_voxels : int, optional
        Voxels per slab of z-slices in the backprojection (at least one slice): bounds its
        temporaries, about eight slab-sized buffers. Default 2^21 on the CPU (8 MiB each in
        float32), 2^24 on a GPU (fewer kernel launches). The result does not depend on it.

    Returns
    -------
    torch.Tensor
        ``(B, C, D, H, W)`` in the same units as the phantom (e.g. 1/mm).
    """

    check_sinogram(sino, geometry)
    rows, cols = geometry.det_shape
    if rows < 2 or cols < 2:
        raise ValueError(f"fdk needs a detector of at least 2 x 2 pixels, got {geometry.det_shape}")
    if window not in FDK_WINDOWS:
        raise ValueError(f"window must be one of {FDK_WINDOWS}, got {window!r}")
    if slab_voxels is None:
        slab_voxels = 1 << (24 if sino.is_cuda else 21)
    if not isinstance(slab_voxels, int) or isinstance(slab_voxels, bool) or slab_voxels < 1:
        raise ValueError(f"slab_voxels must be a positive integer, got {slab_voxels!r}")
    if scan is not None and scan not in ("full", "short"):
        raise ValueError(f"scan must be None, 'full' or 'short', got {scan!r}")
    fr = _per_view_frames(geometry)
    beta = fr["beta"]
    n_views = beta.shape[0]
    if scan is None:
        if geometry.trajectory is not None:
            scan = geometry.trajectory.scan
        else:
            span = (beta.max() - beta.min()) * n_views / max(n_views - 1, 1)
            scan = "full" if span >= 2 * math.pi * 0.99 else "short"
    full = scan == "full"

    device, dtype = sino.device, sino.dtype
    B, C = sino.shape[:2]
    # -- 1. cosine weights, per view and pixel
    cu = np.arange(cols) - 0.5 * (cols - 1)
    cv = np.arange(rows) - 0.5 * (rows - 1)
    u_mm = cu[None, :] * fr["du"][:, None] - fr["pu"][:, None]  # (V, cols)
    v_mm = cv[None, :] * fr["dv"][:, None] - fr["pv"][:, None]  # (V, rows)
    d_sd = fr["d_sd"]
    cosw = d_sd[:, None, None] / np.sqrt(d_sd[:, None, None] ** 2 + u_mm[:, None, :] ** 2 + v_mm[:, :, None] ** 2)
    # -- 3. redundancy weights (per view and column) and angular steps
    if full:
        red = np.full((n_views, cols), 0.5)
    else:
        gamma = -np.arctan(u_mm / d_sd[:, None])  # Parker's sign convention for our u direction
        rel = beta - beta.min()
        span = (beta.max() - beta.min()) * n_views / max(n_views - 1, 1)
        gamma_max = 0.5 * (span - math.pi)
        if gamma_max < np.abs(gamma).max() - 1e-9:
            warnings.warn(
                f"short scan covers {math.degrees(span):.1f} deg, less than 180 deg + fan angle "
                f"({math.degrees(math.pi + 2 * np.abs(gamma).max()):.1f} deg): FDK will be biased",
                stacklevel=2,
            )
            gamma_max = max(gamma_max, 1e-6)
        red = np.stack([_parker_weights(rel[p : p + 1], gamma[p], gamma_max)[0] for p in range(n_views)])
    dbeta = _angular_steps(beta, full)
    pre = torch.from_numpy(cosw * red[:, None, :]).to(device=device, dtype=dtype)
    # -- 2. ramp filter along u (pixel spacing may differ per view: filter per distinct spacing)
    n_pad = int(2 ** math.ceil(math.log2(2 * cols))) if padding else cols
    weighted = sino * pre
    filtered = torch.empty_like(sino)
    for du in np.unique(fr["du"]):
        sel = torch.from_numpy(np.nonzero(fr["du"] == du)[0]).to(device)
        resp = ramp_filter_response(n_pad, float(du), window, dtype=dtype, device=device)
        spec = torch.fft.rfft(weighted.index_select(2, sel), n=n_pad, dim=-1) * resp
        filtered.index_copy_(2, sel, torch.fft.irfft(spec, n=n_pad, dim=-1)[..., :cols])
    # -- 4. voxel-driven backprojection
    D, H, W = geometry.vol_shape
    sz, sy, sx = geometry.voxel_size
    oz, oy, ox = geometry.vol_offset
    axis = lambda n, s, o: (torch.arange(n, device=device, dtype=dtype) - 0.5 * (n - 1)) * s + o  # noqa: E731
    X = axis(W, sx, ox)[None, None, :]
    Y = axis(H, sy, oy)[None, :, None]
    Z_all = axis(D, sz, oz)[:, None, None]
    out = torch.zeros(1, B * C, D, H * W, device=device, dtype=dtype)
    images = filtered.reshape(B * C, n_views, rows, cols)
    # Slabs of whole z-slices: each view's coordinate, weight and sample buffers (about eight
    # images' worth) are slab-sized, not volume-sized, so FDK's memory is its output plus a
    # bounded slab -- the same per-voxel arithmetic in any slab size.
    slab = max(1, min(D, slab_voxels // (H * W)))
    for p in tqdm(range(n_views), desc="FDK backprojection", unit="view", disable=not progress, leave=False):
        s = fr["src"][p]
        n_hat, u_hat, v_hat = fr["n_hat"][p], fr["u_hat"][p], fr["v_hat"][p]
        rel = s - fr["det"][p]  # detector centre to source
        for z0 in range(0, D, slab):
            Z = Z_all[z0 : z0 + slab]
            d = Z.shape[0]
            dx, dy, dz = X - s[0], Y - s[1], Z - s[2]
            depth = dx * n_hat[0] + dy * n_hat[1] + dz * n_hat[2]  # U, mm
            scale = d_sd[p] / depth
            # detector-plane hit relative to the detector centre, in pixels
            hu = ((rel @ u_hat) + scale * (dx * u_hat[0] + dy * u_hat[1] + dz * u_hat[2])) / fr["du"][p]
            hv = ((rel @ v_hat) + scale * (dx * v_hat[0] + dy * v_hat[1] + dz * v_hat[2])) / fr["dv"][p]
            grid = torch.stack(
                [(hu / (0.5 * (cols - 1))).expand(d, H, W), (hv / (0.5 * (rows - 1))).expand(d, H, W)], dim=-1
            ).reshape(1, d, H * W, 2)
            sample = torch.nn.functional.grid_sample(
                images[:, p][None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
            )
            weight = (fr["radius"][p] * d_sd[p] * dbeta[p]) / depth**2
            out[:, :, z0 : z0 + d] += sample * weight.expand(d, H, W).reshape(1, 1, d, H * W)
    return out.reshape(B, C, D, H, W)
