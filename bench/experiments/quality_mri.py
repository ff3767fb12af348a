"""Reconstruction quality on held-out volumes, accelerated 3D multi-coil MRI (issues 6 and 28).

Two experiments; the second is the one that scores the shipped model.

**Phantoms** (issue 6, default; ``bench/results/quality_mri.json``). Data: complex volumes
``|x| exp(i phi)`` -- random-ellipsoid phantom magnitudes
(:class:`~unrolled3d.data.datasets.PhantomDataset`) times a random smooth phase
(:class:`~unrolled3d.data.ComplexPhantomDataset`, quadratic polynomial, range up to pi) -- made on
the fly. Acquisition: ``--coils`` birdcage coils (normalised, ``sum |S_c|^2 = 1``), a Poisson-disc
variable-density mask of acceleration ``--accel`` with the default centred calibration block
(``min(24, n/4)`` lines per phase-encode axis), complex Gaussian noise of std ``--noise`` per real
channel on the sampled k-space (training: the same std added by :func:`unrolled3d.train.train` to
all of k-space; the unsampled entries never reach a reconstruction, since ``A^H`` masks them).
Methods: zero-filled (``A^H y``), CG-SENSE (``n_iter`` and Tikhonov ``lam`` picked on 2
validation volumes of another seed, never on the test set), and a partitioned UnrolledPGD (K
iterations, one shared UNet3D on the 2 real/imaginary channels, patches ``--patch``^3, 2 sweeps at
inference) trained with ``L_PART`` on simulated k-space, once with the exact patch operator and
once with the fitted complex diagonal-circulant ``H``; the same network, seed and budget
(``--steps`` Adam steps of one volume each, peak lr ``--lr`` with a cosine decay; lr 3e-3 was
chosen over 1e-3 in a 400-step pilot scored on the validation volumes, not the test set). Test
volumes: phantom seed 999, phase seed 999; training: seed 0.

**Real heads** (issue 28, ``--test``; ``bench/results/quality_mri_heads.json``): trained MRI
model files (``--weights``, default the shipped ``unrolled3d/weights/mri_heads.pt``; with several,
the best on the validation volumes is the one scored on the held-out ones) against
zero-filled and CG-SENSE on real anatomy. Each volume file is zoomed so its longest axis spans
``size - 2 margin`` voxels, divided by its 99.5th percentile (the rule of the training files,
``real_volumes.py --training-set``) and centred in a ``size``^3 cube of air; its magnitude gets a
smooth random phase (seed per volume) and is measured by 8 birdcage coils through a Poisson-disc
mask of R ``--accel`` (seed per volume, none of the training bank's), with noise std ``--noise``
per real channel on the sampled k-space (the training noise). Choices are made on the
validation volumes (``--val``: MNI152 and INIA19, the training anatomy) only: CG-SENSE's
iterations and Tikhonov weight (grid :data:`HEAD_CG_ITERS` x :data:`HEAD_CG_LAMS`), the model file
and its inference (the whole volume as one patch, or the training patch with half overlap and two
sweeps); then the held-out volumes (``--test``: Colin 27 and dipy's head, other subjects) are
scored once, each method with its chosen settings. The model runs through the command line's
own function (:func:`unrolled3d.cli.mri.unrolled_mri`: k-space scaled from the zero-filled
image's percentile, as ``unrolled3d reconstruct`` does).

Metric: PSNR of the magnitude images, ``10 log10(max|x|^2 / mean((|x_hat| - |x|)^2))`` over every
voxel of the volume (background included), peak = the truth's maximum magnitude, per volume;
the real-heads run adds the SSIM of the magnitudes (peak as the PSNR's).

Run: ``nice -n 10 .venv/bin/python bench/experiments/quality_mri.py --size 32 --patch 16 --steps 1200``
(phantoms, one thread), and for the shipped model::

    OMP_NUM_THREADS=1 python bench/experiments/quality_mri.py --size 64 --accel 8 \
        --val data/real_mri/mni152.npy data/real_mri/inia19.npy \
        --test /work/data/real_volumes/colin27.npy /work/data/real_volumes/dipy_aniso.npy \
        --weights unrolled3d/weights/mri_heads.pt data/real_mri/runs/mri_s2/model.pt --scored-before 1

Writes its JSON atomically.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unrolled3d.cli.mri import magnitude, unrolled_mri
from unrolled3d.data import ComplexPhantomDataset, IntensityNormalization, smooth_phase
from unrolled3d.data.datasets import PhantomDataset
from unrolled3d.io import atomic_path, load_model
from unrolled3d.metrics import magnitude_psnr, ssim
from unrolled3d.models import UNet3D, UnrolledPGD, build_model
from unrolled3d.mri import (
    MultiCoilMRI3D,
    acceleration,
    birdcage_maps,
    cg_sense,
    variable_density_mask,
    zero_filled,
)
from unrolled3d.normal import DiagCirculantWrapper
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.train import TrainConfig, train

if __package__:  # imported as unrolled3d.bench.experiments.quality_mri (the tests)
    from .quality_real import centre_in_cube, zoom_to_fit
else:  # run as a script: this folder, bench/experiments/, is on the path
    from quality_real import centre_in_cube, zoom_to_fit

CG_ITERS = (5, 10, 20, 40)
CG_LAMS = (0.0, 0.01, 0.03, 0.1)
#: CG-SENSE's grid on the real heads (few iterations are a regulariser too: early stopping)
HEAD_CG_ITERS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30)
HEAD_CG_LAMS = (0.0, 0.01, 0.03, 0.1, 0.3)
ROOT = Path(__file__).resolve().parents[2]


def _volumes(n: int, count: int, seed: int) -> ComplexPhantomDataset:
    return ComplexPhantomDataset(PhantomDataset(count, (n, n, n), seed=seed), seed=seed)


def _measure(physics: MultiCoilMRI3D, x: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    y = physics.A(x)
    return y + noise * physics.mask * torch.randn(y.shape, generator=gen)  # noise on sampled k-space only


def _pick_cg(physics, val) -> tuple[int, float, dict]:
    """CG-SENSE settings with the best mean magnitude PSNR on the validation pairs."""
    table = {}
    for it, lam in itertools.product(CG_ITERS, CG_LAMS):
        scores = [magnitude_psnr(cg_sense(y, physics, n_iter=it, tol=0.0, lam=lam), x) for x, y in val]
        table[f"iters={it},lam={lam}"] = sum(scores) / len(scores)
    best = max(table, key=table.get)
    it, lam = (v.split("=")[1] for v in best.split(","))
    return int(it), float(lam), table


def run_phantoms(args: argparse.Namespace) -> None:
    """The phantom experiment (issue 6)."""
    t_start = time.perf_counter()
    n, p = args.size, args.patch
    shape = (n, n, n)
    mask = variable_density_mask(shape, args.accel, seed=0, kind="poisson")
    physics = MultiCoilMRI3D(mask, birdcage_maps(args.coils, shape))
    train_set = _volumes(n, 10_000, seed=0)
    gen = torch.Generator().manual_seed(123)
    val_set = _volumes(n, 2, seed=123)  # CG-SENSE settings are picked on these, not on the test set
    val = [(val_set[i][None], _measure(physics, val_set[i][None], args.noise, gen)) for i in range(2)]
    test_set = _volumes(n, args.n_test, seed=999)  # held out: another seed
    gen = torch.Generator().manual_seed(321)
    tests = [(test_set[i][None], _measure(physics, test_set[i][None], args.noise, gen)) for i in range(args.n_test)]

    t0 = time.perf_counter()
    normal = DiagCirculantWrapper(physics, shape)
    fit_hist = normal.fit(n_iter=args.fit_steps, lr=5e-2, progress=False)
    results = {
        "config": vars(args),
        "acceleration_measured": acceleration(mask),
        "psnr_definition": "magnitude images: 10 log10(max|x|^2 / mean((|x_hat| - |x|)^2)) over the whole volume, "
                           "peak = max |x| of the truth, per test volume",
        "H_relative_error": normal.relative_error(n_probes=2),
        "H_fit_seconds": time.perf_counter() - t0,
        "H_fit_first_last": [fit_hist[0], fit_hist[-1]],
        "methods": {},
    }
    print(f"H fitted: relative error {results['H_relative_error']:.4f} ({results['H_fit_seconds']:.0f} s)", flush=True)

    results["methods"]["zero-filled"] = {"psnr": [magnitude_psnr(zero_filled(y, physics), x) for x, y in tests]}
    it, lam, table = _pick_cg(physics, val)
    results["methods"]["CG-SENSE"] = {
        "psnr": [magnitude_psnr(cg_sense(y, physics, n_iter=it, tol=0.0, lam=lam), x) for x, y in tests],
        "n_iter": it, "lam": lam, "validation_table": table}
    print(f"CG-SENSE: iters {it}, lam {lam}", flush=True)

    cases = {"partitioned unrolled (exact A S^T)": physics, "partitioned unrolled (H)": normal}
    for name, case_physics in cases.items():
        torch.manual_seed(0)
        model = UnrolledPGD(UNet3D(in_channels=2, out_channels=2, base=args.base, depth=2), n_iter=args.iters,
                            step_size=1.0)
        rec = PartitionedReconstructor(model, shape, (p, p, p), n_sweeps=2)
        cfg = TrainConfig(steps=args.steps, lr=args.lr, seed=0, noise_std=args.noise, progress=False)
        t0 = time.perf_counter()
        log = train(rec, case_physics, train_set, cfg)
        train_s = time.perf_counter() - t0
        rec.eval()
        with torch.no_grad():
            t0 = time.perf_counter()
            scores = [magnitude_psnr(rec(y, case_physics), x) for x, y in tests]
            infer_s = (time.perf_counter() - t0) / len(tests)
        losses = log["losses"]
        results["methods"][name] = {
            "psnr": scores, "train_seconds": train_s, "inference_seconds": infer_s,
            "loss_first_last": [losses[0], losses[-1]],
            "loss_mean_first_last_50": [sum(losses[:50]) / len(losses[:50]), sum(losses[-50:]) / len(losses[-50:])]}
        print(f"{name}: PSNR {sum(scores) / len(scores):.2f} dB (train {train_s:.0f} s)", flush=True)

    for r in results["methods"].values():
        r["mean_psnr"] = sum(r["psnr"]) / len(r["psnr"])
    cg = results["methods"]["CG-SENSE"]["mean_psnr"]
    results["gain_over_cg_sense_dB"] = {k: v["mean_psnr"] - cg for k, v in results["methods"].items()}
    results["target"] = "partitioned unrolled >= CG-SENSE + 3 dB"
    results["total_seconds"] = time.perf_counter() - t_start
    print(json.dumps({k: round(v["mean_psnr"], 2) for k, v in results["methods"].items()}))
    with atomic_path(args.out or RESULTS / "quality_mri.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))


# ------------------------------------------------------------------------------ real heads (issue 28)
RESULTS = ROOT / "bench" / "results"


def head_magnitude(path: str, n: int, margin: int) -> torch.Tensor:
    """A volume file as a ``(n, n, n)`` magnitude: zoomed to span ``n - 2 margin`` voxels, divided by
    its 99.5th percentile (as ``real_volumes.py --training-set`` scales the training files) and
    centred in air."""
    vol = np.load(path).astype(np.float32)
    z = zoom_to_fit(vol, n - 2 * margin)
    z = z / np.percentile(z, 99.5)
    return torch.from_numpy(centre_in_cube(z, n))


def head_scans(paths: list[str], args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """Each file's complex truth, its acquisition (mask of its own seed) and its noisy k-space."""
    n = args.size
    maps = birdcage_maps(args.coils, (n, n, n))
    scans = []
    for k, path in enumerate(paths):
        mag = head_magnitude(path, n, args.margin)
        phase = smooth_phase((n, n, n), torch.Generator().manual_seed(seed + k), dtype=torch.float64)
        x = torch.stack([mag * phase.cos(), mag * phase.sin()]).float()[None]
        mask = variable_density_mask((n, n, n), args.accel, seed=seed + k, kind="poisson")
        physics = MultiCoilMRI3D(mask, maps)
        y = _measure(physics, x, args.noise, torch.Generator().manual_seed(seed + 100 + k))
        scans.append({"name": Path(path).stem, "x": x, "y": y, "physics": physics, "acceleration": acceleration(mask)})
    return scans


