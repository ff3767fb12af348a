"""Peer benchmark: mbirjax's cone-beam forward and back projection on the CPU.

Run it with an interpreter that has mbirjax (its own venv, never a dependency of unrolled3d), e.g.
``python3 -m venv /work/venv-mbirjax && /work/venv-mbirjax/bin/pip install mbirjax``.

Two modes:

- ``python mbirjax_projector.py --n 128 --threads 1`` prints one JSON object: versions, geometry and
  the best-of-``rounds`` wall time of each direction after one warm-up call (JAX compiles then);
- ``--serve``: after the warm-up, prints a JSON header line, then reads commands on stdin, one per
  line (``forward`` or ``back``), runs that projection, and answers ``ok <wall s> <CPU s>``; ``quit`` ends.
  ``bench/test_bench_projector.py`` drives it so that pytest-benchmark times mbirjax's calls in the
  same run and with the same statistics as ours (a pipe round trip adds well under a millisecond).

The geometry matches ``bench/test_bench_projector.py::geometry(n)`` as far as mbirjax allows:
source 4n and detector 2n from the axis (source-detector 6n), an n x n detector of 1.8 mm pixels,
an n^3 volume of 1 mm voxels (``delta_voxel=1``, ``recon_shape=(n, n, n)``), n views over 360 deg,
float32. What differs: mbirjax's own projector (a separable-footprint style model, not Joseph's
method), its array layouts (volume (rows, cols, slices), sinogram (views, rows, channels)), and its
default region-of-reconstruction mask, kept here (only voxels inside the inscribed cylinder, pi/4
of the volume, are projected; ``--no-ror-mask`` projects all). Each call returns a host NumPy
array, as ours returns a tensor.

Threads: JAX's CPU backend has no public thread-count setting, so the process is pinned to the
first ``threads`` CPUs (``os.sched_setaffinity``) before mbirjax and JAX are imported; mbirjax then
picks its number of virtual CPU devices from that CPU set (``min(cpus, 2)`` in 0.7.3) and reports it
as ``jax_devices``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _setup(threads: int, n: int, ror_mask: bool):
    cpus = sorted(os.sched_getaffinity(0))
    if threads > len(cpus):
        raise ValueError(f"threads={threads} but only {len(cpus)} CPUs are available")
    os.sched_setaffinity(0, cpus[:threads])  # before JAX starts: it sizes its pools once
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # jaxlib 0.10's CPU AOT-cache loader logs an ERROR-level line per kernel when the wheel's
    # compile-machine features differ from the host's; Python exceptions still surface. Set
    # TF_CPP_MIN_LOG_LEVEL=0 to see every XLA log line again.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.filterwarnings("ignore", message="TkAgg not available")
    from importlib.metadata import version

    import mbirjax as mj  # first: it sets XLA's CPU device count before JAX starts

    import jax
    import numpy as np

    angles = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    model = mj.ConeBeamModel((n, n, n), angles, source_detector_dist=6.0 * n, source_iso_dist=4.0 * n)
    model.set_params(delta_det_channel=1.8, delta_det_row=1.8, delta_voxel=1.0, recon_shape=(n, n, n),
                     use_ror_mask=ror_mask)
    rng = np.random.default_rng(0)
    data = {"forward": rng.random((n, n, n), dtype=np.float32), "back": rng.random((n, n, n), dtype=np.float32)}
    ops = {"forward": model.forward_project, "back": model.back_project}
    info = {"peer": "mbirjax", "mbirjax": version("mbirjax"), "jax": jax.__version__,
            "jax_devices": len(jax.devices()), "n": n, "n_views": n, "threads": threads, "ror_mask": ror_mask}
    return np, ops, data, info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=128, help="volume n^3, n views of n x n")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-ror-mask", action="store_true", help="project every voxel, not only the cylinder")
    p.add_argument("--serve", action="store_true", help="answer 'forward' / 'back' commands on stdin")
    args = p.parse_args(argv)
    if args.n < 2 or args.threads < 1 or args.rounds < 1:
        raise ValueError("n must be >= 2, threads and rounds >= 1")
    np, ops, data, info = _setup(args.threads, args.n, not args.no_ror_mask)

    def call(direction: str) -> tuple[float, float]:
        """(wall, CPU) seconds of one call; CPU time sums the process's threads."""
        t0, c0 = time.perf_counter(), time.process_time()
        np.asarray(ops[direction](data[direction]))
        return time.perf_counter() - t0, time.process_time() - c0

    for direction in ops:  # warm-up: JAX compiles here
        call(direction)
    if args.serve:
        print(json.dumps(info), flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "quit":
                break
            if cmd not in ops:
                print(f"error unknown command {cmd!r}", flush=True)
                continue
            wall, cpu = call(cmd)
            print(f"ok {wall:.6f} {cpu:.6f}", flush=True)
        return 0
    for direction in ops:
        best = min(call(direction)[0] for _ in range(args.rounds))
        info[f"{direction}_s"] = best
        info[f"{direction}_gups"] = args.n**4 / best / 1e9
    info["rounds"] = args.rounds
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
