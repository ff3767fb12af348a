"""Partitioned inference speed (issue 14): one-patch eager vs ``torch.compile`` vs batched patches,
side by side in one run, and the peak memory of a ``deepinv.Trainer`` step with ``L_PART``.

Speed. The demo's model (``unrolled3d/weights/demo_ct.toml`` and its shipped weights:
``UnrolledPGD``, K = 5 iterations, one ``UNet3D`` (base 8, depth 2) per iteration, 24^3 patches)
on the demo's scan (``standard_cone_beam(n, 30)``, normalised), at 64^3 and 96^3. Variants:

- ``eager_b1``: one patch per network call, eager (the baseline: today's default);
- ``compile_b1``: the same with each denoiser ``torch.compile``-d (inductor, default mode);
- ``eager_b8``: ``patch_batch_size=8``, eager;
- ``compile_b8``: compiled denoisers and ``patch_batch_size=8``.

Why the denoisers and not the whole base: ``torch.compile(UnrolledPGD)`` handed to the
reconstructor guards on each patch operator's geometry (its ``vol_offset`` is a Python constant
of the traced projector call), so it recompiles for every patch position and falls back to eager
after ``torch._dynamo.config.cache_size_limit`` (8) positions; the denoisers see tensors only.

The grid is stride = patch (no overlap) with one sweep, from the FDK start given as ``x_init``,
to keep a run within minutes on the shared 2-core machine: 27 patches at 64^3, 64 at 96^3. The
demo's default (half-overlapping grid, two sweeps) solves 250 and 686 patch problems with the
same per-patch work, so the ratios carry over (the per-sweep full-volume projection is the only
cost that does not scale with the patch count, a few per cent here).

The machine is shared and noisy, so the variants run in interleaved rounds (A B C D A B C D ...)
in one process: each round's ratios are taken under the same load, and the medians of the
per-round ratios are reported with the load average (``os.getloadavg``) before each round. Both
wall time and the process's CPU time are recorded: on a machine with a load of 6-8 on 2 cores the
wall-time ratio of one round swings by 2x, the CPU-time ratio (time spent computing, not waiting
for a core) much less. One
thread (``torch.set_num_threads(1)``), so that the other core's load does not distort the ratio.
Every variant's volume is compared with the baseline's in every round (equal to float32
rounding: batched convolutions sum in another order).

Memory. One ``deepinv.Trainer`` step (epochs = 1, one volume, ``PartitionedLoss``: one 24^3
patch with ground-truth context, online measurements) of the same model at 32^3, 48^3, 64^3,
96^3, each in a fresh process (``bench/memory.py``: peak RSS growth of the second ``train()``
call, the first having set up thread pools and oneDNN primitives). ``L_PART`` should keep it
flat in the volume size: only the patch is reconstructed under autograd; what grows is the
full-size data the step must touch (the volume, its measurements and residual).

Run (about 7 + 3 min on one shared core)::

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest bench/test_bench_partition_speed.py -k test_cpu_partition_speed \
        --benchmark-json bench/results/partition_speed_cpu.json
    OMP_NUM_THREADS=1 .venv/bin/python -m pytest bench/test_bench_partition_speed.py -k test_cpu_trainer_memory \
        --benchmark-json bench/results/trainer_memory_cpu.json

``U3D_SPEED_ROUNDS`` sets the interleaved rounds (default 3).
"""
from __future__ import annotations

import functools
import os
import platform
import statistics
import time

import pytest
import torch

from memory import cpu_peak
from unrolled3d.cli.demo import DEFAULT_WEIGHTS
from unrolled3d.data import random_ellipsoids, voxelize
from unrolled3d.io import load_model
from unrolled3d.models import build_model
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT, standard_cone_beam

