r"""Reconstruction quality on held-out real anatomy, reported like the paper (issue 17).

Held-out volumes (files, e.g. from ``bench/experiments/real_volumes.py``) are each resampled to fit a
``--size``^3 cube (whole head inside the field of view, ``--margin`` voxels of air around it,
isotropic scale, linear interpolation after a Gaussian anti-alias) and normalised with the
package's ``percentile`` normalisation (99.5th percentile -> ``--peak``), as the training blocks
are. Their sparse-view cone-beam scans are simulated with the package's own ``ConeBeamCT`` on the
demo's scan (``standard_cone_beam(size, views)``, 1 mm voxels) with Gaussian noise of
``--noise`` on the normalised measurements ``A x / ||A||``. At each view count (``--views``,
default 30 50 100) the methods are:

* FDK with the ramp (Ram-Lak) filter and with a Hann window;
* **post-processing** (the paper's DRUNet-3D baseline, on this package's network): a residual
  ``UNet3D`` (``--post-base`` channels, depth 2: about as many weights as the unrolled network's
  five base-8 UNets) applied to the FDK (Hann) of the whole volume
  (:class:`unrolled3d.models.PostProcessing`), trained by the same ``train`` for the same number
  of steps on the same data, noise, optimiser and learning-rate schedule (MSE to the truth);
* **full unrolled** (``UnrolledPGD`` on the whole volume; only at ``--full-views``: it is by far
  the slowest to train on a CPU);
* **partitioned, exact** patch operator ``A S^T`` and **partitioned, H** (the fitted
  diagonal-circulant approximation): the same ``UnrolledPGD`` (K = 5, one UNet3D base 8 per
  iteration) trained with ``L_PART`` on random ``--patch``^3 patches.

Training data: random ``--size``^3 blocks of the training files (``RandomCropDataset``, each file
resampled so the head spans 1, 1.5 and 2 times the cube: whole heads and zoomed-in parts, padded
with air; flips, quarter turns, intensity scaling 0.8-1.2), interleaved with textured phantoms
(``--textured-every``: one item in so many is a ``PhantomDataset(kind="textured")`` volume).

Scores: PSNR and SSIM (``unrolled3d.metrics``; peak = the truth's range over the whole volume) over
the whole volume and over the central slab (the ``--slab`` central axial slices, around the
source's orbit plane where a circular scan is complete, as the paper reports central slices).

``--shipped`` also scores the shipped demo model (``unrolled3d/weights/demo_ct.pt``: trained on
random ellipsoids, 48^3, 30 views) on the same held-out files at its own scan (size, views and
noise from its file) against FDK (Hann): the issue's target is +3 dB there.

These are **short-budget** figures (a few hundred steps on 2 shared CPU cores), not the issue's
>= 1 h training. Writes ``bench/results/quality_real.json`` and a PNG of central slices.

Run::

    python bench/experiments/real_volumes.py /tmp/real_volumes
    OMP_NUM_THREADS=1 python bench/experiments/quality_real.py \
        --train /tmp/real_volumes/mni152.npy /tmp/real_volumes/inia19.npy \
        --test /tmp/real_volumes/colin27.npy /tmp/real_volumes/dipy_aniso.npy --shipped
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from unrolled3d.figures import save_slices_png
from unrolled3d.data import Augmentation, IntensityNormalization, RandomCropDataset
from unrolled3d.data.datasets import PhantomDataset
from unrolled3d.io import atomic_path, load_model
from unrolled3d.io.lazy import LazyVolume
from unrolled3d.metrics import psnr, ssim
from unrolled3d.models import UNet3D, UnrolledPGD, build_model
from unrolled3d.normal import DiagCirculantWrapper
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT
from unrolled3d.physics.presets import standard_cone_beam
from unrolled3d.train import TrainConfig, train

if __package__:  # imported as unrolled3d.bench.experiments.quality_real (the bench suites, the tests)
    from .train_post import build_post, load_post
else:  # run as a script: this folder, bench/experiments/, is on the path
    from train_post import build_post, load_post

RESULTS = Path(__file__).resolve().parents[1] / "results"  # bench/results
SHIPPED = Path(__file__).resolve().parents[2] / "unrolled3d" / "weights" / "demo_ct.pt"


# ------------------------------------------------------------------------------------------ data
def zoom_to_fit(vol: np.ndarray, extent: float) -> np.ndarray:
    """``vol`` scaled isotropically so its longest axis spans ``extent`` voxels.

    Shrinking is preceded by a Gaussian of half the new voxel (in old voxels), so coarse voxels
    average the fine structure instead of sampling it (no aliasing).
    """
    from scipy import ndimage

    f = extent / max(vol.shape)
    if f < 1 / 1.5:
        vol = ndimage.gaussian_filter(vol, 0.5 / f)
    return np.clip(ndimage.zoom(vol, f, order=1), 0, None).astype(np.float32)


def centre_in_cube(vol: np.ndarray, n: int) -> np.ndarray:
    """``vol`` centred in an ``n``^3 cube of zeros (air), cropped where it is longer."""
    out = np.zeros((n, n, n), dtype=np.float32)
    src, dst = [], []
    for s in vol.shape:
        if s <= n:
            lo = (n - s) // 2
            src.append(slice(0, s))
            dst.append(slice(lo, lo + s))
        else:
            lo = (s - n) // 2
            src.append(slice(lo, lo + n))
            dst.append(slice(0, n))
    out[tuple(dst)] = vol[tuple(src)]
    return out


def held_out_volume(path: str, n: int, margin: int, norm: IntensityNormalization) -> torch.Tensor:
    """A held-out file as a ``[1, 1, n, n, n]`` truth: whole object fitted, normalised."""
    vol = zoom_to_fit(LazyVolume(path).read((0, 0, 0), LazyVolume(path).shape), n - 2 * margin)
    vol = centre_in_cube(vol, n)
    a, b = norm.affine(vol.ravel())  # the same percentile rule as the training blocks
    return torch.from_numpy(norm.apply(vol, a, b))[None, None]


def training_files(paths: Sequence[str], n: int, margin: int, scales: Sequence[float], folder: Path) -> list[str]:
    """Each training file resampled so it spans ``scale * (n - 2 margin)`` voxels, as ``.npy`` in ``folder``.

    Scale 1 is the whole head as the held-out volumes show it; larger scales are zoomed-in parts
    (a random ``n``^3 block of them), so the network sees finer detail and truncated objects too.
    """
    out = []
    for p in paths:
        full = LazyVolume(p)
        vol = full.read((0, 0, 0), full.shape)
        for s in scales:
            dst = folder / f"{Path(p).stem}_x{s:g}.npy"
            np.save(dst, zoom_to_fit(vol, s * (n - 2 * margin)))
            out.append(str(dst))
    return out


class Interleaved(torch.utils.data.Dataset):
    """Items of ``files`` with one in ``every`` taken from ``phantoms`` instead (``every = 0``: files only).

    Deterministic per index, as ``train`` needs for exact resumption.
    """

    def __init__(self, files: torch.utils.data.Dataset, phantoms: torch.utils.data.Dataset | None, every: int) -> None:
        self.files, self.phantoms, self.every = files, phantoms, every

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.phantoms is not None and self.every > 0 and i % self.every == 0:
            return self.phantoms[(i // self.every) % len(self.phantoms)]
        return self.files[i]

    def describe(self) -> dict[str, Any]:
        return {"type": "Interleaved", "every": self.every, "files": self.files.describe(),
                "phantoms": None if self.phantoms is None else self.phantoms.describe()}


# --------------------------------------------------------------------------------------- scoring
def scores(x_hat: torch.Tensor, x: torch.Tensor, slab: int) -> dict[str, float]:
    """PSNR/SSIM over the whole volume and the central ``slab`` axial slices (peak: truth's range)."""
    peak = float(x.max() - x.min())
    d = x.shape[-3]
    lo = (d - slab) // 2
    xs, hs = x[..., lo:lo + slab, :, :], x_hat[..., lo:lo + slab, :, :]
    return {"psnr_whole": psnr(x_hat, x, peak), "ssim_whole": ssim(x_hat, x, peak),
            "psnr_central": psnr(hs, xs, peak), "ssim_central": ssim(hs, xs, peak)}


def summarise(per_volume: list[dict[str, float]]) -> dict[str, Any]:
    """Means over the held-out volumes, with the per-volume figures kept."""
    keys = per_volume[0].keys()
    return {**{f"mean_{k}": float(np.mean([s[k] for s in per_volume])) for k in keys}, "per_volume": per_volume}


# -------------------------------------------------------------------------------------- training
def unrolled(n: int, patch: int) -> PartitionedReconstructor:
    """The bench's unrolled network (as ``quality_cbct.py`` and the demo: K=5, UNet3D base 8 each)."""
    torch.manual_seed(0)
    model = UnrolledPGD(UNet3D(base=8, depth=2), n_iter=5, step_size=1.0, shared=False)
    return PartitionedReconstructor(model, (n, n, n), (patch, patch, patch), n_sweeps=2)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ main
def machine() -> dict[str, Any]:
    """What the figures were measured on (load: other jobs shared the cores)."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg())}


def run_views(views: int, args: argparse.Namespace, tests: list[torch.Tensor], train_set, results: dict,
              figure: bool) -> None:
    """All methods at one view count; fills ``results["views"][str(views)]``."""
    n, p = args.size, args.patch
    physics = ConeBeamCT(standard_cone_beam(n, views), normalize=True)
    gen = torch.Generator().manual_seed(123)  # the held-out noise: the same draws for every method
    ys = []
    with torch.no_grad():
        for x in tests:
            y = physics.A(x)
            ys.append(y + args.noise * torch.randn(y.shape, generator=gen))
    out: dict[str, Any] = {"methods": {}}
    shown: dict[str, torch.Tensor] = {}

    def score(name: str, run: Callable[[torch.Tensor], torch.Tensor], extra: dict[str, Any] | None = None) -> None:
        per, t = [], 0.0
        with torch.no_grad():
            for i, (x, y) in enumerate(zip(tests, ys)):
                x_hat, dt = timed(lambda: run(y))
                t += dt
                per.append(scores(x_hat, x, args.slab))
                if i == 0:
                    shown[name] = x_hat[0, 0]
        out["methods"][name] = {**summarise(per), "inference_seconds": t / len(tests), **(extra or {})}
        m = out["methods"][name]
        print(f"  {views} views, {name}: PSNR {m['mean_psnr_whole']:.2f} dB whole, {m['mean_psnr_central']:.2f} "
              f"central; SSIM {m['mean_ssim_whole']:.3f}", flush=True)

    score("FDK (ram-lak)", lambda y: physics.A_dagger(y, window="ram-lak"))
    score("FDK (Hann)", lambda y: physics.A_dagger(y, window="hann"))
    cfg = TrainConfig(steps=args.steps, lr=args.lr, seed=0, noise_std=args.noise, progress=False)

    if "post" in args.methods:
        net = build_post(args.post_base, depth=2)
        log, t = timed(lambda: train(net, physics, train_set, cfg))
        net.eval()
        score("post-processing UNet3D on FDK (Hann)", lambda y: net(y, physics),
              {"train_seconds": t, "loss_first_last": [log["losses"][0], log["losses"][-1]],
               "parameters": sum(q.numel() for q in net.parameters())})
    cases = []
    if "full" in args.methods and views in args.full_views:
        cases.append(("full unrolled", n, physics))
    if "exact" in args.methods:
        cases.append(("partitioned (exact A S^T)", p, physics))
    if "H" in args.methods:
        normal, t_fit = timed(lambda: DiagCirculantWrapper(physics, (n, n, n)))
        hist, t_fit2 = timed(lambda: normal.fit(n_iter=150, lr=1e-2, progress=False))
        out["H_relative_error"] = normal.relative_error()
        out["H_fit_seconds"] = t_fit + t_fit2
        cases.append(("partitioned (H)", p, normal))
    for name, patch, phys in cases:
        rec = unrolled(n, patch)
        log, t = timed(lambda: train(rec, phys, train_set, cfg))
        rec.eval()
        score(name, lambda y: rec(y, phys), {"train_seconds": t, "patch": patch,
                                             "loss_first_last": [log["losses"][0], log["losses"][-1]],
                                             "parameters": sum(q.numel() for q in rec.parameters())})
    results["views"][str(views)] = out
    if figure:
        first = out["methods"]
        labels = {"truth": tests[0][0, 0]}
        for name, vol in shown.items():
            s = first[name]["per_volume"][0]
            labels[f"{name}\n{s['psnr_whole']:.2f} dB, SSIM {s['ssim_whole']:.3f}"] = vol
        save_slices_png(labels, Path(args.out).with_suffix(".png"),
                        title=f"held-out {Path(args.test[0]).stem}, {n}^3, {views} views, noise {args.noise:g} "
                              f"(short budget: {args.steps} steps)", units="attenuation (scaled, a.u.)")
        results["figure"] = str(Path(args.out).with_suffix(".png").name)


def run_shipped(args: argparse.Namespace, norm: IntensityNormalization, results: dict) -> None:
    """The shipped demo model on the held-out files at its own scan, against FDK (Hann)."""
    state, config = load_model(args.shipped_weights)
    n, views = int(config["geometry"]["size"]), int(config["geometry"]["views"])
    noise = float(config["train"]["noise_std"])
    rec = build_model(config, (n, n, n))
    rec.load_state_dict(state)
    rec.eval()
    physics = ConeBeamCT(standard_cone_beam(n, views), normalize=True)
    tests = [held_out_volume(p, n, args.margin, norm) for p in args.test]
    gen = torch.Generator().manual_seed(123)
    label = f"shipped {Path(args.shipped_weights).name} (partitioned)"
    runs = [("FDK (ram-lak)", lambda m: physics.A_dagger(m, window="ram-lak")),
            ("FDK (Hann)", lambda m: physics.A_dagger(m, window="hann")),
            (label, lambda m: rec(m, physics))]
    post_info = None
    if args.post_weights:  # the baseline trained on the same data (bench/experiments/train_post.py)
        post, post_cfg = load_post(args.post_weights)
        if (int(post_cfg["geometry"]["size"]), int(post_cfg["geometry"]["views"])) != (n, views):
            raise SystemExit(f"--post-weights {args.post_weights} was trained at {post_cfg['geometry']}, the model "
                             f"at size {n}, {views} views: not one comparison")
        post_label = "post-processing UNet3D"  # short: it labels a figure row (the file is in post_info)
        runs.append((post_label, lambda m: post(m, physics)))
        post_info = {"weights": str(args.post_weights), "parameters": post_cfg["parameters"],
                     "steps": post_cfg["train"]["steps"], "label": post_label,
                     "init": post_cfg.get("init")}  # a fine-tuned baseline: the file it started from
    per: dict[str, list] = {name: [] for name, _ in runs}
    figures = []
    with torch.no_grad():
        for i, x in enumerate(tests):
            y = physics.A(x)
            y = y + noise * torch.randn(y.shape, generator=gen)
            shown = {"truth": x[0, 0]}
            for name, run in runs:
                x_hat = run(y)
                s = scores(x_hat, x, args.slab)
                per[name].append(s)
                shown[f"{name}\n{s['psnr_whole']:.2f} dB, SSIM {s['ssim_whole']:.3f}"] = x_hat[0, 0]
            # one figure per held-out volume: the first keeps the historical name
            stem = Path(args.out).stem + "_shipped" + ("" if i == 0 else f"_{Path(args.test[i]).stem}")
            png = Path(args.out).with_name(stem + ".png")
            save_slices_png(shown, png, title=f"{Path(args.shipped_weights).stem} on held-out "
                                              f"{Path(args.test[i]).stem}, {n}^3, {views} views, noise {noise:g}",
                            units="attenuation (scaled, a.u.)")
            figures.append(png.name)
    methods = {k: summarise(v) for k, v in per.items()}
    gain = [a["psnr_whole"] - b["psnr_whole"] for a, b in zip(per[label],
                                                             per["FDK (Hann)"])]
    if post_info is not None:
        post_info["gain_over_fdk_hann_db_whole"] = [a["psnr_whole"] - b["psnr_whole"] for a, b in
                                                    zip(per[post_info["label"]], per["FDK (Hann)"])]
        post_info["mean_gain_over_fdk_hann_db_whole"] = float(np.mean(post_info["gain_over_fdk_hann_db_whole"]))
        print(f"post-processing: {methods[post_info['label']]['mean_psnr_whole']:.2f} dB: gain "
              f"{post_info['mean_gain_over_fdk_hann_db_whole']:+.2f} dB over FDK (Hann)", flush=True)
    results["shipped"] = {"weights": str(args.shipped_weights), "trained_on": config.get("phantoms") or config.get("data"),
                          "steps": config["train"]["steps"], "init": config.get("init"), "post_processing": post_info,
                          "size": n, "views": views, "noise": noise, "patch": config["partition"]["patch"],
                          "methods": methods, "gain_over_fdk_hann_db_whole": gain,
                          "mean_gain_over_fdk_hann_db_whole": float(np.mean(gain)), "target_db": 3.0,
                          "figure": figures[0], "figures": figures}
    print(f"shipped model: {methods[label]['mean_psnr_whole']:.2f} dB vs FDK (Hann) "
          f"{methods['FDK (Hann)']['mean_psnr_whole']:.2f} dB: gain {np.mean(gain):+.2f} dB", flush=True)


# settings that may differ between runs merged into one table (which views, where, what else)
_PER_RUN = ("views", "full_views", "shipped", "shipped_weights", "post_weights", "skip_trained", "out", "merge_from", "methods")


def merge(parts: Sequence[str], out: str) -> None:
    """One results file from runs of the same problem made in parallel (e.g. one per CPU core).

    The runs must agree on every setting but the per-run ones (``_PER_RUN``); the figures are copied
    beside ``out`` under its name.
    """
    import shutil

    runs = [json.loads(Path(p).read_text()) for p in parts]
    same = {k: v for k, v in runs[0]["config"].items() if k not in _PER_RUN}
    for p, r in zip(parts[1:], runs[1:]):
        differ = [k for k, v in same.items() if r["config"].get(k) != v]
        if differ:
            raise SystemExit(f"{p} differs from {parts[0]} in {differ}: not one table")
    merged: dict[str, Any] = {"what": runs[0]["what"], "config": same, "data": runs[0]["data"], "views": {},
                              "runs": []}
    out_path = Path(out)
    for p, r in zip(parts, runs):
        merged["views"].update(r["views"])
        merged["runs"].append({"file": Path(p).name, "views": r["config"]["views"],
                               "full_views": r["config"]["full_views"], "methods": r["config"]["methods"],
                               "machine_start": r["machine_start"], "machine_end": r["machine_end"],
                               "total_seconds": r["total_seconds"]})
        for key, suffix in (("figure", ".png"), ("shipped", "_shipped.png")):
            src = r.get(key, {}).get("figure") if key == "shipped" else r.get(key)
            if src and (key not in merged or key == "shipped"):
                dst = out_path.with_name(out_path.stem + suffix)
                shutil.copyfile(Path(p).with_name(src), dst)
                if key == "shipped":
                    copied = [dst.name]
                    for name in r["shipped"].get("figures", [])[1:]:  # the other held-out volumes' figures
                        extra = out_path.with_name(out_path.stem + "_shipped" + name.split("_shipped", 1)[1])
                        shutil.copyfile(Path(p).with_name(name), extra)
                        copied.append(extra.name)
                    merged["shipped"] = {**r["shipped"], "figure": dst.name, "figures": copied}
                else:
                    merged["figure"] = dst.name
    merged["views"] = dict(sorted(merged["views"].items(), key=lambda kv: int(kv[0])))
    with atomic_path(out) as tmp_out:
        tmp_out.write_text(json.dumps(merged, indent=1))
    print(f"wrote {out} from {len(parts)} runs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", nargs="*", default=[], help="training volume files (any format LazyVolume reads)")
    ap.add_argument("--test", nargs="+", help="held-out volume files (other scans than --train)")
    ap.add_argument("--textured-every", type=int, default=2,
                    help="one training item in this many is a textured phantom (0: none; files only)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--margin", type=int, default=1, help="voxels of air around a held-out head")
    ap.add_argument("--views", type=int, nargs="+", default=[30, 50, 100])
    ap.add_argument("--full-views", type=int, nargs="*", default=[30], help="view counts with the full unrolled net")
    ap.add_argument("--methods", nargs="+", default=["post", "full", "exact", "H"],
                    choices=["post", "full", "exact", "H"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--noise", type=float, default=0.02, help="Gaussian noise std on normalised measurements")
    ap.add_argument("--peak", type=float, default=1.0, help="value of the 99.5th percentile after normalisation")
    ap.add_argument("--post-base", type=int, default=16, help="channels of the post-processing UNet3D's first level")
    ap.add_argument("--slab", type=int, default=12, help="central axial slices of the 'central' scores (>= 11)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shipped", action="store_true", help="also score the shipped demo model")
    ap.add_argument("--shipped-weights", default=str(SHIPPED), help="the unrolled model file --shipped scores")
    ap.add_argument("--post-weights", help="with --shipped: also score this post-processing model "
                                           "(bench/experiments/train_post.py, trained at the same scan)")
    ap.add_argument("--skip-trained", action="store_true", help="only FDK (and --shipped): no training")
    ap.add_argument("--out", default=str(RESULTS / "quality_real.json"))
    ap.add_argument("--merge-from", nargs="+", metavar="JSON",
                    help="combine the view counts of runs made in parallel (one per core) into --out, and stop")
    args = ap.parse_args()
    if args.merge_from:
        merge(args.merge_from, args.out)
        return
    if not args.test:
        raise SystemExit("--test is required: the held-out volume files")
    if args.slab < 11:
        raise SystemExit("--slab must be at least 11 slices (SSIM's 11-tap window)")
    if args.skip_trained:
        args.methods = []
    if args.methods and not args.train and args.textured_every == 0:
        raise SystemExit("training needs --train files and/or textured phantoms (--textured-every > 0)")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals slow CPU convolutions several-fold
    t_start = time.perf_counter()
    norm = IntensityNormalization("percentile", percentile=99.5, value=args.peak)
    n = args.size
    tests = [held_out_volume(p, n, args.margin, norm) for p in args.test]
    results: dict[str, Any] = {
        "what": "short-budget figures (see config.steps and train_seconds), not the issue's >= 1 h training",
        "config": vars(args), "machine_start": machine(),
        "data": {"train": [str(Path(p).name) for p in args.train], "test": [str(Path(p).name) for p in args.test],
                 "normalization": norm.to_dict(), "textured_every": args.textured_every},
        "views": {}}
    sources = Path(args.test[0]).with_name("sources.json")
    if sources.exists():  # what the volumes are, as real_volumes.py recorded it
        results["data"]["sources"] = json.loads(sources.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        train_set = None
        if args.methods:
            phantoms = (PhantomDataset(100_000, (n, n, n), kind="textured", seed=0)
                        if args.textured_every > 0 else None)
            if args.train:
                files = training_files(args.train, n, args.margin, (1.0, 1.5, 2.0), Path(tmp))
                crops = RandomCropDataset(files, n, normalization=norm, pad=True, length=100_000, seed=0,
                                          augmentation=Augmentation(flip=True, rot90=True, intensity=(0.8, 1.2)))
                train_set = Interleaved(crops, phantoms, args.textured_every)
            else:
                train_set = phantoms
        for k, views in enumerate(args.views):
            run_views(views, args, tests, train_set, results, figure=k == 0)
    if args.shipped:
        run_shipped(args, norm, results)
    results["machine_end"] = machine()
    results["total_seconds"] = time.perf_counter() - t_start
    with atomic_path(args.out) as tmp_out:
        tmp_out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out} ({results['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
