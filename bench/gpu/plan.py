"""The GPU run, step by step: what ``bench/run_gpu.sh`` runs on a lent machine, and its checks here.

A lent GPU machine gives one command of at most 10 minutes, bare (no network, nothing of a
previous run), about 15 minutes of device time in all. So the run is one prepared plan:

* one global deadline (``DEADLINE_S`` from the start of ``run_gpu.sh``), each step under
  ``timeout -s INT -k 10`` with its own budget (never more than what is left), in order of value;
  SIGINT, not SIGTERM: pytest then ends its session and pytest-benchmark still writes the JSON of
  the cases that ran; ``pytest --timeout`` per case keeps one slow case from eating its step;
* the never-run kernels (the gather and column backprojectors) each in a process of their own: a
  sticky CUDA error voids only their own step;
* what comes back: ``run_<card>.log`` (everything the steps print) and at most 7 JSON files
  ``<step>_<card>.json``, the card's name from ``nvidia-smi`` in every name (8 files come back).

Usage::

    python3 bench/gpu/plan.py run --out "$OUT"       # on the device (bench/run_gpu.sh)
    python3 bench/gpu/plan.py check [--wheels]       # here: the plan collects, the tree fits

``check`` runs ``pytest --collect-only`` of every selection (each must select cases) and sums what
would travel to the device (tracked and untracked-not-ignored files, plus ``.whl/``): under
64 MiB. ``tests/test_gpu_plan.py`` runs the same checks in CI; ``bench/gpu/prepare.sh --check``
prints them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
#: seconds from the start of run_gpu.sh to the end of the last step (the command's limit is 600 s;
#: U3D_GPU_DEADLINE_S shortens it for a second run in what is left of a session's device time)
DEADLINE_S = int(os.environ.get("U3D_GPU_DEADLINE_S", "480"))
#: what a step needs at least to be worth starting, and what is kept back for the summary
MIN_STEP_S, RESERVE_S = 20, 10
#: the device tool's limits on what travels and what comes back
TRAVEL_LIMIT_BYTES = 64 * 2**20
MAX_JSON_FILES = 7
WHEEL_DIR = ".whl"

PYTEST = ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: a pytest selection (``args``) or a shell command (``shell``), its budget in
    seconds, the per-case pytest timeout, and whether it writes a benchmark JSON."""

    name: str
    budget_s: int
    args: tuple[str, ...] = ()
    shell: Optional[str] = None
    case_timeout_s: int = 60
    json: bool = False
    required: bool = False  # the plan stops when a required step fails

    def command(self, out: Path, card: str) -> list[str]:
        if self.shell is not None:
            return ["bash", "-c", self.shell]
        cmd = [*PYTEST, *self.args, f"--timeout={self.case_timeout_s}"]
        if self.json:
            cmd += [f"--benchmark-json={out / json_name(self.name, card)}", "--benchmark-columns=min,mean,rounds"]
        return cmd


def json_name(step: str, card: str) -> str:
    return f"{step}_{card}.json"


#: the test modules and names of the kernels that never ran on a GPU before this plan
NEW_KERNELS = "backproject_gather or column or fdk_backproject"

BUILD = ("TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 FORCE_CUDA=1 python3 -m pip install -q --no-index "
         "--no-build-isolation --no-deps -e . && python3 -m unrolled3d.cli info")

