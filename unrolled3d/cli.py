"""The ``unrolled3d`` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from .demo import as_dict, result_table, run_demo

    size, views, sparse = (32, 60, 20) if args.quick else (args.size, args.views, args.sparse_views)
    t0 = time.perf_counter()
    result = run_demo(size=size, n_views=views, n_views_sparse=sparse, noise=args.noise, out=args.out,
                      seed=args.seed, progress=not (args.quiet or args.json))
    elapsed = time.perf_counter() - t0
    if args.json:
        print(json.dumps({**as_dict(result), "wall_seconds": round(elapsed, 2)}))
    elif not args.quiet:
        print(result_table(result))
        print(f"demo finished in {elapsed:.1f} s")
    return 0


def _info(args: argparse.Namespace) -> int:
    from . import __version__, backends

    info = {"version": __version__, **backends()}
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:18s} {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unrolled3d", description="Memory-efficient unrolled reconstruction of large 3D volumes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--quiet", action="store_true", help="print nothing but errors")
        p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")

    p = sub.add_parser("demo", help="simulate a cone-beam scan of a phantom and reconstruct it (CPU, no downloads)")
    p.add_argument("--size", type=int, default=128, help="volume edge in voxels (default 128)")
    p.add_argument("--views", type=int, default=180, help="views of the dense scan (default 180)")
    p.add_argument("--sparse-views", type=int, default=30, help="views of the sparse scan (default 30)")
    p.add_argument("--noise", type=float, default=0.01, help="Gaussian noise relative to the largest line integral")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="unrolled3d_demo.png", help="PNG of orthogonal slices (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="a tiny run (32^3) for smoke tests")
    common(p)
    p.set_defaults(func=_demo)

    from . import cli_commands as cc

    p = sub.add_parser("simulate", help="phantom + standard cone-beam scan -> measurements file (.pt)")
    p.add_argument("--phantom", choices=["shepp-logan", "ellipsoids"], default="shepp-logan")
    p.add_argument("--size", type=int, default=64, help="volume edge in voxels")
    p.add_argument("--views", type=int, default=30)
    p.add_argument("--short-scan", action="store_true")
    p.add_argument("--noise", type=float, default=0.01, help="Gaussian noise relative to the largest line integral")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="measurements file (.pt)")
    common(p)
    p.set_defaults(func=cc.simulate)

    p = sub.add_parser("fit-normal", help="fit and save the diagonal-circulant H for a measurement file's geometry")
    p.add_argument("measurements", help="file written by `unrolled3d simulate`")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--out", required=True, help="operator file (.pt)")
    common(p)
    p.set_defaults(func=cc.fit_normal)

    p = sub.add_parser("train", help="train a partitioned unrolled network from a TOML config (resumable)")
    p.add_argument("config", help="TOML file; sections [geometry] [phantoms] [model] [partition] [train]")
    p.add_argument("--out-dir", required=True, help="checkpoints and model.pt go here")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out-dir")
    common(p)
    p.set_defaults(func=cc.train_cmd)

    p = sub.add_parser("reconstruct", help="measurements -> volume (.npy or .pt): FDK or partitioned unrolled")
    p.add_argument("measurements")
    p.add_argument("--method", choices=["fdk", "unrolled"], default="fdk")
    p.add_argument("--weights", help="model file written by `unrolled3d train` (method unrolled)")
    p.add_argument("--patch-size", type=int, help="override the model's patch edge")
    p.add_argument("--normal", help="operator file from `unrolled3d fit-normal`: use H on the patches")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    common(p)
    p.set_defaults(func=cc.reconstruct)

    p = sub.add_parser("info", help="which backends (C++ CPU, CUDA, Triton) this installation has, and why not")
    common(p)
    p.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError) as exc:
        print(f"unrolled3d {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
