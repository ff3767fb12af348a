"""The classical baselines of the quality bench, on the bench's scan (``standard_cone_beam``, a
normalised ``ConeBeamCT``):

- :class:`TVPGD`: the paper's TV baseline, ``min_x 1/2 ||A x - y||^2 + lambda TV(x)`` by deepinv's
  proximal gradient descent (``deepinv.optim.PGD``) with its isotropic 3D TV prior
  (``deepinv.optim.prior.TVPrior``: the prox by Condat's primal-dual iterations, warm-started from
  one outer iteration to the next), on our physics, from the FDK (Hann) start;
- :class:`MbirjaxPeer`: model-based iterative reconstruction by mbirjax (qGGMRF prior), a peer run
  in its own virtual environment (``peers/mbirjax_recon.py``) and matched to our scan.

Matching the scan (mbirjax 0.7.3's ``ConeBeamModel``: flat detector, source at ``+y`` at
``source_iso_dist``, an object point ``(x~, y~, z)`` seen at angle ``t`` at ``x = cos t x~ - sin t
y~``, ``y = sin t x~ + cos t y~``, detector channel along ``x``, row along ``z``; volume indices
``(i, j, k)`` along ``(y~, x~, z)``). Our circular scan at angle ``a`` has its source at ``sod (sin a,
-cos a, 0)`` and detector columns along ``(cos a, sin a, 0)``: in the source's frame the two agree
with ``x~ = x``, ``y~ = -y``, ``t = a`` (our frame is the mirror image of mbirjax's). So our volume
``[z, y, x]`` is mbirjax's ``[n-1-y, x, z]``, and the sinograms ``[views, rows, cols]`` are the
same arrays. Units: mbirjax's length unit is our millimetre (``delta_voxel = 1``), its projections
are line integrals like ours before the normalisation, so measurements go to it multiplied by
``||A||`` (``physics.operator_norm``). ``MbirjaxPeer.relative_difference`` checks the match on a
volume (one forward projection each).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from unrolled3d.physics import ConeBeamCT

PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "mbirjax_recon.py"


class TVPGD:
    """TV-regularised least squares by deepinv's PGD (step 1: ``||A|| = 1`` for a normalised physics).

    ``inner`` is the number of primal-dual iterations of each TV prox (warm-started, so the prox
    sharpens as the outer iterations go on).
    """

    def __init__(self, lam: float, inner: int = 20) -> None:
        if not lam > 0:
            raise ValueError(f"lam must be positive, got {lam!r}")
        self.lam, self.inner = float(lam), int(inner)

    def run(self, y: torch.Tensor, physics: ConeBeamCT, x0: torch.Tensor,
            checkpoints: Sequence[int]) -> dict[int, torch.Tensor]:
        """The estimates after each number of iterations in ``checkpoints`` (one run, continued)."""
        from deepinv.optim import PGD
        from deepinv.optim.data_fidelity import L2
        from deepinv.optim.prior import TVPrior

        prior = TVPrior(n_it_max=self.inner)  # one prior for the run: its warm start carries over
        out, x, done = {}, x0, 0
        for k in sorted(set(int(c) for c in checkpoints)):
            # PGD keeps no state but the iterate (and the prior's warm start): runs continued from
            # the last iterate are the single long run
            pgd = PGD(data_fidelity=L2(), prior=prior, lambda_reg=self.lam, stepsize=1.0, max_iter=k - done,
                      early_stop=False)
            with torch.no_grad():
                x = pgd(y, physics, init=x)
            out[k], done = x.clone(), k
        return out


def volume_to_mbirjax(x: torch.Tensor) -> np.ndarray:
    """Our ``[1, 1, D, H, W]`` (z, y, x) volume as mbirjax's ``(rows, cols, slices)`` = ``(-y, x, z)``."""
    v = x[0, 0].detach().cpu().numpy().astype(np.float32)
    return np.ascontiguousarray(np.flip(v, axis=1).transpose(1, 2, 0))


