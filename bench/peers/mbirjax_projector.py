"""Peer benchmark: mbirjax's cone-beam forward and back projection on the CPU.

Run with an interpreter that has mbirjax (its own venv, never a dependency of unrolled3d):

    /work/venv-mbirjax/bin/python bench/peers/mbirjax_projector.py --n 128 --threads 1

It prints one JSON object: the mbirjax and JAX versions, the geometry, and the best-of-``rounds``
wall time of each direction after one warm-up call (which compiles the JAX functions).
``bench/test_bench_projector.py`` runs it via subprocess when ``U3D_MBIRJAX_PYTHON`` names such an
interpreter.

The geometry matches ``bench/test_bench_projector.py::geometry(n)`` as far as mbirjax allows:
source 4n mm and detector 2n mm from the axis (source-detector 6n), an n x n detector of 1.8 mm
pixels, an n^3 volume of 1 mm voxels, n views over 360 deg. What differs: mbirjax's own projector
(a separable-footprint style model, not Joseph's method), its array layouts (volume
(rows, cols, slices), sinogram (views, rows, channels)) and its default region-of-reconstruction
mask (only voxels inside the inscribed cylinder are projected; ``--no-ror-mask`` turns it off).
Threads: JAX's CPU backend has no public thread-count setting, so the process is pinned to the
first ``threads`` CPUs (``os.sched_setaffinity``) before mbirjax/JAX are imported. mbirjax then
picks its own number of virtual CPU devices from that CPU set (``min(cpus, 2)`` in 0.7.3, its
default on this 2-core machine); the count it chose is reported as ``jax_devices``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=128, help="volume n^3, n views of n x n")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-ror-mask", action="store_true", help="project every voxel, not only the cylinder")
    args = p.parse_args(argv)
    if args.n < 2 or args.threads < 1 or args.rounds < 1:
        raise ValueError("n must be >= 2, threads and rounds >= 1")

    # Must happen before jax is imported: XLA reads its flags and sizes its pools at start-up.
    cpus = sorted(os.sched_getaffinity(0))
    if args.threads > len(cpus):
        raise ValueError(f"threads={args.threads} but only {len(cpus)} CPUs are available")
    os.sched_setaffinity(0, cpus[: args.threads])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import warnings

    warnings.filterwarnings("ignore", message="TkAgg not available")
    from importlib.metadata import version

    import mbirjax as mj  # first: it sets XLA's CPU device count before JAX starts

    import jax
    import numpy as np

    n = args.n
    angles = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    model = mj.ConeBeamModel((n, n, n), angles, source_detector_dist=6.0 * n, source_iso_dist=4.0 * n)
    model.set_params(delta_det_channel=1.8, delta_det_row=1.8, delta_voxel=1.0, recon_shape=(n, n, n),
                     use_ror_mask=not args.no_ror_mask)
    rng = np.random.default_rng(0)
    vol = rng.random((n, n, n), dtype=np.float32)
    sino = rng.random((n, n, n), dtype=np.float32)

    def timed(fn, arg):
        np.asarray(fn(arg))  # warm-up: compiles
        best = float("inf")
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            np.asarray(fn(arg))  # the host copy is part of the call, as ours returns a tensor
            best = min(best, time.perf_counter() - t0)
        return best

    fwd = timed(model.forward_project, vol)
    back = timed(model.back_project, sino)
    out = {
        "peer": "mbirjax", "mbirjax": version("mbirjax"), "jax": jax.__version__,
        "jax_devices": len(jax.devices()), "n": n, "n_views": n,
        "threads": args.threads, "ror_mask": not args.no_ror_mask, "rounds": args.rounds,
        "forward_s": fwd, "back_s": back,
        "forward_gups": n**4 / fwd / 1e9, "back_gups": n**4 / back / 1e9,
    }
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