SPEED_SIZES = [64, 96]
MEMORY_SIZES = [32, 48, 64, 96]
VIEWS = 30
BATCH = 8
#: name -> (compiled denoisers, patch_batch_size); the first is the baseline of every ratio
VARIANTS = {"eager_b1": (False, 1), "compile_b1": (True, 1), "eager_b8": (False, BATCH), "compile_b8": (True, BATCH)}
BASELINE = "eager_b1"
ROUNDS = int(os.environ.get("U3D_SPEED_ROUNDS", "3"))
#: float32 rounding of a different summation order (batched convolutions, K = 5 iterations)
RTOL, ATOL = 1e-4, 1e-5


def machine() -> dict:
    """The machine a figure was measured on (CPU model, cores, torch, threads, load)."""
    info: dict[str, str] = {}
    try:  # a VM may show only "AMD EPYC": family and model then name the generation
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor only
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return dict(cpu=info.get("model name", platform.processor() or "unknown"), cpu_family=info.get("cpu family"), cpu_model=info.get("model"),
                logical_cpus=os.cpu_count(), torch=torch.__version__, threads=torch.get_num_threads(),
                loadavg=list(os.getloadavg()))


def _demo_model(n: int, patch_batch_size: int, compiled: bool) -> PartitionedReconstructor:
    """The demo's partitioned network with its shipped weights; the bench's grid (see the docstring)."""
    state, config = load_model(DEFAULT_WEIGHTS)
    demo = build_model(config, (n, n, n))
    demo.load_state_dict(state)
    demo.eval()
    base = demo.base
    if compiled:
        # each UNet3D compiled on its own (one graph per denoiser, shared code, batch dynamic)
        base.denoisers = torch.nn.ModuleList([torch.compile(d) for d in base.denoisers])
    p = demo.patch_shape
    return PartitionedReconstructor(base, (n, n, n), p, stride=p, n_sweeps=1, patch_batch_size=patch_batch_size)


def _scan(n: int):
    physics = ConeBeamCT(standard_cone_beam(n, VIEWS), normalize=True)
    x = voxelize(random_ellipsoids(8, radius=0.45 * n, seed=n), (n, n, n))[None, None]
    with torch.no_grad():
        y = physics.A(x)
        x0 = physics.A_dagger(y)
    return physics, x, y, x0