#: the plan, in order of value
STEPS: tuple[Step, ...] = (
    Step("build", 240, shell=BUILD, required=True),
    # the CUDA tests only (not the nvcc compile test nor the JIT rebuild: the build step did both);
    # a test module whose imports the machine lacks (tests/test_io_volumes.py: nibabel) must not
    # stop the collection of the others. Those of the kernels that never ran on a GPU (column and
    # gather backprojectors, FDK's backprojection) come second, in a process of their own: a sticky
    # CUDA error there cannot void the others.
    Step("tests", 80, args=("tests", "-k", f"cuda and not nvcc and not jit and not ({NEW_KERNELS})",
                            "--continue-on-collection-errors"), case_timeout_s=60),
    Step("tests_new", 50, args=("tests", "-k", f"cuda and ({NEW_KERNELS})", "--continue-on-collection-errors"),
         case_timeout_s=60),
    # forward and default backprojection against ASTRA, 256^3 and 512^3
    Step("projector", 75, args=("bench/test_bench_projector.py", "-k",
                                "test_cuda_projector and not gather and not column", "--benchmark-min-rounds=3"),
         case_timeout_s=60, json=True),
    # the exact column backprojector (never run before this plan): a process of its own
    Step("column", 45, args=("bench/test_bench_projector.py", "-k", "test_cuda_projector and column",
                             "--benchmark-min-rounds=3"), case_timeout_s=60, json=True),
    Step("fused", 30, args=("bench/test_bench_fused.py", "-k", "cuda"), case_timeout_s=30, json=True),
    Step("normal", 30, args=("bench/test_bench_normal.py", "-k", "cuda"), case_timeout_s=30, json=True),
    # the table-driven gather backprojector (never run before): a process of its own
    Step("gather", 45, args=("bench/test_bench_projector.py", "-k", "test_cuda_projector and gather",
                             "--benchmark-min-rounds=2"), case_timeout_s=60, json=True),
    # FDK (cosine weights and ramp filter in torch.fft, the backprojection in CUDA) against FDK_CUDA
    Step("fdk", 45, args=("bench/test_bench_projector.py", "-k", "test_cuda_fdk", "--benchmark-min-rounds=3"),
         case_timeout_s=60, json=True),
    # what is left: training-step and inference memory and time, full vs partitioned, to 512^3
    Step("partition", DEADLINE_S, args=("bench/test_bench_partition.py", "-k", "cuda"), case_timeout_s=120,
         json=True),
)


# --------------------------------------------------------------------------- on the device
def card_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"h100_80gb_hbm3"`` (letters, digits and ``_`` only)."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    slug = re.sub(r"^nvidia_", "", slug)
    return slug or "gpu"


def card_name() -> str:
    """The first GPU's name from ``nvidia-smi`` (``"unknown"`` when it does not answer)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown"


def _log(log, text: str, echo: bool = True) -> None:
    log.write(text + "\n")
    log.flush()
    if echo:
        print(text, flush=True)


def run(out: Path, t0: float, steps: Sequence[Step] = STEPS) -> int:
    """Run the plan into ``out``; ``t0`` is the start of ``run_gpu.sh`` (``time.time()``)."""
    out.mkdir(parents=True, exist_ok=True)
    card = card_slug(card_name())
    deadline = t0 + DEADLINE_S
    status = 0
    with open(out / f"run_{card}.log", "a") as log:
        _log(log, f"plan: card {card}, deadline in {deadline - time.time():.0f} s")
        for step in steps:
            left = deadline - time.time() - RESERVE_S
            if left < MIN_STEP_S:
                _log(log, f"== {step.name}: skipped, {left:.0f} s left")
                continue
            budget = int(min(step.budget_s, left))
            cmd = ["timeout", "-s", "INT", "-k", "10", str(budget), *step.command(out, card)]
            _log(log, f"== {step.name}: budget {budget} s: {shlex.join(cmd)}")
            start = time.time()
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            took = time.time() - start
            verdict = "timed out" if proc.returncode in (124, 137) else f"exit {proc.returncode}"
            _log(log, f"== {step.name}: {verdict} after {took:.0f} s")
            if proc.returncode != 0:
                status = 1
                if step.required:
                    _log(log, f"plan: {step.name} is required; stopping")
                    break
        _log(log, summary(out, card), echo=True)
    return status


def summary(out: Path, card: str) -> str:
    """One line per benchmark of the JSON files in ``out``: name, min time, GUPS when recorded."""
    lines = ["== summary (min s; GUPS; extra)"]
    for path in sorted(out.glob(f"*_{card}.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            lines.append(f"{path.name}: unreadable ({exc})")
            continue
        for b in data.get("benchmarks", []):
            info = b.get("extra_info", {})
            extra = " ".join(f"{k}={info[k]:.3g}" if isinstance(info[k], float) else f"{k}={info[k]}"
                             for k in ("gups", "rel_diff_vs_default", "rel_diff_vs_unrolled3d", "rel_diff_vs_twin",
                                       "max_err_inner_ball", "oom", "peak_extra_mib") if k in info)
            lines.append(f"{path.stem:>24} {b['name'][:60]:<60} {b['stats']['min']:.4g} {extra}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- here: the checks
def collect(step: Step, timeout_s: int = 900, env: Optional[dict] = None) -> tuple[int, str]:
    """``pytest --collect-only`` of a step's selection here: (cases selected, pytest's output)."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *step.args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=env)
    text = proc.stdout + proc.stderr
    # with --continue-on-collection-errors pytest exits 2 on an error but still collects the rest
    found = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", text)
    return (int(found.group(1)) if found else 0), text


