"""``unrolled3d demo``: simulate a cone-beam scan of a 3D phantom and reconstruct it with FDK.

Everything is made on the fly (no downloads) and runs on the CPU in seconds. The partitioned
unrolled network joins this demo once its weights ship with the package (see README roadmap).
"""
from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .data import shepp_logan_3d, voxelize
from .io_utils import atomic_path
from .metrics import psnr
from .ops import cone_project
from .physics import fdk
from .physics.presets import standard_cone_beam

__all__ = ["DemoResult", "run_demo", "save_slices_png"]


@dataclass
class DemoResult:
    size: int
    n_views: int
    noise: float
    psnr_fdk_dense: float
    psnr_fdk_sparse: float
    n_views_sparse: int
    seconds: dict
    peak_rss_mib: float
    png: str


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def save_slices_png(volumes: dict[str, torch.Tensor], path: str | Path, title: str = "") -> Path:
    """Orthogonal central slices (axial, coronal, sagittal) of each volume, one row per volume.

    Parameters
    ----------
    volumes : dict
        ``label -> (D, H, W)`` tensors; labels are printed at the left of each row.
    path : str or Path
        PNG written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = next(iter(volumes.values()))
    vmin, vmax = float(ref.min()), float(ref.max())
    fig, axes = plt.subplots(len(volumes), 3, figsize=(9, 3 * len(volumes)), squeeze=False)
    for row, (label, vol) in enumerate(volumes.items()):
        v = vol.detach().float().cpu()
        D, H, W = v.shape
        for col, (img, name) in enumerate(
            [(v[D // 2], "axial (z)"), (v[:, H // 2], "coronal (y)"), (v[:, :, W // 2], "sagittal (x)")]
        ):
            ax = axes[row, col]
            ax.imshow(img.numpy(), cmap="gray", vmin=vmin, vmax=vmax, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
            if col == 0:
                ax.set_ylabel(label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def run_demo(
    size: int = 128, n_views: int = 180, n_views_sparse: int = 30, noise: float = 0.01,
    out: str | Path = "unrolled3d_demo.png", seed: int = 0, progress: bool = True,
) -> DemoResult:
    """Simulate a Shepp-Logan cone-beam scan and reconstruct it with FDK (dense and sparse view).

    Parameters
    ----------
    size : int
        Volume edge in voxels (1 mm voxels).
    n_views, n_views_sparse : int
        Views of the dense and sparse full scans.
    noise : float
        Standard deviation of the Gaussian noise, relative to the largest line integral.
    out : path
        PNG of orthogonal slices (truth / FDK dense / FDK sparse) with PSNR.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 voxels, got {size}")
    if n_views < 2 or n_views_sparse < 2:
        raise ValueError("n_views and n_views_sparse must be at least 2")
    if not (noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"noise must be a finite non-negative number, got {noise}")
    t = {}
    gen = torch.Generator().manual_seed(seed)
    geoms = {n: standard_cone_beam(size, n) for n in (n_views, n_views_sparse)}
    t0 = time.perf_counter()
    truth = voxelize(shepp_logan_3d(radius=0.45 * size), (size,) * 3, supersample=2)
    t["phantom"] = time.perf_counter() - t0
    recs = {}
    for n, g in geoms.items():
        t0 = time.perf_counter()
        y = cone_project(truth[None, None], g)
        y = y + noise * float(y.max()) * torch.randn(y.shape, generator=gen)
        t[f"project_{n}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        recs[n] = fdk(y, g, window="hann", progress=progress)[0, 0]
        t[f"fdk_{n}"] = time.perf_counter() - t0
    scores = {n: psnr(r, truth) for n, r in recs.items()}
    png = save_slices_png(
        {"ground truth": truth,
         f"FDK {n_views} views\n{scores[n_views]:.2f} dB": recs[n_views],
         f"FDK {n_views_sparse} views\n{scores[n_views_sparse]:.2f} dB": recs[n_views_sparse]},
        out, title=f"Shepp-Logan {size}^3, cone-beam, noise {noise:g}",
    )
    return DemoResult(size, n_views, noise, scores[n_views], scores[n_views_sparse], n_views_sparse,
                      {k: round(v, 3) for k, v in t.items()}, round(_peak_rss_mib(), 1), str(png))


def result_table(r: DemoResult) -> str:
    """A short plain-text table of the demo's figures."""
    rows = [("reconstruction", "PSNR (dB)", "time (s)"),
            (f"FDK, {r.n_views} views", f"{r.psnr_fdk_dense:.2f}", f"{r.seconds[f'fdk_{r.n_views}']:.2f}"),
            (f"FDK, {r.n_views_sparse} views", f"{r.psnr_fdk_sparse:.2f}",
             f"{r.seconds[f'fdk_{r.n_views_sparse}']:.2f}")]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"peak memory (RSS): {r.peak_rss_mib:.0f} MiB; figure: {r.png}")
    return "\n".join(lines)


def as_dict(r: DemoResult) -> dict:
    return asdict(r)
