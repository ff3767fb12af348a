"""Inference knobs of the shipped CT model on one held-out real volume (issue 27).

The same noisy scan (``standard_cone_beam(size, 30)``, held-out noise seed 123, noise as the
model's recipe) reconstructed with FDK (Hann, Ram-Lak) and with ``heads_ct.pt`` under several
``patch,stride,sweeps,amp,batch`` settings (``whole`` = the volume's edge; ``amp`` 1 = bfloat16
network), each once, PSNR and the process's CPU time (``time.process_time``: a wait for a core
does not count) printed one line each. The defaults of :func:`unrolled3d.budget.plan_inference`
were chosen from these lines (``bench/results/inference_knobs_96.log``)::

    OMP_NUM_THREADS=1 python bench/experiments/inference_knobs.py --vol colin27.npy \\
        --configs "24,12,2,0,1;48,24,2,0,1;64,48,1,1,1;whole,whole,1,1,1"
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from unrolled3d.bench.experiments.quality_real import held_out_volume
from unrolled3d.data import IntensityNormalization
from unrolled3d.io import load_model
from unrolled3d.metrics import psnr
from unrolled3d.models import build_model
from unrolled3d.physics import ConeBeamCT, standard_cone_beam

WEIGHTS = Path(__file__).resolve().parents[2] / "unrolled3d" / "weights" / "heads_ct.pt"


def _timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vol", required=True, help="held-out volume (.npy of bench/experiments/real_volumes.py)")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--configs", default="24,12,2,0,1;whole,whole,1,1,1",
                    help="';'-separated patch,stride,sweeps,amp,batch settings")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the quality bench: denormals slow CPU convolutions
    state, config = load_model(WEIGHTS)
    n = args.size
    x = held_out_volume(args.vol, n, 1, IntensityNormalization("percentile", percentile=99.5, value=1.0))
    peak = float(x.max() - x.min())
    physics = ConeBeamCT(standard_cone_beam(n, 30), normalize=True)
    y = physics.A(x)
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(args.seed))
    y = y + float(config["train"]["noise_std"]) * noise
    with torch.no_grad():
        for window in ("hann", "ram-lak"):
            x0, c, w = _timed(lambda: physics.A_dagger(y, window=window))
            print(f"FDK {window}: {psnr(x0, x, peak):.2f} dB cpu {c:.2f}s wall {w:.2f}s", flush=True)
        for spec in args.configs.split(";"):
            p, s, sweeps, amp, batch = spec.split(",")
            patch = n if p == "whole" else int(p)
            stride = patch if s == "whole" else int(s)
            rec = build_model(config, (n, n, n), patch=patch)
            rec.load_state_dict(state)
            rec = type(rec)(rec.eval().base, rec.img_shape, (patch,) * 3, stride=(stride,) * 3, n_sweeps=int(sweeps),
                            patch_batch_size=int(batch))
            rec.base.amp = bool(int(amp))
            xh, c, w = _timed(lambda: rec(y, physics))
            print(f"patch {patch} stride {stride} sweeps {sweeps} amp {amp} batch {batch}: "
                  f"{psnr(xh, x, peak):.2f} dB cpu {c:.1f}s wall {w:.1f}s", flush=True)


if __name__ == "__main__":
    main()
