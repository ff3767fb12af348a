"""Large volumes, fast (issue 27): the patch solve against the volume size, and inference defaults.

``test_cpu_patch_solve``: one exact patch problem (a 24^3 patch at the volume's centre, the shipped
``heads_ct.pt``, K = 5, 30 views) on volumes of 96^3 to 512^3, with the patch operator on its
detector shadow (``window``, the default) and on the whole detector (``full_detector``, the
operator before this round) side by side. The ratio of the times at 512^3 and 96^3 says whether
a patch costs what the patch costs.

``test_cpu_inference`` (needs held-out real volumes: ``U3D_REAL_VOLUMES=<folder>`` written by
``bench/experiments/real_volumes.py``): the same scan reconstructed by the old default (24^3
patches, stride 12, 2 sweeps, float32), by the new default (the inference plan of
:func:`unrolled3d.budget.plan_inference`: the whole volume as one patch when it fits, bfloat16
network where it is native), by the patched default (``patched_64``: 64^3 patches sharing a
quarter of their edge, one sweep, bfloat16 network: what the plan does on a volume too large for
one patch) and by FDK, each once, CPU time (``time.process_time``) and PSNR
recorded. Run:

    U3D_REAL_VOLUMES=/work/data/real_volumes OMP_NUM_THREADS=1 pytest bench/test_bench_scale.py \\
        --benchmark-json bench/results/scale_cpu.json
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from unrolled3d.budget import PATCHED_SWEEPS, bf16_is_native, network_precision, patched_stride, plan_inference
from unrolled3d.io import load_model
from unrolled3d.metrics import psnr
from unrolled3d.models import build_model
from unrolled3d.physics import ConeBeamCT, standard_cone_beam

from test_bench_partition_speed import machine

WEIGHTS = Path(__file__).resolve().parents[1] / "unrolled3d" / "weights" / "heads_ct.pt"
VIEWS = 30
PATCH = 24
REAL = os.environ.get("U3D_REAL_VOLUMES")
HELD_OUT = ("colin27", "dipy_aniso", "catphan_cbct")


def _model(n: int, patch: int = PATCH, stride: int | None = None, sweeps: int = 2):
    state, config = load_model(WEIGHTS)
    rec = build_model(config, (n, n, n), patch=patch)
    rec.load_state_dict(state)
    rec.eval()
    if stride is not None or sweeps != rec.n_sweeps:
        rec = type(rec)(rec.base, (n, n, n), (patch,) * 3, stride=None if stride is None else (stride,) * 3,
                        n_sweeps=sweeps)
    return rec


@pytest.mark.parametrize("operator", ["window", "full_detector"])
@pytest.mark.u3d_sizes([96, 192, 384, 512], quick=[32, 64])
def test_cpu_patch_solve(benchmark, operator, n):
    torch.set_num_threads(1)
    # the norm's value does not change the time: a known one spares the estimate on 512^3
    physics = ConeBeamCT(standard_cone_beam(n, VIEWS), normalize=True, norm=1.0)
    rec = _model(n)
    offset, shape = (n // 2 - PATCH // 2,) * 3, (PATCH,) * 3
    residual = torch.zeros((1, 1, *physics.geometry.sino_shape))
    ctx = torch.zeros((1, 1, *shape))
    op = physics.restrict(offset, shape) if operator == "window" else physics._sub_volume(offset, shape)

    def solve() -> torch.Tensor:
        with torch.no_grad():
            return rec.solve_patches(op, 1, residual, ctx, ctx, None)

    benchmark.group = f"patch-solve-{operator}"
    benchmark(solve)
    window = getattr(op, "window", None)
    benchmark.extra_info.update(
        size=n, patch=PATCH, views=VIEWS, operator=operator, K=rec.base.n_iter, model=WEIGHTS.name,
        detector=list(physics.geometry.det_shape),
        window=None if window is None else list(window.shape), machine=machine(),
        note="one 24^3 patch problem at the volume's centre (data step K times + the network K times), one thread")


def _held_out(name: str, n: int) -> torch.Tensor:
    from unrolled3d.bench.experiments.quality_real import held_out_volume
    from unrolled3d.data import IntensityNormalization

    norm = IntensityNormalization("percentile", percentile=99.5, value=1.0)  # as quality_real.py
    return held_out_volume(str(Path(REAL) / f"{name}.npy"), n, 1, norm)


@pytest.mark.skipif(REAL is None, reason="needs held-out real volumes: U3D_REAL_VOLUMES=<folder of real_volumes.py>")
@pytest.mark.parametrize("volume", HELD_OUT)
@pytest.mark.parametrize("config", ["fdk_hann", "new_default", "patched_64", "old_default"])
@pytest.mark.u3d_sizes([96, 128], quick=[48])
def test_cpu_inference(benchmark, config, volume, n):
    torch.set_num_threads(int(os.environ.get("U3D_THREADS", "1")))
    torch.set_flush_denormal(True)  # as the quality bench: denormals slow CPU convolutions
    x = _held_out(volume, n)
    _, recipe = load_model(WEIGHTS)
    physics = ConeBeamCT(standard_cone_beam(n, VIEWS), normalize=True)
    gen = torch.Generator().manual_seed(123)  # the held-out noise of quality_real.py
    with torch.no_grad():
        y = physics.A(x)
        y = y + float(recipe["train"]["noise_std"]) * torch.randn(y.shape, generator=gen)
    plan = None
    with torch.no_grad():
        if config == "fdk_hann":
            run = lambda: physics.A_dagger(y, window="hann")  # noqa: E731
        elif config == "old_default":
            rec = _model(n)
            run = lambda: rec(y, physics)  # noqa: E731
        elif config == "patched_64":
            rec = _model(n, 64, patched_stride((64,))[0], PATCHED_SWEEPS)
            rec = rec.with_base(network_precision(rec.base, bf16_is_native())[0])
            run = lambda: rec(y, physics)  # noqa: E731  (FDK counted: the reconstructor's own start)
        else:
            x0 = physics.A_dagger(y)
            rec, plan = plan_inference(_model(n), y, physics, x0)
            run = lambda: rec(y, physics, x_init=physics.A_dagger(y))  # noqa: E731  (FDK counted)
        out = {}

        def timed():
            c0, t0 = time.process_time(), time.perf_counter()
            out["x"] = run()
            out["cpu"], out["wall"] = time.process_time() - c0, time.perf_counter() - t0
            return out["x"]

        benchmark.group = f"inference-{n}-{volume}"
        benchmark.pedantic(timed, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(
        size=n, volume=volume, config=config, views=VIEWS, psnr=psnr(out["x"], x, float(x.max() - x.min())),
        cpu_seconds=out["cpu"], wall_seconds=out["wall"], plan=None if plan is None else plan.to_dict(),
        threads=torch.get_num_threads(), model=WEIGHTS.name, machine=machine(),
        note="CPU time of the process (time.process_time: a wait for a core does not count); "
             "new_default includes its FDK start point, not the plan's trial patches")
