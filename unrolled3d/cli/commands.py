"""The ``unrolled3d`` subcommands: each takes the parsed arguments and returns the exit status."""
from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from .bench import bench_cmd
from .output import emit

__all__ = ["demo", "info", "simulate", "fit_normal", "reconstruct", "train_cmd", "import_walnut", "bench_cmd",
           "DEFAULT_TRAIN_CONFIG"]

DEFAULT_TRAIN_CONFIG: dict[str, dict[str, Any]] = {
    "geometry": {"size": 48, "views": 30},
    "phantoms": {"kind": "ellipsoids", "seed": 0},
    "model": {"n_iter": 5, "base": 8, "depth": 2, "shared": True},
    "partition": {"patch": 24},
    "train": {"steps": 300, "lr": 1e-3, "noise_std": 0.01, "seed": 0, "checkpoint_every": 50},
}


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r} (use cpu, cuda or cuda:N)")
    return dev


def demo(args: argparse.Namespace) -> int:
    from .demo import as_dict, result_table, run_demo

    size, n_volumes = (24, 1) if args.quick else (args.size, args.volumes)
    result = run_demo(weights=args.weights, size=size, n_volumes=n_volumes, seed=args.seed, out=args.out,
                      progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps({**as_dict(result), "wall_seconds": round(result.seconds, 2)}))
    elif not args.quiet:
        print(result_table(result))
        print(f"demo finished in {result.seconds:.1f} s")
    return 0


def info(args: argparse.Namespace) -> int:
    from .. import __version__, backends

    info = {"version": __version__, **backends()}
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:18s} {v}")
    return 0


def simulate(args: argparse.Namespace) -> int:
    from ..data import random_ellipsoids, shepp_logan_3d, voxelize
    from ..io import save_measurements
    from ..ops import cone_project
    from ..physics import scan_for_volume, standard_cone_beam

    scan = "short" if args.short_scan else "full"
    if args.volume is not None:
        from ..io import read_volume

        if args.phantom is not None or args.size is not None:
            raise ValueError("--volume replaces --phantom and --size: give one or the other")
        vol, voxel_size = read_volume(args.volume)
        if not torch.isfinite(vol).all():
            raise ValueError(f"{args.volume}: the volume contains NaN or inf")
        g = scan_for_volume(tuple(vol.shape), voxel_size, args.views, scan)
        x = vol.to(torch.float32)[None, None]
        source = {"volume": str(args.volume)}
    else:
        size = 64 if args.size is None else args.size
        phantom = args.phantom or "shepp-logan"
        g = standard_cone_beam(size, args.views, scan=scan)
        radius = 0.45 * size
        ell = shepp_logan_3d(radius) if phantom == "shepp-logan" else random_ellipsoids(10, radius, seed=args.seed)
        x = voxelize(ell, g.vol_shape, supersample=2)[None, None]
        source = {"phantom": phantom}
    y = cone_project(x, g)
    y = y + args.noise * float(y.max()) * torch.randn(y.shape, generator=torch.Generator().manual_seed(args.seed))
    save_measurements(args.out, y, g, x_true=x, meta={**source, "noise": args.noise})
    emit(args, {"out": args.out, "sino_shape": list(y.shape)}, f"wrote {args.out}: measurements {tuple(y.shape)}")
    return 0


def import_walnut(args: argparse.Namespace) -> int:
    """A Walnut CBCT orbit folder -> our measurements file (line integrals + geometry)."""
    from ..data import read_walnut
    from ..io import save_measurements

    t0 = time.perf_counter()
    y, g = read_walnut(args.folder, geometry_file=args.geometry_file, vol_shape=tuple(args.vol_shape),
                       voxel_size=args.voxel_size, view_step=args.view_step, binning=args.binning)
    meta = {"source": "walnut", "folder": str(args.folder), "geometry_file": args.geometry_file,
            "view_step": args.view_step, "binning": args.binning}
    save_measurements(args.out, y, g, meta=meta)
    seconds = time.perf_counter() - t0
    emit(args, {"out": args.out, "sino_shape": list(y.shape), "vol_shape": list(g.vol_shape),
                 "voxel_size": list(g.voxel_size), "seconds": round(seconds, 3)},
          f"wrote {args.out}: {g.n_views} views of {g.det_shape[0]} x {g.det_shape[1]} pixels, "
          f"volume {g.vol_shape} of {g.voxel_size[0]:g} mm voxels ({seconds:.1f} s)")
    return 0


def fit_normal(args: argparse.Namespace) -> int:
    from ..io import load_measurements
    from ..normal import DiagCirculantWrapper
    from ..physics import ConeBeamCT

    _, g, _, _ = load_measurements(args.measurements)
    physics = ConeBeamCT(g, normalize=True)
    w = DiagCirculantWrapper(physics, g.vol_shape, kernel_radius=args.kernel_radius)
    hist = w.fit(n_iter=args.iters, lr=args.lr, progress=not (args.quiet or args.json))
    err = w.relative_error()
    w.save(args.out)
    emit(args, {"out": args.out, "relative_error": err, "first_batch_error": hist[0]},
          f"wrote {args.out}: relative error of H {err:.4f} (started at {hist[0]:.4f})")
    return 0


