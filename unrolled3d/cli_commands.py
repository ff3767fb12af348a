"""Implementations of the ``unrolled3d`` subcommands other than ``demo`` and ``info``."""
from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

__all__ = ["simulate", "fit_normal", "reconstruct", "train_cmd", "build_model", "DEFAULT_TRAIN_CONFIG"]

DEFAULT_TRAIN_CONFIG: dict[str, dict[str, Any]] = {
    "geometry": {"size": 48, "views": 30},
    "phantoms": {"kind": "ellipsoids", "seed": 0},
    "model": {"n_iter": 5, "base": 8, "depth": 2},
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


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(payload))
    elif not args.quiet:
        print(text)


def simulate(args: argparse.Namespace) -> int:
    from .data import random_ellipsoids, shepp_logan_3d, voxelize
    from .files import save_measurements
    from .ops import cone_project
    from .physics.presets import standard_cone_beam

    g = standard_cone_beam(args.size, args.views, scan="short" if args.short_scan else "full")
    radius = 0.45 * args.size
    ell = shepp_logan_3d(radius) if args.phantom == "shepp-logan" else random_ellipsoids(10, radius, seed=args.seed)
    x = voxelize(ell, g.vol_shape, supersample=2)[None, None]
    y = cone_project(x, g)
    y = y + args.noise * float(y.max()) * torch.randn(y.shape, generator=torch.Generator().manual_seed(args.seed))
    save_measurements(args.out, y, g, x_true=x, meta={"phantom": args.phantom, "noise": args.noise})
    _emit(args, {"out": args.out, "sino_shape": list(y.shape)}, f"wrote {args.out}: measurements {tuple(y.shape)}")
    return 0


def fit_normal(args: argparse.Namespace) -> int:
    from .files import load_measurements
    from .normal import DiagCirculantWrapper
    from .physics import ConeBeamCT

    _, g, _, _ = load_measurements(args.measurements)
    physics = ConeBeamCT(g, normalize=True)
    w = DiagCirculantWrapper(physics, g.vol_shape)
    hist = w.fit(n_iter=args.iters, lr=args.lr, progress=not (args.quiet or args.json))
    err = w.relative_error()
    w.save(args.out)
    _emit(args, {"out": args.out, "relative_error": err, "first_batch_error": hist[0]},
          f"wrote {args.out}: relative error of H {err:.4f} (started at {hist[0]:.4f})")
    return 0


def build_model(config: dict[str, Any], img_shape) -> torch.nn.Module:
    """The PartitionedReconstructor described by a ``train`` configuration."""
    from .models import UNet3D, UnrolledPGD
    from .partition import PartitionedReconstructor

    m, p = config["model"], config["partition"]
    model = UnrolledPGD(UNet3D(base=int(m["base"]), depth=int(m["depth"])), n_iter=int(m["n_iter"]), step_size=1.0)
    return PartitionedReconstructor(model, img_shape, (int(p["patch"]),) * 3)


def reconstruct(args: argparse.Namespace) -> int:
    from .files import load_measurements, load_model, save_volume
    from .metrics import psnr
    from .normal import DiagCirculantWrapper
    from .physics import ConeBeamCT

    device = _device(args.device)
    y, g, x_true, _ = load_measurements(args.measurements)
    physics = ConeBeamCT(g, normalize=args.method == "unrolled", device=device)
    y = y.to(device)
    t0 = time.perf_counter()
    if args.method == "fdk":
        x = physics.A_dagger(y if not physics.normalize else y / float(physics.operator_norm))
    else:
        if args.weights is None:
            raise ValueError("--method unrolled needs --weights (a model file written by `unrolled3d train`)")
        state, config = load_model(args.weights)
        rec = build_model(config, g.vol_shape)
        if args.patch_size is not None:
            if any(args.patch_size > n for n in g.vol_shape):
                raise ValueError(f"--patch-size {args.patch_size} is larger than the volume {g.vol_shape}")
            rec = type(rec)(rec.base, g.vol_shape, (args.patch_size,) * 3)
        rec.load_state_dict(state)
        rec.to(device).eval()
        target = physics
        if args.normal is not None:
            target = DiagCirculantWrapper(physics, g.vol_shape, device=device).load(args.normal)
        with torch.no_grad():
            x = rec(y / float(physics.operator_norm), target)
    seconds = time.perf_counter() - t0
    save_volume(args.out, x[0, 0], g.voxel_size)
    payload = {"out": args.out, "seconds": round(seconds, 3), "method": args.method}
    if x_true is not None:
        payload["psnr"] = psnr(x.cpu(), x_true)
    _emit(args, payload, f"wrote {args.out} ({args.method}, {seconds:.1f} s"
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
    from .data.datasets import PhantomDataset
    from .files import save_model
    from .physics import ConeBeamCT
    from .physics.presets import standard_cone_beam
    from .train import TrainConfig, train

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
    _emit(args, {"model": str(model_path), "steps": log["step"], "final_loss": log["losses"][-1]},
          f"wrote {model_path} after {log['step']} steps (last loss {log['losses'][-1]:.3e})")
    return 0
