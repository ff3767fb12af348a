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
   times the angular step ``d beta`` (the op ``unrolled3d.ops.fdk_backproject``: C++ on the CPU,
   CUDA on a GPU, its PyTorch twin without a compiled extension).

Steps 1-2 are tensor arithmetic and ``torch.fft`` on the data's device.

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
from .._validation import boolean
from ..geometry import ConeBeamGeometry
from ..ops._precision import output_dtype, upcast
from ..ops.fdk_backproject import fdk_backproject
from ..ops.projector import check_sinogram

__all__ = ["fdk", "fdk_tables", "ramp_filter_response", "FDK_WINDOWS"]

FDK_WINDOWS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


def ramp_filter_response(
    n_pad: int, spacing: float, window: str = "ram-lak", dtype=torch.float64, device="cpu"
) -> torch.Tensor:
    """Frequency response (rFFT, ``n_pad // 2 + 1`` bins) of the discrete ramp filter.

    Built from the spatial Ram-Lak kernel ``h[0] = 1/(4 t^2)``, ``h[odd m] = -1/(pi m t)^2``
    (``t`` = ``spacing``) so that the response has no DC offset, times ``spacing`` (the
    quadrature weight of the convolution), times the window. The response scales as
    ``1 / spacing``: FDK filters every view with the unit-spacing response and folds
    ``1 / du`` into its per-view weights.
    """
    if window not in FDK_WINDOWS:
        raise ValueError(f"window must be one of {FDK_WINDOWS}, got {window!r}")
    return _unit_ramp_response(n_pad, window, dtype, device) / spacing


