"""Peer: mbirjax's model-based iterative reconstruction (qGGMRF prior), served over a pipe.

Run by ``bench/experiments/baselines.py`` with the interpreter of mbirjax's own virtual environment
(``bench/experiments/peers/setup_mbirjax.sh``; never a dependency of unrolled3d). It reads one JSON
command per line on stdin and answers one JSON line on stdout; arrays travel as ``.npy`` files, in
mbirjax's layouts (volume ``(rows, cols, slices)``, sinogram ``(views, rows, channels)``), which the
caller converts to and from ours:

- ``{"cmd": "geometry", "sinogram_shape": [V, R, C], "angles": [...], "source_iso_dist": s,
  "source_detector_dist": d, "delta_det": p, "recon_shape": [n, n, n], "use_ror_mask": bool}``:
  the scan (a ``ConeBeamModel``, compiled once and kept for later commands);
- ``{"cmd": "project", "volume": path, "out": path}``: ``forward_project`` of a volume;
- ``{"cmd": "recon", "sinogram": path, "out": path, "snr_db": x, "sharpness": y, "max_iterations":
  k, "seed": s}``: ``recon`` (``snr_db``/``sharpness`` ``null``: mbirjax's defaults, 30 dB and 1.0);
  the pixel partitions come from NumPy's global generator, seeded with ``seed`` first;
- ``{"cmd": "quit"}``.

Every answer holds ``ok``, the wall and CPU seconds of the command (CPU: this process, all its
threads) and, for ``recon``, the iterations run; an error answers ``{"ok": false, "error": ...}``.

Threads: the process is pinned to its first ``--threads`` CPUs before JAX starts (JAX's CPU backend
has no thread-count setting), as ``mbirjax_projector.py`` does.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _start(threads: int):
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[:threads])  # before JAX starts: it sizes its thread pools once
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # jaxlib's CPU AOT-cache warnings, one per kernel
    import warnings

    warnings.filterwarnings("ignore", message="TkAgg not available")
    import mbirjax as mj  # first: it sets XLA's CPU device count before JAX starts
    import numpy as np

    return mj, np


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {k: version(k) for k in ("mbirjax", "jax", "jaxlib")}


class Server:
    """The commands of the module docstring, on one mbirjax model at a time."""

    def __init__(self, mj, np) -> None:
        self.mj, self.np, self.model = mj, np, None

    def geometry(self, c: dict) -> dict:
        np = self.np
        model = self.mj.ConeBeamModel(tuple(c["sinogram_shape"]), np.asarray(c["angles"], dtype=np.float64),
                                      source_detector_dist=c["source_detector_dist"],
                                      source_iso_dist=c["source_iso_dist"])
        model.set_params(delta_det_channel=c["delta_det"], delta_det_row=c["delta_det"], delta_voxel=1.0,
                         recon_shape=tuple(c["recon_shape"]), use_ror_mask=bool(c["use_ror_mask"]), verbose=0)
        self.model, self.defaults = model, model.get_params(["snr_db", "sharpness"])
        return {}

    def project(self, c: dict) -> dict:
        sino = self.model.forward_project(self.np.load(c["volume"]))
        self.np.save(c["out"], self.np.asarray(sino, dtype=self.np.float32))
        return {}

    def recon(self, c: dict) -> dict:
        snr_db = self.defaults[0] if c.get("snr_db") is None else c["snr_db"]
        sharpness = self.defaults[1] if c.get("sharpness") is None else c["sharpness"]
        self.model.set_params(snr_db=float(snr_db), sharpness=float(sharpness), no_warning=True)
        self.np.random.seed(int(c.get("seed", 0)))
        recon, info = self.model.recon(self.np.load(c["sinogram"]), max_iterations=int(c.get("max_iterations", 15)),
                                       logfile_path=None, print_logs=False)
        self.np.save(c["out"], self.np.asarray(recon, dtype=self.np.float32))
        params = info.get("recon_params") if isinstance(info, dict) else None
        iterations = params.get("num_iterations") if isinstance(params, dict) else None
        return {"snr_db": float(snr_db), "sharpness": float(sharpness),
                "iterations": None if iterations is None else int(iterations)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    mj, np = _start(args.threads)
    server = Server(mj, np)
    out = sys.stdout
    sys.stdout = sys.stderr  # anything mbirjax prints must not break the protocol
    out.write(json.dumps({"ok": True, "peer": "mbirjax", **_versions(), "threads": args.threads}) + "\n")
    out.flush()
    for line in sys.stdin:
        c = json.loads(line)
        if c["cmd"] == "quit":
            break
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            if c["cmd"] not in ("geometry", "project", "recon"):
                raise ValueError(f"unknown command {c['cmd']!r}")
            answer = {"ok": True, **getattr(server, c["cmd"])(c)}
        except Exception as exc:  # the caller decides; the server goes on
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        answer.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