def reconstruct(args: argparse.Namespace) -> int:
    from ..budget import choose_patch, measure_peak, parse_bytes
    from ..io import load_measurements, load_model, volume_format, write_volume
    from ..metrics import psnr
    from ..models import build_model
    from ..normal import DiagCirculantWrapper
    from ..physics import ConeBeamCT

    volume_format(args.out)  # an unknown output type fails now, not after the reconstruction
    budget_info = None
    device = _device(args.device)
    y, g, x_true, _ = load_measurements(args.measurements)
    physics = ConeBeamCT(g, normalize=args.method == "unrolled", device=device)
    y = y.to(device)
    t0 = time.perf_counter()
    if args.method == "fdk":
        x = physics.A_dagger(physics.normalize_measurements(y))
    else:
        if args.weights is None:
            raise ValueError("--method unrolled needs --weights (a model file written by `unrolled3d train`)")
        state, config = load_model(args.weights)
        if args.patch_size is not None and any(args.patch_size > n for n in g.vol_shape):
            raise ValueError(f"--patch-size {args.patch_size} is larger than the volume {g.vol_shape}")
        rec = build_model(config, g.vol_shape, patch=args.patch_size)
        rec.load_state_dict(state)
        rec.to(device).eval()
        target = physics
        if args.normal is not None:
            target = DiagCirculantWrapper.from_file(args.normal, physics, device=device)
            if target.img_shape != tuple(g.vol_shape):
                raise ValueError(f"--normal {args.normal} is for a {target.img_shape} volume, the measurements "
                                 f"are of a {tuple(g.vol_shape)} volume")
        y_n = physics.normalize_measurements(y)
        if args.memory_budget is not None:
            if args.patch_size is not None:
                raise ValueError("give either --patch-size or --memory-budget, not both")
            choice = choose_patch(rec, y_n, target, parse_bytes(args.memory_budget))
            rec = rec.with_patch_size(choice.patch)
            budget_info = {"patch": choice.patch, "predicted_peak_mib": round(choice.predicted_bytes / 2**20, 1)}
            if not args.quiet and not args.json:
                print(f"memory budget {args.memory_budget}: patches of {choice.patch}^3 "
                      f"(predicted peak {budget_info['predicted_peak_mib']:.0f} MiB)")
            t0 = time.perf_counter()  # the choice's trial runs are not part of the reconstruction time
        with torch.no_grad():
            if args.memory_budget is None:
                x = rec(y_n, target)
            else:  # measure the real run's peak, to set against the prediction
                held: dict[str, torch.Tensor] = {}
                peak = measure_peak(lambda: held.setdefault("x", rec(y_n, target)), device)
                x = held["x"]
    seconds = time.perf_counter() - t0
    write_volume(args.out, x[0, 0], g.voxel_size)  # format from the extension, the scan's voxel size
    payload = {"out": args.out, "seconds": round(seconds, 3), "method": args.method}
    if budget_info:
        payload.update(budget_info, measured_peak_mib=round(peak / 2**20, 1))
    if x_true is not None:
        payload["psnr"] = psnr(x.cpu(), x_true)
    emit(args, payload, f"wrote {args.out} ({args.method}, {seconds:.1f} s"
                         + (f", PSNR {payload['psnr']:.2f} dB)" if "psnr" in payload else ")"))
    return 0


def _merge(base: dict, update: dict) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in update.items():
        if section not in out:
            raise ValueError(f"unknown config section [{section}] (known: {', '.join(out)})")
        unknown = set(values) - set(out[section]) - {"out_dir", "val_every", "min_lr", "grad_clip"}
        if unknown:
            raise ValueError(f"unknown keys in [{section}]: {', '.join(sorted(unknown))}")
        out[section].update(values)
    return out


def train_cmd(args: argparse.Namespace) -> int:
    from ..data import PhantomDataset
    from ..io import save_model
    from ..models import build_model
    from ..physics import ConeBeamCT, standard_cone_beam
    from ..train import TrainConfig, train

    path = Path(args.config)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        cfg = _merge(DEFAULT_TRAIN_CONFIG, tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    size, views = int(cfg["geometry"]["size"]), int(cfg["geometry"]["views"])
    physics = ConeBeamCT(standard_cone_beam(size, views), normalize=True)
    dataset = PhantomDataset(100_000, (size,) * 3, kind=cfg["phantoms"]["kind"], seed=int(cfg["phantoms"]["seed"]))
    torch.manual_seed(int(cfg["train"]["seed"]))
    rec = build_model(cfg, (size,) * 3)
    out_dir = Path(args.out_dir)
    tcfg = TrainConfig(**{k: v for k, v in cfg["train"].items()}, out_dir=str(out_dir / "checkpoints"),
                       progress=not (args.quiet or args.json))
    log = train(rec, physics, dataset, tcfg, resume=args.resume)
    model_path = out_dir / "model.pt"
    save_model(model_path, rec, {**cfg, "command": " ".join(["unrolled3d", *args.argv])})
    emit(args, {"model": str(model_path), "steps": log["step"], "final_loss": log["losses"][-1]},
          f"wrote {model_path} after {log['step']} steps (last loss {log['losses'][-1]:.3e})")
    return 0