def _unit_ramp_response(n_pad: int, window: str, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """:func:`ramp_filter_response` for a unit spacing, in plain tensor arithmetic (no indexing
    by masks: it is traced as it is by ``torch.compile``)."""
    m = torch.arange(n_pad, dtype=torch.float64, device=device)
    m = torch.where(m < n_pad / 2, m, m - n_pad)
    odd = (m.abs() % 2) == 1
    h = torch.where(m == 0, 0.25, torch.where(odd, -1.0 / (math.pi * torch.where(odd, m, 1.0)) ** 2, 0.0))
    response = torch.fft.rfft(h).real
    fn = torch.arange(n_pad // 2 + 1, dtype=torch.float64, device=device) / (n_pad / 2)  # 1 = Nyquist
    if window == "shepp-logan":
        response = response * torch.special.sinc(fn / 2)
    elif window == "cosine":
        response = response * torch.cos(math.pi * fn / 2)
    elif window == "hamming":
        response = response * (0.54 + 0.46 * torch.cos(math.pi * fn))
    elif window == "hann":
        response = response * (0.5 + 0.5 * torch.cos(math.pi * fn))
    return response.to(dtype)


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


# --------------------------------------------------------------------------- per-scan tables
# Everything FDK needs from the geometry depends on the views and the detector only, not on the
# volume: it is computed once (numpy, float64) and kept in the geometry's scan cache, which the
# geometries of patches share, then copied once per device. fdk() itself is then plain tensor
# arithmetic with no numpy and no data-dependent Python branch, which torch.compile traces
# whole (fullgraph) once the tables exist; ConeBeamCT builds them when it is constructed.
#: the columns of the per-view backprojection table are named in unrolled3d.ops.projector_ref
#: (FDK_SRC, ..., FDK_WEIGHT), which its twin and csrc/fdk_backproject.h read


class _Tables:
    """FDK's per-view tables for one geometry and scan type (float64, on one device).

    ``u_mm (V, cols)``, ``v_mm (V, rows)``: pixel coordinates from the principal point, mm;
    ``d_sd (V,)``; ``column_weight (V, cols)``: redundancy (1/2 or Parker) over ``du``, the
    spacing of the unit ramp filter; ``views (V, 18)``: source, detector frame, source-to-centre
    distances along ``u`` and ``v``, ``du``, ``dv``, ``d_sd`` and ``R * d_sd * d beta``;
    ``warning``: what FDK should say about this scan (a short scan too short), or ``None``.
    """

    __slots__ = ("u_mm", "v_mm", "d_sd", "column_weight", "views", "warning")

    def __init__(self, u_mm: torch.Tensor, v_mm: torch.Tensor, d_sd: torch.Tensor, column_weight: torch.Tensor,
                 views: torch.Tensor, warning: str | None) -> None:
        self.u_mm, self.v_mm, self.d_sd, self.column_weight, self.views = u_mm, v_mm, d_sd, column_weight, views
        self.warning = warning

    def to(self, device: torch.device) -> "_Tables":
        return _Tables(self.u_mm.to(device), self.v_mm.to(device), self.d_sd.to(device),
                       self.column_weight.to(device), self.views.to(device), self.warning)


def _build_tables(geometry: ConeBeamGeometry, scan: str | None) -> _Tables:
    rows, cols = geometry.det_shape
    fr = _per_view_frames(geometry)
    beta = fr["beta"]
    n_views = beta.shape[0]
    span = (beta.max() - beta.min()) * n_views / max(n_views - 1, 1)
    if scan is None:
        scan = geometry.trajectory.scan if geometry.trajectory is not None else (
            "full" if span >= 2 * math.pi * 0.99 else "short")
    full = scan == "full"
    cu = np.arange(cols) - 0.5 * (cols - 1)
    cv = np.arange(rows) - 0.5 * (rows - 1)
    u_mm = cu[None, :] * fr["du"][:, None] - fr["pu"][:, None]  # (V, cols)
    v_mm = cv[None, :] * fr["dv"][:, None] - fr["pv"][:, None]  # (V, rows)
    d_sd = fr["d_sd"]
    warning = None
    if full:
        red = np.full((n_views, cols), 0.5)
    else:
        gamma = -np.arctan(u_mm / d_sd[:, None])  # Parker's sign convention for our u direction
        rel = beta - beta.min()
        gamma_max = 0.5 * (span - math.pi)
        if gamma_max < np.abs(gamma).max() - 1e-9:
            warning = (f"short scan covers {math.degrees(span):.1f} deg, less than 180 deg + fan angle "
                       f"({math.degrees(math.pi + 2 * np.abs(gamma).max()):.1f} deg): FDK will be biased")
            gamma_max = max(gamma_max, 1e-6)
        red = np.stack([_parker_weights(rel[p : p + 1], gamma[p], gamma_max)[0] for p in range(n_views)])
    dbeta = _angular_steps(beta, full)
    rel_src = fr["src"] - fr["det"]  # detector centre to source
    views = np.concatenate([
        fr["src"], fr["n_hat"], fr["u_hat"], fr["v_hat"],
        (rel_src * fr["u_hat"]).sum(1, keepdims=True), (rel_src * fr["v_hat"]).sum(1, keepdims=True),
        fr["du"][:, None], fr["dv"][:, None], d_sd[:, None], (fr["radius"] * d_sd * dbeta)[:, None],
    ], axis=1)
    t = torch.from_numpy
    return _Tables(t(u_mm), t(v_mm), t(d_sd.copy()), t(red / fr["du"][:, None]), t(views), warning)


def fdk_tables(geometry: ConeBeamGeometry, device: torch.device | str = "cpu", scan: str | None = None) -> _Tables:
    """FDK's per-view tables of ``geometry`` on ``device``, from its scan cache (built on first
    use; shared with the geometries of its patches). Called by :class:`ConeBeamCT` at
    construction so that a compiled ``A_dagger`` finds them."""
    if scan is not None and scan not in ("full", "short"):
        raise ValueError(f"scan must be None, 'full' or 'short', got {scan!r}")
    cache = geometry.scan_cache
    key = f"fdk/{scan}/{torch.device(device)}"
    tables = cache.get(key)
    if tables is None:
        cpu_key = f"fdk/{scan}/cpu"
        base = cache.get(cpu_key)
        if base is None:
            base = cache[cpu_key] = _build_tables(geometry, scan)
        tables = base.to(torch.device(device))
        if not torch.compiler.is_compiling():  # a traced copy is a graph value, not a cache entry
            cache[key] = tables
    return tables


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
        or float64, CPU or CUDA; float16/bfloat16 are computed in float32.
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
        Show a progress bar over the views of the backprojection (not inside ``torch.compile``).
    slab_voxels : int, optional
        Voxels x views per step of the PyTorch twin of the backprojection, which runs when no
        compiled extension can be had (at least one z-slice of 8 views): bounds its temporaries,
        about eight step-sized buffers. Default 2^17 on the CPU (0.5 MiB each in float32:
        cache-sized steps were the fastest, 0.6 s against 1.3 s for 2^21 at 64^3 and 90 views on
        one core), 2^24 on a GPU and under ``torch.compile``. The compiled kernels (C++ and CUDA,
        ``unrolled3d.ops.fdk_backproject``) need no temporaries and do not read it. The result
        does not depend on it.

    Returns
    -------
    torch.Tensor
        ``(B, C, D, H, W)`` in the same units as the phantom (e.g. 1/mm), the dtype of ``sino``
        (float32 under ``torch.autocast`` for float16/bfloat16).

    Notes
    -----
    The geometry's per-view tables (:func:`fdk_tables`) are computed once per geometry and
    device; the rest is tensor arithmetic without data-dependent Python branches, so
    ``torch.compile(fullgraph=True)`` traces it once the tables exist (``ConeBeamCT`` builds
    them; for a bare geometry, call ``fdk`` once eagerly or :func:`fdk_tables` first).
    """

    check_sinogram(sino, geometry)
    rows, cols = geometry.det_shape
    if rows < 2 or cols < 2:
        raise ValueError(f"fdk needs a detector of at least 2 x 2 pixels, got {geometry.det_shape}")
    if window not in FDK_WINDOWS:
        raise ValueError(f"window must be one of {FDK_WINDOWS}, got {window!r}")
    # a string flag ("no") would be truthy: checked, not coerced (plain Python: traceable)
    padding, progress = boolean("padding", padding), boolean("progress", progress)
    if slab_voxels is None:
        # under torch.compile the twin's loops are unrolled into the graph: few large steps
        slab_voxels = 1 << (24 if sino.is_cuda or torch.compiler.is_compiling() else 17)
    if not isinstance(slab_voxels, int) or isinstance(slab_voxels, bool) or slab_voxels < 1:
        raise ValueError(f"slab_voxels must be a positive integer, got {slab_voxels!r}")
    tables = fdk_tables(geometry, sino.device, scan)
    if tables.warning is not None and not torch.compiler.is_compiling():
        warnings.warn(tables.warning, stacklevel=2)
    out_dtype = output_dtype(sino)
    sino = upcast(sino)
    device, dtype = sino.device, sino.dtype
    B, C, n_views = sino.shape[:3]
    # -- 1. cosine and redundancy weights (the redundancy over du: the unit ramp filter below)
    d_sd = tables.d_sd.to(dtype)[:, None, None]
    u_mm, v_mm = tables.u_mm.to(dtype)[:, None, :], tables.v_mm.to(dtype)[:, :, None]
    pre = d_sd * torch.rsqrt(d_sd**2 + u_mm**2 + v_mm**2) * tables.column_weight.to(dtype)[:, None, :]
    # -- 2. ramp filter along u, zero padded
    n_pad = int(2 ** math.ceil(math.log2(2 * cols))) if padding else cols
    resp = _unit_ramp_response(n_pad, window, dtype, device)
    filtered = torch.fft.irfft(torch.fft.rfft(sino * pre, n=n_pad, dim=-1) * resp, n=n_pad, dim=-1)[..., :cols]
    # -- 4. voxel-driven backprojection (ops/fdk_backproject.py: C++/CUDA, or the PyTorch twin)
    out = fdk_backproject(filtered.reshape(B * C, n_views, rows, cols), tables.views.to(dtype), geometry.vol_geom,
                          geometry.vol_shape, slab_voxels=slab_voxels, progress=progress)
    return out.reshape(B, C, *geometry.vol_shape).to(out_dtype)