def travelling_files(root: Path = ROOT, wheels: bool = True) -> list[tuple[str, int]]:
    """What the device tool sends: tracked and untracked-not-ignored files (and ``.whl/``)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, check=True).stdout.decode().split("\0")
    files = [(n, (root / n).stat().st_size) for n in names if n and (root / n).is_file()]
    if wheels and (root / WHEEL_DIR).is_dir():
        files += [(str(p.relative_to(root)), p.stat().st_size) for p in sorted((root / WHEEL_DIR).rglob("*"))
                  if p.is_file()]
    return files


def check_plan(steps: Sequence[Step] = STEPS) -> list[str]:
    """The plan's own rules (no pytest run): at most 7 JSON files, valid file names, the build
    first and required, budgets positive."""
    problems = []
    n_json = sum(s.json for s in steps)
    if n_json > MAX_JSON_FILES:
        problems.append(f"{n_json} steps write JSON, at most {MAX_JSON_FILES} files come back with the log")
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        problems.append(f"step names repeat: {names}")
    for s in steps:
        if not re.fullmatch(r"[a-z0-9_]+", s.name) or s.budget_s <= 0 or s.case_timeout_s <= 0:
            problems.append(f"step {s.name!r}: bad name or budget")
        if (s.shell is None) == (not s.args):
            problems.append(f"step {s.name!r}: exactly one of args and shell")
    if not steps or steps[0].name != "build" or not steps[0].required:
        problems.append("the first step must be the required build")
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p_run = sub.add_parser("run", help="run the plan (on the device)")
    p_run.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    p_run.add_argument("--t0", type=float, default=None, help="start of run_gpu.sh (seconds since the epoch)")
    p_check = sub.add_parser("check", help="check the plan here: collect-only, what travels")
    p_check.add_argument("--wheels", action="store_true", help="also require the wheels and the cuFFT shim")
    args = parser.parse_args(argv)
    if args.what == "run":
        return run(args.out, args.t0 if args.t0 is not None else time.time())
    problems = check_plan()
    for step in STEPS:
        if step.shell is not None:
            continue
        n, text = collect(step)
        print(f"collect {step.name:<10} {n:5d} cases  ({shlex.join(step.args)})")
        if n == 0:
            problems.append(f"step {step.name} selects nothing:\n{text[-2000:]}")
    files = travelling_files()
    total = sum(size for _, size in files)
    wheels = [(n, s) for n, s in files if n.startswith(WHEEL_DIR + "/")]
    print(f"travels: {len(files)} files, {total / 2**20:.1f} MiB (limit {TRAVEL_LIMIT_BYTES / 2**20:.0f} MiB); "
          f"{WHEEL_DIR}/: {sum(s for _, s in wheels) / 2**20:.1f} MiB")
    for name, size in wheels:
        print(f"  {size / 2**20:8.2f} MiB  {name}")
    if total >= TRAVEL_LIMIT_BYTES:
        problems.append(f"{total / 2**20:.1f} MiB would travel, the limit is 64 MiB")
    if args.wheels:
        from wheels import missing  # bench/gpu/wheels.py: what prepare.sh must have made

        problems += missing(ROOT / WHEEL_DIR)
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
