r"""Train the post-processing baseline on the data of an ``unrolled3d train`` configuration (issue 17).

The paper's baseline is a DRUNet-3D applied to the FDK reconstruction. Here it is a residual
``UNet3D`` (``--base`` channels, ``--depth`` levels) on FDK (Hann):
:class:`unrolled3d.models.PostProcessing`, trained by the package's own
:func:`unrolled3d.train.train` on exactly the data the configuration's ``[data]`` section gives
``unrolled3d train`` (same files, normalisation, augmentation, crop and noise draws, seed, Adam,
cosine schedule; checkpoints and ``--resume`` as there). Only the steps may differ (``--steps``,
default the configuration's) and ``--patch`` (train on random blocks of the whole volume's FDK,
as the unrolled network trains on patches: memory and time per step flat in the volume's size): the comparison in ``quality_real.py --post-weights`` is at equal
*training time*, and one post-processing step costs less than one unrolled step. ``--init post.pt``
fine-tunes a baseline (same ``--base`` and ``--depth``), as ``[model] init`` does the unrolled network.

Writes ``<out-dir>/post.pt`` (``state_dict`` and the configuration as JSON; read back with
``torch.load(weights_only=True)`` by :func:`load_post`) and ``<out-dir>/post.json`` (losses, time).

Run::

    OMP_NUM_THREADS=1 python bench/experiments/train_post.py data/real/heads_b12.toml --out-dir runs/post_b12 \
        --steps 4700
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from unrolled3d.cli.commands import load_train_config
from unrolled3d.cli.train_data import build_file_data
from unrolled3d.io import atomic_path
from unrolled3d.models import PostProcessing, UNet3D
from unrolled3d.physics import ConeBeamCT, standard_cone_beam
from unrolled3d.train import TrainConfig, train

FORMAT = "unrolled3d-post-processing-1"


def build_post(base: int, depth: int, window: str = "hann", patch: int | None = None) -> PostProcessing:
    """The baseline's architecture (randomly initialised, seed 0); ``patch``: its training block."""
    torch.manual_seed(0)
    return PostProcessing(UNet3D(base=base, depth=depth, residual=True), window=window, patch=patch)


def save_post(path: Path, rec: PostProcessing, config: dict[str, Any]) -> None:
    """``rec``'s weights and ``config`` (needs ``post.base``, ``post.depth``, ``post.window``), atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "state_dict": rec.state_dict(), "config": json.dumps(config)}, tmp)


def load_post(path: str | Path) -> tuple[PostProcessing, dict[str, Any]]:
    """``(model in eval mode, configuration)`` of a file written by :func:`save_post`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a post-processing model file (format {FORMAT!r})")
    config = json.loads(state["config"])
    rec = build_post(config["post"]["base"], config["post"]["depth"], config["post"]["window"])
    rec.load_state_dict(state["state_dict"])
    return rec.eval(), config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="an `unrolled3d train` TOML with a [data] section")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the configuration's)")
    ap.add_argument("--base", type=int, default=16, help="channels of the UNet3D's first level")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--patch", type=int, default=None,
                    help="train on random patch^3 blocks of the whole volume's FDK (default: the whole volume)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", help="start from this post.pt (same --base and --depth) instead of random weights")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals slow CPU convolutions several-fold

    cfg = load_train_config(args.config)
    if "data" not in cfg:
        raise SystemExit(f"{args.config} has no [data] section: the baseline trains on files")
    size, views = cfg["geometry"]["size"], cfg["geometry"]["views"]
    dataset, _, _, norm = build_file_data(cfg["data"], size, Path(args.config).resolve().parent)
    physics = ConeBeamCT(standard_cone_beam(size, views), normalize=True)
    train_cfg = {k: v for k, v in cfg["train"].items() if k != "out_dir"}
    if args.steps is not None:
        train_cfg["steps"] = args.steps
    out = Path(args.out_dir)
    rec = build_post(args.base, args.depth, patch=args.patch)
    init = None
    if args.init is not None:  # fine-tuning, as `[model] init` for the unrolled network
        start, start_cfg = load_post(args.init)
        if (start_cfg["post"]["base"], start_cfg["post"]["depth"]) != (args.base, args.depth):
            raise SystemExit(f"--init {args.init} has base {start_cfg['post']['base']}, depth "
                             f"{start_cfg['post']['depth']}: give the same --base and --depth")
        rec.load_state_dict(start.state_dict())
        init = {"path": str(Path(args.init).resolve()), "sha256": hashlib.sha256(Path(args.init).read_bytes()).hexdigest()}
    t0 = time.perf_counter()
    log = train(rec, physics, dataset, TrainConfig(**train_cfg, out_dir=str(out / "checkpoints"), progress=True),
                resume=args.resume)
    seconds = time.perf_counter() - t0
    config = {**cfg, "train": train_cfg, "normalization": norm.to_dict(),
              "post": {"base": args.base, "depth": args.depth, "window": "hann",
                       "patch": args.patch},
              "parameters": sum(p.numel() for p in rec.parameters()), "init": init}
    save_post(out / "post.pt", rec, config)
    with atomic_path(out / "post.json") as tmp:
        tmp.write_text(json.dumps({"steps": log["step"], "seconds_this_run": seconds,
                                   "resumed_from": log["resumed_checkpoint"], "losses": log["losses"]}))
    print(f"wrote {out / 'post.pt'} after {log['step']} steps ({seconds:.0f} s this run)")


if __name__ == "__main__":
    main()