def volume_from_mbirjax(v: np.ndarray) -> torch.Tensor:
    """The inverse of :func:`volume_to_mbirjax`: a ``[1, 1, D, H, W]`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(v).transpose(2, 0, 1)[:, ::-1, :]))[None, None].float()


class MbirjaxPeer:
    """mbirjax in its own interpreter (``python``: the ``bin/python`` of its virtual environment).

    One thread by default: the peer is pinned to one CPU and XLA to one intra-op thread.
    ``cpu_seconds`` of each call is the peer process's CPU time.
    """

    def __init__(self, python: str, threads: int = 1) -> None:
        if not Path(python).is_file():
            raise FileNotFoundError(f"no mbirjax interpreter at {python}: run bench/experiments/peers/setup_mbirjax.sh")
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS=str(threads),
                   XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if threads == 1 else "")
        self.proc = subprocess.Popen([python, str(PEER_SCRIPT), "--threads", str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.info = self._answer()
        self.tmp = tempfile.TemporaryDirectory(prefix="u3d_mbirjax_")
        self.scale = 1.0

    def _answer(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the mbirjax peer stopped (exit code {self.proc.wait()})")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"mbirjax peer: {answer.get('error')}")
        return answer

    def _call(self, **command: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def set_scan(self, physics: ConeBeamCT, use_ror_mask: bool = True) -> dict[str, Any]:
        """Our scan (a circular ``standard_cone_beam``, normalised or not) as mbirjax's model."""
        g = physics.geometry
        vec = np.asarray(g.vectors)
        sod = float(np.linalg.norm(vec[0, 0:3]))
        sdd = sod + float(np.linalg.norm(vec[0, 3:6]))
        angles = np.arctan2(vec[:, 0], -vec[:, 1])  # our source at sod (sin a, -cos a, 0)
        pitch = float(np.linalg.norm(vec[0, 6:9]))
        self.shape = tuple(int(s) for s in g.vol_shape)
        self.scale = float(physics.operator_norm) if physics.normalize else 1.0
        return self._call(cmd="geometry", sinogram_shape=[len(angles), *g.det_shape], angles=angles.tolist(),
                          source_iso_dist=sod, source_detector_dist=sdd, delta_det=pitch,
                          recon_shape=list(self.shape), use_ror_mask=use_ror_mask)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """mbirjax's forward projection of our volume, as our raw (not normalised) measurements."""
        src, out = Path(self.tmp.name) / "x.npy", Path(self.tmp.name) / "p.npy"
        np.save(src, volume_to_mbirjax(x))
        self._call(cmd="project", volume=str(src), out=str(out))
        return torch.from_numpy(np.load(out))[None, None]

    def relative_difference(self, x: torch.Tensor, physics: ConeBeamCT) -> float:
        """``||P_mbirjax x - A x|| / ||A x||`` with our raw operator (the check of the matched scan)."""
        ours = physics.A(x) * self.scale
        return float(torch.linalg.vector_norm(self.project(x) - ours) / torch.linalg.vector_norm(ours))

    def recon(self, y: torch.Tensor, snr_db: float | None, sharpness: float | None, max_iterations: int = 15,
              seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
        """MBIR of our (normalised) measurements ``y``; ``None`` parameters are mbirjax's defaults."""
        src, out = Path(self.tmp.name) / "y.npy", Path(self.tmp.name) / "r.npy"
        np.save(src, (y[0, 0] * self.scale).detach().cpu().numpy().astype(np.float32))
        t0 = time.perf_counter()
        answer = self._call(cmd="recon", sinogram=str(src), out=str(out), snr_db=snr_db, sharpness=sharpness,
                            max_iterations=max_iterations, seed=seed)
        answer["round_trip_s"] = time.perf_counter() - t0
        return volume_from_mbirjax(np.load(out)), answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        self.tmp.cleanup()

    def __enter__(self) -> "MbirjaxPeer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
