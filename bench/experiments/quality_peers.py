r"""Classical peers in the quality bench (issue 28): MBIR (mbirjax) and TV beside FDK and the unrolled models.

The problem is ``quality_real.py``'s: each volume file resampled to fit a ``--size``^3 cube and
normalised (99.5th percentile -> ``--peak``), scanned by ``standard_cone_beam(size, views)``
(normalised ``ConeBeamCT``) with Gaussian noise ``--noise`` on the normalised measurements; the
held-out (``--test``) measurements use ``quality_real.py``'s noise draws (generator seed 123, in file
order), so at the same size, views, noise and files its FDK figures are the same to the bit (checked
against ``--reference`` when given). Scores: PSNR and SSIM over the whole volume and the central slab.

The peers' parameters are chosen on the **validation** volumes (``--val``: other files than the
held-out ones, with their own noise draws, seed 321), never on the held-out ones, at each view count:

- **MBIR** (mbirjax 0.7.3 in its own environment, ``peers/setup_mbirjax.sh``; projector matched to
  ours, see ``baselines.py``: the relative difference of one forward projection is recorded; no
  region-of-reconstruction mask, see ``projector_match``): a grid
  of ``--snr-db`` x ``--sharpness``; the defaults (30 dB, sharpness 1: what a new user gets) are
  scored on the held-out volumes too. ``--snr-db`` values are offsets from the SNR of the noise
  itself (signal RMS over the sinogram's support / noise, in dB, measured on the validation data)
  when ``--snr-relative`` is set;
- **TV**: deepinv's PGD with its 3D TV prior on our physics, from FDK (Hann): a grid of
  ``--tv-lambda`` x ``--tv-iterations`` (one run per lambda, scored at each iteration count);
- the **unrolled models** (``--models``: model files, default inference), the **post-processing
  baselines** (``--post-models``: ``train_post.py`` files, the network on the whole FDK (Hann)) and
  FDK (ram-lak, Hann) need no choice.

Times: wall and CPU seconds per volume (one thread: torch, and the peer pinned to one CPU with XLA
on one thread). ``--params-from`` takes the chosen parameters from an earlier result file (same view
counts) instead of tuning: e.g. at 96^3 with the 48^3 choice, to time the peers at scale.

Run (one view count per run, appended to ``--out``; ``nice`` and one thread: a shared machine)::

    bash bench/experiments/peers/setup_mbirjax.sh
    OMP_NUM_THREADS=1 nice -n 10 python bench/experiments/quality_peers.py --size 48 --views 30 \
        --val data/real/mni152.npy data/real/inia19.npy \
        --test data/real/colin27.npy data/real/dipy_aniso.npy data/real/catphan_cbct.npy \
        --mbirjax-python /work/.peers/mbirjax-venv/bin/python \
        --models unrolled3d/weights/heads_ct.pt unrolled3d/weights/demo_ct.pt \
        --reference bench/results/quality_real_heads_ct.json --out bench/results/quality_real_peers_48.json
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from unrolled3d.data import IntensityNormalization
from unrolled3d.io import atomic_path, load_model
from unrolled3d.models import build_model
from unrolled3d.models.ensemble import ensembled
from unrolled3d.physics import ConeBeamCT
from unrolled3d.physics.presets import standard_cone_beam

if __package__:  # imported as unrolled3d.bench.experiments.quality_peers (the tests)
    from .baselines import MbirjaxPeer, TVPGD
    from .quality_real import held_out_volume, machine, scores, summarise
    from .train_post import load_post
else:  # run as a script: this folder, bench/experiments/, is on the path
    from baselines import MbirjaxPeer, TVPGD
    from quality_real import held_out_volume, machine, scores, summarise
    from train_post import load_post

TEST_SEED, VAL_SEED = 123, 321  # quality_real.py's held-out noise draws; the validation set's own

#: settings of a run that may differ between runs appended to one file
_PER_RUN = ("views", "out", "methods", "params_from", "models", "post_models", "reference", "mbirjax_python",
            "inference", "self_ensemble")
#: settings added later, with the value files written before them had
_ADDED = {"inference": "training-patch", "score_on_val": False, "self_ensemble": ["none"]}


def noisy(physics: ConeBeamCT, volumes: list[torch.Tensor], noise: float, seed: int) -> list[torch.Tensor]:
    """Measurements of each volume with Gaussian noise, drawn in order from one generator (as
    ``quality_real.py`` draws them)."""
    gen = torch.Generator().manual_seed(seed)
    ys = []
    with torch.no_grad():
        for x in volumes:
            y = physics.A(x)
            ys.append(y + noise * torch.randn(y.shape, generator=gen))
    return ys


def snr_db_of_noise(ys: list[torch.Tensor], noise: float) -> float:
    """The data's SNR as mbirjax defines it: RMS of the measurements over their support (> 5 % of the
    largest) over the noise, in dB, averaged over the volumes."""
    values = []
    for y in ys:
        support = y.abs() > 0.05 * float(y.abs().max())
        values.append(20 * math.log10(float(y[support].pow(2).mean().sqrt()) / noise))
    return float(np.mean(values))


def score_all(run: Callable[[torch.Tensor], torch.Tensor], truths: list[torch.Tensor], ys: list[torch.Tensor],
              slab: int) -> dict[str, Any]:
    """Scores of ``run(y)`` on every volume, with its mean wall and CPU seconds per volume."""
    per, wall, cpu = [], 0.0, 0.0
    with torch.no_grad():
        for x, y in zip(truths, ys):
            t0, c0 = time.perf_counter(), time.process_time()
            x_hat = run(y)
            wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
            per.append(scores(x_hat, x, slab))
    return {**summarise(per), "seconds": wall / len(truths), "cpu_seconds": cpu / len(truths)}


# ------------------------------------------------------------------------------------------- TV
def tune_tv(physics: ConeBeamCT, vals: list[torch.Tensor], yv: list[torch.Tensor], args) -> dict[str, Any]:
    """Mean validation PSNR (whole) of every (lambda, iterations); the best of them."""
    grid: dict[str, float] = {}
    for lam in args.tv_lambda:
        per_k: dict[int, list[float]] = {k: [] for k in args.tv_iterations}
        for x, y in zip(vals, yv):
            runs = TVPGD(lam, args.tv_inner).run(y, physics, physics.A_dagger(y, window="hann"), args.tv_iterations)
            for k, x_hat in runs.items():
                per_k[k].append(scores(x_hat, x, args.slab)["psnr_whole"])
        for k, v in per_k.items():
            grid[f"{lam:g},{k}"] = float(np.mean(v))
            print(f"    TV lambda {lam:g}, {k} iterations: validation PSNR {grid[f'{lam:g},{k}']:.2f} dB", flush=True)
    best = max(grid, key=grid.get)
    lam, k = best.split(",")
    return {"grid": {"lambda": list(args.tv_lambda), "iterations": list(args.tv_iterations), "inner": args.tv_inner},
            "validation_psnr_whole": grid, "chosen": {"lambda": float(lam), "iterations": int(k)}}


def tv_runner(physics: ConeBeamCT, lam: float, iterations: int, inner: int) -> Callable[[torch.Tensor], torch.Tensor]:
    solver = TVPGD(lam, inner)
    return lambda y: solver.run(y, physics, physics.A_dagger(y, window="hann"), [iterations])[iterations]


# ------------------------------------------------------------------------------------------- MBIR
def tune_mbir(peer: MbirjaxPeer, vals: list[torch.Tensor], yv: list[torch.Tensor], args, snr0: float) -> dict[str, Any]:
    """Mean validation PSNR (whole) of every (snr_db, sharpness); the best of them."""
    snrs = [snr0 + s if args.snr_relative else s for s in args.snr_db]
    grid: dict[str, float] = {}
    for snr in snrs:
        for sharp in args.sharpness:
            psnrs = [scores(peer.recon(y, snr, sharp, args.mbir_iterations)[0], x, args.slab)["psnr_whole"]
                     for x, y in zip(vals, yv)]
            grid[f"{snr:.2f},{sharp:g}"] = float(np.mean(psnrs))
            print(f"    MBIR snr_db {snr:.2f}, sharpness {sharp:g}: validation PSNR {grid[f'{snr:.2f},{sharp:g}']:.2f} dB",
                  flush=True)
    best = max(grid, key=grid.get)
    snr, sharp = best.split(",")
    return {"grid": {"snr_db": snrs, "sharpness": list(args.sharpness), "snr_db_of_noise": snr0,
                     "relative_to_noise": bool(args.snr_relative), "max_iterations": args.mbir_iterations},
            "validation_psnr_whole": grid, "chosen": {"snr_db": float(snr), "sharpness": float(sharp)}}


def score_mbir(peer: MbirjaxPeer, truths, ys, slab: int, snr: float | None, sharp: float | None,
               iterations: int) -> dict[str, Any]:
    """Scores of mbirjax's reconstructions; CPU seconds are the peer's."""
    per, wall, cpu, its = [], 0.0, 0.0, []
    for x, y in zip(truths, ys):
        x_hat, info = peer.recon(y, snr, sharp, iterations)
        per.append(scores(x_hat, x, slab))
        wall, cpu = wall + info["round_trip_s"], cpu + info["cpu_s"]
        its.append(info.get("iterations"))
    return {**summarise(per), "seconds": wall / len(truths), "cpu_seconds": cpu / len(truths), "iterations": its,
            "snr_db": info["snr_db"], "sharpness": info["sharpness"]}


# ------------------------------------------------------------------------------------------- one view count
def run_views(views: int, args, tests, vals, earlier: dict | None, peer: MbirjaxPeer | None) -> dict[str, Any]:
    """Every method at one view count (tuned on ``vals``, scored on ``tests``)."""
    n = args.size
    physics = ConeBeamCT(standard_cone_beam(n, views), normalize=True)
    yt, yv = noisy(physics, tests, args.noise, TEST_SEED), noisy(physics, vals, args.noise, VAL_SEED)
    if args.score_on_val:  # choosing between models: the held-out volumes stay untouched
        tests, yt = vals, yv
    out: dict[str, Any] = {"methods": {}, "tuning": {}, "operator_norm": float(physics.operator_norm)}
    m = out["methods"]
    m["FDK (ram-lak)"] = score_all(lambda y: physics.A_dagger(y, window="ram-lak"), tests, yt, args.slab)
    m["FDK (Hann)"] = score_all(lambda y: physics.A_dagger(y, window="hann"), tests, yt, args.slab)
    chosen = (earlier or {}).get("tuning", {})
    if "tv" in args.methods:
        tv = {"chosen": chosen["TV"]["chosen"], "from": args.params_from} if earlier else tune_tv(physics, vals, yv, args)
        out["tuning"]["TV"] = tv
        c = tv["chosen"]
        m["TV (PGD)"] = {**score_all(tv_runner(physics, c["lambda"], c["iterations"], args.tv_inner), tests, yt, args.slab),
                         **c}
    if peer is not None:
        out["projector_match"] = projector_match(peer, physics, vals[0])
        if not earlier:
            m["MBIR (mbirjax, default parameters)"] = score_mbir(peer, tests, yt, args.slab, None, None,
                                                                 args.mbir_iterations)
        mb = ({"chosen": chosen["MBIR"]["chosen"], "from": args.params_from} if earlier
              else tune_mbir(peer, vals, yv, args, snr_db_of_noise(yv, args.noise)))
        out["tuning"]["MBIR"] = mb
        m["MBIR (mbirjax, validation-tuned)"] = score_mbir(peer, tests, yt, args.slab, mb["chosen"]["snr_db"],
                                                           mb["chosen"]["sharpness"], args.mbir_iterations)
    for path, ensemble in [(p, e) for p in args.models for e in args.self_ensemble] if "models" in args.methods else []:
        label, run, info = unrolled_model(path, n, physics, args.inference, ensemble)
        if args.inference == "planned":  # planned (untimed) before the timed runs
            with torch.no_grad():
                run(yt[0])
        m[label] = {**score_all(run, tests, yt, args.slab), **info}
    for path in args.post_models if "models" in args.methods else []:
        label, run, info = post_model(path, physics)
        m[label] = {**score_all(run, tests, yt, args.slab), **info}
    for name, r in m.items():
        print(f"  {views} views, {name}: PSNR {r['mean_psnr_whole']:.2f} dB, SSIM {r['mean_ssim_whole']:.3f}, "
              f"{r['cpu_seconds']:.1f} CPU s / volume", flush=True)
    return out


def projector_match(peer: MbirjaxPeer, physics: ConeBeamCT, x: torch.Tensor) -> dict[str, Any]:
    """Set mbirjax's scan to ours and compare one forward projection of a validation volume.

    No region-of-reconstruction mask (mbirjax's default keeps the inscribed cylinder only): a
    held-out volume (dipy's head, 1.9 % of its mass at 48^3) reaches past it, and FDK and the
    networks reconstruct the whole cube too.
    """
    peer.set_scan(physics, use_ror_mask=False)
    return {"relative_difference": peer.relative_difference(x, physics), "volume": "first validation volume",
            "use_ror_mask": False}


def unrolled_model(path: str, n: int, physics: ConeBeamCT, inference: str = "training-patch",
                   self_ensemble: str = "none") -> tuple[str, Callable, dict[str, Any]]:
    """A model file as a reconstruction with what it was trained on.

    ``inference="training-patch"``: the model's training patch, half overlap, two sweeps (the
    library's ``build_model`` default); ``"planned"``: what ``unrolled3d reconstruct`` does by
    default (:func:`unrolled3d.budget.plan_inference`: the whole volume as one patch when it fits
    the memory, the network in bfloat16 where the CPU has it natively), planned once on the first
    volume (same shape for all) and recorded in ``info["plan"]``; the planning's trial runs are not
    timed, as ``reconstruct`` does not time them. ``self_ensemble``: ``reconstruct``'s option of
    that name (the label says which, when not ``"none"``).
    """
    state, config = load_model(path)
    rec = build_model(config, (n, n, n))
    rec.load_state_dict(state)
    rec.eval()
    rec = ensembled(rec, self_ensemble)
    geo = config["geometry"]
    extra = "" if self_ensemble == "none" else f", self-ensemble {self_ensemble}"
    label = f"{Path(path).name} (unrolled, partitioned{extra})"
    info = {"weights": str(path), "trained_size": int(geo["size"]), "trained_views": int(geo["views"]),
            "trained_steps": int(config["train"]["steps"]), "patch": config["partition"]["patch"],
            "inference": inference, "self_ensemble": self_ensemble}
    if inference == "training-patch":
        return label, (lambda y: rec(y, physics)), info
    label = f"{Path(path).name} (unrolled, planned inference{extra})"
    planned: dict[str, Any] = {}

    def run(y: torch.Tensor) -> torch.Tensor:
        x0 = physics.A_dagger(y)
        if "rec" not in planned:
            from unrolled3d.budget import plan_inference

            planned["rec"], plan = plan_inference(rec, y, physics, x0)
            info["plan"] = plan.to_dict()
        return planned["rec"](y, physics, x_init=x0)

    return label, run, info


def post_model(path: str, physics: ConeBeamCT) -> tuple[str, Callable, dict[str, Any]]:
    """A post-processing baseline file (``train_post.py``) as a reconstruction: its network on the
    FDK (Hann) of the whole volume."""
    rec, config = load_post(path)
    label = f"{Path(path).name} (post-processing UNet3D on FDK Hann)"
    info = {"weights": str(path), "trained_size": int(config["geometry"]["size"]),
            "trained_views": int(config["geometry"]["views"]), "trained_steps": int(config["train"]["steps"]),
            "parameters": int(config["parameters"]), "post": config["post"]}
    return label, (lambda y: rec(y, physics)), info


# ------------------------------------------------------------------------------------------- files
def reference_check(path: str | None, args, results: dict) -> dict[str, Any] | None:
    """``quality_real.py``'s result for the same problem: our FDK (Hann) must equal its figures; then its
    post-processing baseline's scores are quoted beside ours (they are not recomputed here)."""
    if not path or "30" not in results["views"]:
        return None
    ref = json.loads(Path(path).read_text()).get("shipped", {})
    same = (ref.get("size"), ref.get("views"), ref.get("noise")) == (args.size, 30, args.noise)
    if not same or [Path(t).name for t in args.test] != json.loads(Path(path).read_text())["data"]["test"]:
        return {"file": path, "same_problem": False}
    ours = [v["psnr_whole"] for v in results["views"]["30"]["methods"]["FDK (Hann)"]["per_volume"]]
    theirs = [v["psnr_whole"] for v in ref["methods"]["FDK (Hann)"]["per_volume"]]
    diff = max(abs(a - b) for a, b in zip(ours, theirs))
    post = ref.get("post_processing") or {}
    out = {"file": path, "same_problem": diff < 1e-6, "fdk_hann_max_abs_diff_db": diff}
    if diff < 1e-6 and post.get("label") in ref["methods"]:
        out["post-processing UNet3D (quoted)"] = {**{k: v for k, v in ref["methods"][post["label"]].items()},
                                                  "weights": post.get("weights"), "steps": post.get("steps")}
    return out


def load_earlier(out: Path, config: dict) -> dict[str, Any] | None:
    """The results already in ``out``, if they are of the same problem (else refuse to mix)."""
    if not out.exists():
        return None
    earlier = json.loads(out.read_text())
    same = {k: v for k, v in config.items() if k not in _PER_RUN}
    differ = [k for k, v in same.items() if earlier["config"].get(k, _ADDED.get(k)) != v]
    if differ:
        raise SystemExit(f"{out} holds another problem (differs in {differ}): choose another --out")
    return earlier


def merged(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A view count's results run again with other ``--methods``: the methods (and tunings) of both
    runs, the new run's where both have one."""
    if old is None:
        return new
    return {**old, **new, "methods": {**old["methods"], **new["methods"]},
            "tuning": {**old.get("tuning", {}), **new["tuning"]}}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test", nargs="+", required=True, help="held-out volume files (scored)")
    ap.add_argument("--val", nargs="+", required=True, help="validation volume files (parameters chosen on them)")
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--margin", type=int, default=1)
    ap.add_argument("--views", type=int, nargs="+", default=[30, 50, 100])
    ap.add_argument("--noise", type=float, default=0.02)
    ap.add_argument("--peak", type=float, default=1.0)
    ap.add_argument("--slab", type=int, default=12)
    ap.add_argument("--methods", nargs="+", default=["tv", "mbir", "models"], choices=["tv", "mbir", "models"])
    ap.add_argument("--models", nargs="*", default=[], help="unrolled model files to score")
    ap.add_argument("--post-models", nargs="*", default=[],
                    help="post-processing baseline files (bench/experiments/train_post.py) to score")
    ap.add_argument("--inference", choices=["training-patch", "planned"], default="training-patch",
                    help="the models' inference: their training patch (half overlap, 2 sweeps) or what "
                         "`unrolled3d reconstruct` plans by default (whole volume when it fits, bfloat16 network)")
    ap.add_argument("--self-ensemble", nargs="+", choices=["none", "flips"], default=["none"],
                    help="the models' self-ensembles (reconstruct's --self-ensemble), each scored")
    ap.add_argument("--score-on-val", action="store_true",
                    help="score the methods on the --val volumes (their noise draws) instead of --test: choosing "
                         "between models without touching the held-out volumes (no tuning, no --reference)")
    ap.add_argument("--mbirjax-python", help="the python of mbirjax's environment (peers/setup_mbirjax.sh)")
    ap.add_argument("--snr-db", type=float, nargs="+", default=[-5.0, 0.0, 5.0])
    ap.add_argument("--snr-relative", action=argparse.BooleanOptionalAction, default=True,
                    help="--snr-db are offsets from the SNR of the noise (default) or absolute dB")
    ap.add_argument("--sharpness", type=float, nargs="+", default=[-1.0, -0.5, 0.0])
    ap.add_argument("--mbir-iterations", type=int, default=15, help="mbirjax's max_iterations (its default)")
    ap.add_argument("--tv-lambda", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1])
    ap.add_argument("--tv-iterations", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--tv-inner", type=int, default=20, help="primal-dual iterations of each TV prox")
    ap.add_argument("--params-from", help="a result file whose chosen parameters (same view counts) are used as they are")
    ap.add_argument("--reference", help="quality_real.py's result of the same problem (FDK checked, post-processing quoted)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if set(args.val) & set(args.test) or {Path(p).name for p in args.val} & {Path(p).name for p in args.test}:
        raise SystemExit("--val and --test must be different files: parameters are never chosen on held-out volumes")
    if args.score_on_val and (set(args.methods) - {"models"} or args.reference):
        raise SystemExit("--score-on-val scores models only (--methods models, no --reference): the peers are "
                         "tuned on --val and scored on --test")
    if "mbir" in args.methods and not args.mbirjax_python:
        raise SystemExit("MBIR needs --mbirjax-python (or leave mbir out of --methods)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    norm = IntensityNormalization("percentile", percentile=99.5, value=args.peak)
    tests = [held_out_volume(p, args.size, args.margin, norm) for p in args.test]
    vals = [held_out_volume(p, args.size, args.margin, norm) for p in args.val]
    config = {k: v for k, v in vars(args).items()}
    out = Path(args.out)
    results = load_earlier(out, config) or {
        "what": "classical peers (MBIR, TV) beside FDK and unrolled models; parameters chosen on --val only",
        "config": config, "data": {"test": [Path(p).name for p in args.test], "val": [Path(p).name for p in args.val],
                                   "scored": [Path(p).name for p in (args.val if args.score_on_val else args.test)],
                                   "normalization": norm.to_dict()}, "views": {}, "runs": []}
    chosen_from = json.loads(Path(args.params_from).read_text())["views"] if args.params_from else {}
    peer = MbirjaxPeer(args.mbirjax_python) if "mbir" in args.methods else None
    try:
        for views in args.views:
            t0 = time.perf_counter()
            results["views"][str(views)] = merged(results["views"].get(str(views)),
                                                  run_views(views, args, tests, vals, chosen_from.get(str(views)), peer))
            results["views"] = dict(sorted(results["views"].items(), key=lambda kv: int(kv[0])))
            results["runs"].append({"views": views, "config": config, "seconds": time.perf_counter() - t0,
                                    "machine": machine(), "mbirjax": peer.info if peer else None})
            results["reference"] = reference_check(args.reference, args, results) or results.get("reference")
            with atomic_path(out) as tmp:  # after every view count: a long run keeps what it has done
                tmp.write_text(json.dumps(results, indent=1))
    finally:
        if peer is not None:
            peer.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
