"""Reconstruction quality on held-out phantoms, sparse-view cone beam (issue: partitioned unrolled).

FDK vs full unrolled vs partitioned unrolled (exact patch operator) vs partitioned unrolled with
the fitted diagonal-circulant H, all with the same UnrolledPGD (K=5, one UNet3D base 8 per
iteration) and the same short training budget (``--steps`` steps of one random-ellipsoid volume
each, Adam, cosine learning rate from ``--lr``). The noise is Gaussian on the normalised
measurements ``A x / ||A||`` (``--noise``). FDK is reported with the ramp (Ram-Lak) filter and,
as a fairer noise-suppressing baseline, with a Hann window. PSNR over the whole volume with the
truth's range as peak; SSIM with an 11-tap Gaussian window (``unrolled3d.metrics``).
Writes bench/results/quality_cbct.json.

Run: ``.venv/bin/python bench/experiments/quality_cbct.py --size 32 --patch 16 --steps 800``
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from unrolled3d.data.datasets import PhantomDataset
from unrolled3d.io import atomic_path
from unrolled3d.metrics import psnr, ssim
from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.normal import DiagCirculantWrapper
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.io import load_model
from unrolled3d.physics import ConeBeamCT, ConeBeamGeometry
from unrolled3d.physics.presets import standard_cone_beam
from unrolled3d.train import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--patch", type=int, default=24)
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--noise", type=float, default=0.02, help="Gaussian noise std on normalised measurements")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="train only these cases (keys of the cases table)")
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--geometry", choices=["bench", "standard"], default="bench",
                    help="bench: n x 1.25n detector; standard: standard_cone_beam (the demo's scan)")
    ap.add_argument("--exact-weights", help="model file from `unrolled3d train` (same scan and settings) used "
                                            "for the exact case instead of training it again")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "quality_cbct.json"))
    ap.add_argument("--merge", action="store_true",
                    help="keep the methods already in --out (same problem settings required) and add or replace "
                         "the ones trained now, so cases run at different times land in one table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals slow CPU convolutions several-fold
    n, p = args.size, args.patch
    if args.geometry == "standard":
        g = standard_cone_beam(n, args.views)
    else:
        g = ConeBeamGeometry.circular(args.views, 4.0 * n, 2.0 * n, (n, int(1.25 * n)), 1.5, (n, n, n))
    physics = ConeBeamCT(g, normalize=True)
    # as `unrolled3d train` draws them (the shipped demo weights were trained on this set)
    train_set = PhantomDataset(100_000, (n, n, n), seed=0)
    test_set = PhantomDataset(args.n_test, (n, n, n), seed=999)  # held out: another seed
    gen = torch.Generator().manual_seed(123)
    tests = []
    for i in range(args.n_test):
        x = test_set[i][None]
        y = physics.A(x) + args.noise * torch.randn(physics.A(x).shape, generator=gen)
        tests.append((x, y))

    normal, h_err, fit_s, fit_hist = None, None, None, [None]
    if not args.only or "partitioned (H)" in args.only:
        t0 = time.perf_counter()
        normal = DiagCirculantWrapper(physics, (n, n, n))
        fit_hist = normal.fit(n_iter=150, lr=1e-2, progress=False)
        fit_s = time.perf_counter() - t0
        h_err = normal.relative_error()

    results = {"config": vars(args), "H_relative_error": h_err, "H_fit_seconds": fit_s,
               "H_fit_first_last": [fit_hist[0], fit_hist[-1]], "methods": {}}
    for name, window in (("FDK", "ram-lak"), ("FDK (Hann window)", "hann")):
        recs = [physics.A_dagger(y, window=window) for _, y in tests]
        results["methods"][name] = {"psnr": [psnr(r, x) for r, (x, _) in zip(recs, tests)],
                                    "ssim": [ssim(r, x) for r, (x, _) in zip(recs, tests)]}
    cases = {
        "full unrolled": dict(patch=(n, n, n), physics=physics),
        "partitioned (exact A S^T)": dict(patch=(p, p, p), physics=physics),
        "partitioned (H)": dict(patch=(p, p, p), physics=normal),
    }
    for name, case in cases.items():
        if args.only and name not in args.only:
            continue
        torch.manual_seed(0)
        model = UnrolledPGD(UNet3D(base=8, depth=2), n_iter=5, step_size=1.0, shared=False)
        rec = PartitionedReconstructor(model, (n, n, n), case["patch"], n_sweeps=2)
        cfg = TrainConfig(steps=args.steps, lr=args.lr, seed=0, noise_std=args.noise, progress=False)
        if args.exact_weights and name == "partitioned (exact A S^T)":
            state, config = load_model(args.exact_weights)
            trained = (config["geometry"]["size"], config["geometry"]["views"], config["partition"]["patch"],
                       config["train"]["steps"], config["train"]["lr"], config["train"]["noise_std"],
                       config["model"]["shared"])
            if trained != (n, args.views, p, args.steps, args.lr, args.noise, False) or args.geometry != "standard":
                raise SystemExit(f"--exact-weights were trained on other settings: {trained}")
            rec.load_state_dict(state)
            log, train_s = {"losses": [float("nan")] * 2}, float("nan")
            results["exact_weights"] = {"file": args.exact_weights, "command": config["command"]}
        else:
            t0 = time.perf_counter()
            log = train(rec, case["physics"], train_set, cfg)
            train_s = time.perf_counter() - t0
        with torch.no_grad():
            t0 = time.perf_counter()
            recs = [rec(y, case["physics"]) for _, y in tests]
            infer_s = (time.perf_counter() - t0) / len(tests)
        scores = [psnr(r, x) for r, (x, _) in zip(recs, tests)]
        results["methods"][name] = {"psnr": scores, "ssim": [ssim(r, x) for r, (x, _) in zip(recs, tests)],
                                    "train_seconds": train_s, "inference_seconds": infer_s,
                                    "loss_first_last": [log["losses"][0], log["losses"][-1]]}
        print(f"{name}: PSNR {sum(scores) / len(scores):.2f} dB (train {train_s:.0f} s)", flush=True)
    # read only now, so that a run started earlier in parallel and finished since is merged too
    earlier = _earlier_results(args) if args.merge else None
    if earlier is not None:
        # the FDK scores pin down the held-out volumes and their noise: equal scores, same test set
        for name in ("FDK", "FDK (Hann window)"):
            # (to 1e-6 dB: another thread count may change the last bits of the FDK sums)
            if any(abs(a - b) > 1e-6 for a, b in zip(earlier["methods"][name]["psnr"],
                                                      results["methods"][name]["psnr"], strict=True)):
                raise SystemExit(f"--merge: {args.out} was scored on other test data ({name} PSNR differs)")
        runs = earlier.get("runs", [{"config": earlier["config"], "methods": sorted(
            m for m in earlier["methods"] if not m.startswith("FDK"))}])
        if args.only is not None and "partitioned (H)" not in args.only:
            # the H model in the table is the earlier run's: keep the fit it was trained with
            for key in ("H_relative_error", "H_fit_seconds", "H_fit_first_last"):
                results[key] = earlier[key]
        if "exact_weights" in earlier and not args.exact_weights:
            results["exact_weights"] = earlier["exact_weights"]
        results["methods"] = {**earlier["methods"], **results["methods"]}
        results["runs"] = runs + [{"config": vars(args), "methods": sorted(
            m for m in cases if not args.only or m in args.only)}]

    for name, r in results["methods"].items():
        r["mean_psnr"] = sum(r["psnr"]) / len(r["psnr"])
        r["mean_ssim"] = sum(r["ssim"]) / len(r["ssim"])
    print(json.dumps({k: round(v["mean_psnr"], 2) for k, v in results["methods"].items()}))
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(results, indent=1))


# settings that define the problem and the training budget: runs merged into one table must share them
_PROBLEM_KEYS = ("size", "patch", "views", "steps", "noise", "lr", "n_test", "geometry")


def _earlier_results(args: argparse.Namespace) -> dict | None:
    """The results already in ``args.out``, checked to be for the same problem; None if absent."""
    out = Path(args.out)
    if not out.exists():
        return None
    earlier = json.loads(out.read_text())
    now = vars(args)
    differ = [k for k in _PROBLEM_KEYS if earlier["config"].get(k) != now[k]]
    if differ:
        raise SystemExit(f"--merge: {out} has other settings for {differ}; refusing to mix them in one table")
    return earlier


if __name__ == "__main__":
    main()