@pytest.mark.parametrize("n", SPEED_SIZES)
def test_cpu_partition_speed(benchmark, n):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    physics, x, y, x0 = _scan(n)
    models = {name: _demo_model(n, g, c) for name, (c, g) in VARIANTS.items()}
    warm = {}
    with torch.no_grad():
        for name, rec in models.items():  # plans, oneDNN primitives, inductor's code: not timed
            rec.prepare(physics)
            t0 = time.perf_counter()
            rec(y, physics, x_init=x0)
            warm[name] = time.perf_counter() - t0
    times = {name: [] for name in models}
    cpu_times = {name: [] for name in models}
    ratios = {name: [] for name in models}
    cpu_ratios = {name: [] for name in models}
    diffs = {name: 0.0 for name in models}
    loads = []

    def one_round():
        loads.append(os.getloadavg()[0])
        outs, secs, cpu = {}, {}, {}
        with torch.no_grad():
            for name, rec in models.items():
                t0, c0 = time.perf_counter(), time.process_time()
                outs[name] = rec(y, physics, x_init=x0)
                secs[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
        for name in models:
            times[name].append(secs[name])
            cpu_times[name].append(cpu[name])
            ratios[name].append(secs[BASELINE] / secs[name])
            cpu_ratios[name].append(cpu[BASELINE] / cpu[name])
            diffs[name] = max(diffs[name], float((outs[name] - outs[BASELINE]).abs().max()))
            torch.testing.assert_close(outs[name], outs[BASELINE], rtol=RTOL, atol=ATOL)
        return outs[BASELINE]

    benchmark.group = f"partition-speed-{n}"
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    rec = models[BASELINE]
    benchmark.extra_info.update(
        size=n, patch=list(rec.patch_shape), stride=list(rec.stride), n_sweeps=1, patches=len(rec.patches()),
        views=VIEWS, K=rec.base.n_iter, model="demo_ct (UnrolledPGD K=5, UNet3D base 8 depth 2 per iteration)",
        rounds=ROUNDS, interleaved=list(models), baseline=BASELINE,
        seconds={k: v for k, v in times.items()}, min_seconds={k: min(v) for k, v in times.items()},
        median_seconds={k: statistics.median(v) for k, v in times.items()},
        speedup_per_round={k: v for k, v in ratios.items()},
        speedup_median={k: statistics.median(v) for k, v in ratios.items()},
        speedup_of_min={k: min(times[BASELINE]) / min(v) for k, v in times.items()},
        cpu_seconds=cpu_times, median_cpu_seconds={k: statistics.median(v) for k, v in cpu_times.items()},
        cpu_speedup_per_round=cpu_ratios, cpu_speedup_median={k: statistics.median(v) for k, v in cpu_ratios.items()},
        max_abs_diff_vs_baseline=diffs, volume_max=float(x.max()), warmup_seconds=warm,
        loadavg_1min_before_each_round=loads, machine=machine(),
        note="one thread (torch.set_num_threads(1)) on a 2-core machine shared with other sessions; "
             "each round runs the variants back to back; ratios per round; cpu_* is the process's CPU "
             "time (time.process_time), which the wait for a core does not inflate")


# ----------------------------------------------------------------------------- Trainer memory
class _Volumes(torch.utils.data.Dataset):
    """Ground-truth volumes ``[C, D, H, W]`` (deepinv's datasets return ``x`` alone)."""

    def __init__(self, volumes: torch.Tensor) -> None:
        self.volumes = volumes

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.volumes[i]


def _trainer_inputs(n: int):
    import deepinv as dinv

    from unrolled3d.partition import PartitionedLoss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    physics = ConeBeamCT(standard_cone_beam(n, VIEWS), normalize=True)
    state, config = load_model(DEFAULT_WEIGHTS)
    rec = build_model(config, (n, n, n))  # the demo's model: 24^3 patches whatever the volume
    rec.load_state_dict(state)
    x = voxelize(random_ellipsoids(8, radius=0.45 * n, seed=n), (n, n, n))[None, None]  # one [C, D, H, W] item
    data = _Volumes(x)  # one volume: one step per epoch
    trainer = dinv.Trainer(
        model=rec, physics=physics, optimizer=torch.optim.Adam(rec.parameters(), lr=1e-4),
        train_dataloader=torch.utils.data.DataLoader(data, batch_size=1), epochs=1,
        losses=PartitionedLoss(torch.Generator().manual_seed(n)), metrics=[], online_measurements=True,
        compute_train_metrics=False, save_path=None, verbose=False, show_progress_bar=False,
        plot_images=False, device="cpu", non_blocking_transfers=False)
    return (trainer, x)


def _trainer_step(trainer, x) -> torch.Tensor:
    trainer.train()
    return torch.tensor(trainer.loss_history["PartitionedLoss"][-1:])


@pytest.mark.parametrize("n", MEMORY_SIZES)
def test_cpu_trainer_memory(benchmark, n):
    """Peak extra host memory of one Trainer step with L_PART (fresh process per size)."""
    mem = cpu_peak(functools.partial(_trainer_inputs, n), _trainer_step, warmup=True)
    benchmark.group = "trainer-memory"
    # the time of one step in this process (after a warm-up step), for scale only
    trainer, x = _trainer_inputs(n)
    benchmark.pedantic(_trainer_step, args=(trainer, x), rounds=1, iterations=1, warmup_rounds=1)
    patch = 24
    volume_bytes = n**3 * 4
    det = standard_cone_beam(n, VIEWS).det_shape
    benchmark.extra_info.update(
        size=n, patch=patch, views=VIEWS, K=5, batch=1, peak_extra_mib=mem["extra_bytes"] / 2**20,
        volume_mib=volume_bytes / 2**20, measurement_mib=VIEWS * det[0] * det[1] * 4 / 2**20,
        memory="second Trainer.train() (one step) in a fresh process: peak RSS growth, one thread",
        machine=machine())