def head_scores(x_hat: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """Magnitude PSNR and SSIM (peak: the truth's largest magnitude)."""
    peak = float(magnitude(x).max())
    return {"psnr": magnitude_psnr(x_hat, x), "ssim": ssim(magnitude(x_hat), magnitude(x), peak)}


def cg_table(scans: list[dict[str, Any]]) -> dict[str, float]:
    """Mean magnitude PSNR of CG-SENSE over ``scans`` for every (iterations, lam) of the grid."""
    table = {}
    for lam in HEAD_CG_LAMS:
        for it in HEAD_CG_ITERS:
            vals = [magnitude_psnr(cg_sense(s["y"], s["physics"], n_iter=it, tol=0.0, lam=lam), s["x"]) for s in scans]
            table[f"iters={it},lam={lam}"] = float(np.mean(vals))
    return table


def load_mri_model(path: str, n: int, patch: int | None):
    """``(rec, normalisation, config)`` of an MRI model file on ``n``^3 volumes (patch: the training
    patch with half overlap and two sweeps; ``None``: chosen by the command line's plan)."""
    state, config = load_model(path)
    if config.get("mri") is None:
        raise SystemExit(f"{path} is not an MRI model (no [mri] section)")
    rec = build_model(config, (n, n, n), patch=patch)
    rec.load_state_dict(state)
    norm = IntensityNormalization.from_dict(config.get("normalization", {"kind": "attenuation"}))
    return rec.eval(), norm, config


def run_model(scans: list[dict[str, Any]], args: argparse.Namespace, weights: str, inference: str,
              self_ensemble: str = "none") -> list[dict[str, Any]]:
    """The model file ``weights`` on each scan, ``inference`` = ``"whole"`` (the command line's
    default plan) or ``"patches"`` (the training patch, half overlap, two sweeps), with the command
    line's ``--self-ensemble``; per-volume scores and times."""
    _, config = load_model(weights)
    patch = None if inference == "whole" else config["partition"]["patch"]
    out = []
    for s in scans:
        rec, norm, _ = load_mri_model(weights, args.size, patch)
        t0 = time.perf_counter()
        x_hat, info = unrolled_mri(rec, norm, s["y"], s["physics"], patch=patch, self_ensemble=self_ensemble)
        out.append({"volume": s["name"], **head_scores(x_hat, s["x"]), "seconds": time.perf_counter() - t0,
                    "scale": info["scale"], "patch": info["patch"], "sweeps": info["sweeps"]})
    return out


def _summary(per: list[dict[str, Any]]) -> dict[str, Any]:
    return {"mean_psnr": float(np.mean([p["psnr"] for p in per])), "mean_ssim": float(np.mean([p["ssim"] for p in per])),
            "per_volume": per}


def _classical(scans: list[dict[str, Any]], it: int, lam: float) -> dict[str, dict[str, Any]]:
    zf = [{"volume": s["name"], **head_scores(zero_filled(s["y"], s["physics"]), s["x"])} for s in scans]
    cg = [{"volume": s["name"], **head_scores(cg_sense(s["y"], s["physics"], n_iter=it, tol=0.0, lam=lam), s["x"])}
          for s in scans]
    return {"zero-filled": _summary(zf), "CG-SENSE": {**_summary(cg), "n_iter": it, "lam": lam}}


def run_heads(args: argparse.Namespace) -> None:
    """Settings chosen on ``--val``, then ``--test`` scored once (module docstring)."""
    t_start = time.perf_counter()
    val, test = head_scans(args.val, args, seed=2000), head_scans(args.test, args, seed=3000)
    table = cg_table(val)
    best = max(table, key=table.get)
    it, lam = int(best.split(",")[0].split("=")[1]), float(best.split(",")[1].split("=")[1])
    print(f"CG-SENSE chosen on validation: {it} iterations, lam {lam} ({table[best]:.2f} dB)", flush=True)
    # every candidate model file with each inference, on the validation volumes only
    candidates = {(w, name, e): _summary(run_model(val, args, w, name, e))
                  for w in args.weights for name in args.inferences for e in args.self_ensembles}
    weights, chosen, ensemble = max(candidates, key=lambda k: candidates[k]["mean_psnr"])
    print("validation: " + ", ".join(f"{Path(w).name} {k} {e} {v['mean_psnr']:.2f} dB"
                                     for (w, k, e), v in candidates.items())
          + f"; chosen: {Path(weights).name}, {chosen}, self-ensemble {ensemble}", flush=True)
    inference = {f"{k}, self-ensemble {e}": v for (w, k, e), v in candidates.items() if w == weights}
    validation = {**_classical(val, it, lam), "model": inference}
    held_out = _classical(test, it, lam)  # the held-out volumes: scored once, with the chosen settings
    held_out["model"] = {**_summary(run_model(test, args, weights, chosen, ensemble)), "inference": chosen,
                         "self_ensemble": ensemble}
    cg = held_out["CG-SENSE"]
    gains = [m["psnr"] - c["psnr"] for m, c in zip(held_out["model"]["per_volume"], cg["per_volume"])]
    _, config = load_model(weights)
    digests = {w: hashlib.sha256(Path(w).read_bytes()).hexdigest() for w in args.weights}
    results = {
        "experiment": "shipped MRI model vs zero-filled and CG-SENSE on real heads (issue 28, item 3)",
        "weights": {"path": str(Path(weights).resolve().relative_to(ROOT)) if Path(weights).resolve()
                    .is_relative_to(ROOT) else weights,
                    "sha256": digests[weights],
                    "config": {k: v for k, v in config.items() if k != "data_files"},
                    "training_files": [Path(p).name for p in config.get("data_files", {}).get("train", [])]},
        "scan": {"size": args.size, "coils": args.coils, "acceleration": args.accel, "mask": "poisson",
                 "noise_std_per_channel": args.noise, "margin": args.margin,
                 "acceleration_measured": {s["name"]: s["acceleration"] for s in val + test}},
        "volumes": {"validation": [Path(p).name for p in args.val], "held_out": [Path(p).name for p in args.test]},
        "psnr_definition": "magnitude images: 10 log10(max|x|^2 / mean((|x_hat| - |x|)^2)) over the whole volume, "
                           "peak = max |x| of the truth, per volume; SSIM of the magnitudes with the same peak",
        "selection": {"cg_sense_validation_table": table, "cg_sense_chosen": {"n_iter": it, "lam": lam},
                      "model_inference_chosen": chosen, "model_self_ensemble_chosen": ensemble,
                      "model_candidates": [{"file": Path(w).name, "sha256": digests[w], "inference": k,
                                            "self_ensemble": e, "validation_mean_psnr": v["mean_psnr"]}
                                           for (w, k, e), v in candidates.items()]},
        "validation": validation, "held_out": held_out,
        "gain_over_cg_sense_dB": {"mean": float(np.mean(gains)), "per_volume": dict(zip([s["name"] for s in test], gains))},
        "target": "shipped MRI model >= CG-SENSE (validation-tuned) + 3 dB on the held-out heads",
        # this run scores one model on the held-out volumes; earlier runs' scored models are counted in
        "models_scored_on_held_out": args.scored_before + 1,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "load_average": list(os.getloadavg())},
        "total_seconds": time.perf_counter() - t_start,
    }
    for name, m in held_out.items():
        print(f"held out, {name}: {m['mean_psnr']:.2f} dB ("
              + ", ".join(f"{p['volume']} {p['psnr']:.2f}" for p in m["per_volume"]) + ")", flush=True)
    print(f"gain over CG-SENSE: {results['gain_over_cg_sense_dB']['mean']:+.2f} dB", flush=True)
    with atomic_path(args.out or RESULTS / "quality_mri_heads.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--accel", type=float, default=8.0)
    ap.add_argument("--noise", type=float, default=0.01, help="noise std per real channel of sampled k-space")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (cosine schedule)")
    ap.add_argument("--iters", type=int, default=5, help="unrolled iterations K")
    ap.add_argument("--base", type=int, default=8, help="UNet3D base channels")
    ap.add_argument("--fit-steps", type=int, default=300, help="Adam steps of the H fit")
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="JSON written (default bench/results/quality_mri.json, or quality_mri_heads.json "
                                  "with --test)")
    ap.add_argument("--val", nargs="+", help="real heads: validation volume files (settings are chosen on these)")
    ap.add_argument("--test", nargs="+", help="real heads: held-out volume files (scored once)")
    ap.add_argument("--weights", nargs="+", default=[str(ROOT / "unrolled3d" / "weights" / "mri_heads.pt")],
                    help="real heads: candidate MRI model files (the best on validation is scored on --test)")
    ap.add_argument("--inferences", nargs="+", choices=["whole", "patches"], default=["whole", "patches"],
                    help="real heads: the models' inferences compared on validation")
    ap.add_argument("--self-ensembles", nargs="+", choices=["none", "flips", "flips+conj"], default=["none"],
                    help="real heads: the models' self-ensembles (reconstruct's --self-ensemble) compared on validation")
    ap.add_argument("--scored-before", type=int, default=0,
                    help="real heads: how many models earlier runs scored on the same held-out volumes")
    ap.add_argument("--margin", type=int, default=1, help="real heads: voxels of air around a head")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.test:
        if not args.val:
            ap.error("--test needs --val (the volumes the settings are chosen on)")
        run_heads(args)
    else:
        run_phantoms(args)


if __name__ == "__main__":
    main()
