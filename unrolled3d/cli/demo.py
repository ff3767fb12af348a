"""``unrolled3d demo``: sparse-view cone-beam CT of held-out phantoms, FDK vs the partitioned
unrolled network whose weights ship with the package.

Everything is made on the fly (no downloads) and runs on the CPU. The weights
(``unrolled3d/weights/demo_ct.pt``) were trained by ``unrolled3d train`` on the configuration
``unrolled3d/weights/demo_ct.toml``; the model file records the command that made it. The demo
reads the scan (size, views, noise) from that configuration and draws its phantoms from the
same generator with another seed, so none of them was seen in training.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._validation import integer
from ..errors import FileFormatError
from ..figures import check_png_name, save_slices_png
from ..data import PhantomDataset
from ..io import load_model
from ..memory import PeakRSS
from ..metrics import psnr, ssim
from ..pretrained import build_from_file
from ..physics import ConeBeamCT, standard_cone_beam

__all__ = ["DemoResult", "run_demo", "save_slices_png", "check_png_name", "result_table", "DEFAULT_WEIGHTS"]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "demo_ct.pt"
#: added to the training configuration's phantom seed: the demo's phantoms are held out
HELD_OUT_SEED_OFFSET = 1_000_003


@dataclass
class MethodResult:
    """Scores of one reconstruction method over the demo volumes."""

    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mib: float | None = None

    @property
    def mean_psnr(self) -> float:
        return sum(self.psnr) / len(self.psnr)

    @property
    def mean_ssim(self) -> float:
        return sum(self.ssim) / len(self.ssim)


@dataclass
class DemoResult:
    """What ``unrolled3d demo`` measured: the scan, the scores of each method, where the figure is.

    Examples
    --------
    >>> from unrolled3d.cli.demo import DemoResult, MethodResult, result_table
    >>> r = DemoResult(48, 30, 0.02, 1, 24, {"FDK": MethodResult([25.0], [0.35], 0.1)}, "w.pt", "", "demo.png")
    >>> print(result_table(r).splitlines()[2])
    FDK             25.00      0.350  0.1       n/a
    """

    size: int
    n_views: int
    noise_std: float
    n_volumes: int
    patch: int
    methods: dict[str, MethodResult]
    weights: str
    train_command: str
    png: str
    seconds: float = 0.0


def run_demo(weights: str | Path | None = None, size: int | None = None, n_volumes: int = 2, seed: int = 0,
             out: str | Path = "unrolled3d_demo.png", progress: bool = True, force: bool = False) -> DemoResult:
    """Simulate sparse-view scans of held-out phantoms; reconstruct with FDK and the network.

    Parameters
    ----------
    weights : path, optional
        Model file written by ``unrolled3d train`` (default: the shipped ``demo_ct.pt``).
    size : int, optional
        Volume edge in voxels (1 mm voxels); default the training size. The network works on
        patches, so other sizes run too (scores then leave the trained setting).
    n_volumes : int
        Held-out phantoms to score (the figure shows the first).
    seed : int
        Seed of the measurement noise.
    out : path
        PNG of orthogonal slices: truth / FDK / unrolled, with PSNR and SSIM (ending ``.png``).
    progress : bool
        Progress bars on stderr.
    force : bool
        Replace a read-only ``out``.
    """
    n_volumes = integer("n_volumes", n_volumes, 1)
    seed = integer("seed", seed, 0)
    check_png_name(out)
    t_start = time.perf_counter()
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    state, config = load_model(path)
    try:  # the scan the model was trained on, from its file
        size_trained = integer("size", config["geometry"]["size"], 1)
        views = integer("views", config["geometry"]["views"], 1)
        noise = float(config["train"]["noise_std"])
        patch_trained = integer("patch", config["partition"]["patch"], 1)
        kind, phantom_seed = config["phantoms"]["kind"], integer("seed", config["phantoms"]["seed"], 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise FileFormatError(path, f"the model's configuration lacks the training scan ({type(exc).__name__}: "
                                    f"{exc}): expected [geometry] size, views, [train] noise_std, [partition] patch, "
                                    f"[phantoms] kind, seed") from None
    size = size_trained if size is None else integer("size", size, 1)
    if size < 16:
        raise ValueError(f"size must be at least 16 voxels, got {size}")
    patch = min(patch_trained, size)
    physics = ConeBeamCT(standard_cone_beam(size, views), normalize=True, progress=progress)
    cfg = {**config, "partition": {**config["partition"], "patch": patch}}
    rec = build_from_file(cfg, state, path, (size,) * 3)  # costed first; weights that do not fit refused
    rec.progress = progress
    phantoms = PhantomDataset(n_volumes, (size,) * 3, kind=kind, seed=phantom_seed + HELD_OUT_SEED_OFFSET)
    gen = torch.Generator().manual_seed(seed)
    methods = {"FDK": MethodResult(), "partitioned unrolled": MethodResult()}
    shown = {}
    for i in tqdm(range(n_volumes), desc="volumes", unit="volume", disable=not progress):
        x = phantoms[i][None]
        with torch.no_grad():
            y = physics.A(x)
            y = y + noise * torch.randn(y.shape, generator=gen)
            for name, run in (("FDK", physics.A_dagger), ("partitioned unrolled", lambda m: rec(m, physics))):
                t0 = time.perf_counter()
                with PeakRSS() as mem:
                    x_hat = run(y)
                r = methods[name]
                r.seconds += time.perf_counter() - t0
                if mem.peak_mib is not None:
                    r.peak_rss_mib = max(r.peak_rss_mib or 0.0, mem.peak_mib)
                r.psnr.append(psnr(x_hat, x))
                r.ssim.append(ssim(x_hat, x))
                if i == 0:
                    shown[name] = x_hat[0, 0]
        if i == 0:
            shown = {"ground truth": x[0, 0], **shown}
    labels = {"ground truth": "ground truth"}
    for name, r in methods.items():
        labels[name] = f"{name}\n{r.psnr[0]:.2f} dB, SSIM {r.ssim[0]:.3f}"
    # the window of the ground truth (its full range: the phantoms are piecewise constant), the
    # values in 1/mm (1 mm voxels, line integrals in mm)
    truth = shown["ground truth"]
    png = save_slices_png({labels[k]: v for k, v in shown.items()}, out,
                          title=f"held-out phantom {size}^3, {views}-view cone beam, noise {noise:g}",
                          window=(float(truth.min()), float(truth.max())), units="attenuation (1/mm)", force=force)
    return DemoResult(size, views, noise, n_volumes, patch, methods, str(path), str(config.get("command", "")),
                      str(png), time.perf_counter() - t_start)


def result_table(r: DemoResult) -> str:
    """A short plain-text table of the demo's figures."""
    rows = [("reconstruction", "PSNR (dB)", "SSIM", "time (s)", "peak RSS (MiB)")]
    for name, m in r.methods.items():
        rows.append((name, f"{m.mean_psnr:.2f}", f"{m.mean_ssim:.3f}", f"{m.seconds:.1f}",
                     "n/a" if m.peak_rss_mib is None else f"{m.peak_rss_mib:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{r.n_volumes} held-out {r.size}^3 phantoms, {r.n_views} views, patches of {r.patch}^3; "
                 f"figure: {r.png}")
    return "\n".join(lines)


def as_dict(r: DemoResult) -> dict:
    d = asdict(r)
    for name, m in r.methods.items():
        d["methods"][name].update(mean_psnr=m.mean_psnr, mean_ssim=m.mean_ssim)
    return d
