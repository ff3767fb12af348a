"""The GPU run (bench/run_gpu.sh, bench/gpu/plan.py) checked where no GPU is, so that on a lent
machine it runs the first time: every pytest selection it runs collects cases here, its steps keep
the device's limits (deadline, files back, their names), what travels fits, and the cuFFT shim
builds from its source and exports what ASTRA binds. The parts that need the package registries
(the downloaded wheels) are checked only where bench/gpu/prepare.sh has run."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "bench" / "gpu"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"u3d_gpu_{name}", GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


plan = _load("plan")
wheels = _load("wheels")
PYTEST_STEPS = [s for s in plan.STEPS if s.args]


def test_the_plan_keeps_the_device_limits():
    assert plan.check_plan() == []
    assert sum(s.json for s in plan.STEPS) <= plan.MAX_JSON_FILES  # + the log: 8 files come back
    # the deadline leaves the command's 600 s limit room for the machine's own start-up of python
    assert plan.DEADLINE_S + 60 <= 600
    card = plan.card_slug("NVIDIA H100 80GB HBM3")
    for step in plan.STEPS:
        if step.json:
            assert re.fullmatch(r"[A-Za-z0-9._-]+", plan.json_name(step.name, card))
    # the never-run kernels are in steps of their own, after the figures that matter most
    names = [s.name for s in plan.STEPS]
    assert names.index("column") > names.index("projector") and names.index("gather") > names.index("normal")
    for step in plan.STEPS:
        if step.name in ("projector", "fused", "normal"):
            assert "gather" not in " ".join(step.args).replace("not gather", "")
            assert "column" not in " ".join(step.args).replace("not column", "")


def test_card_names():
    assert plan.card_slug("NVIDIA H100 80GB HBM3") == "h100_80gb_hbm3"
    assert plan.card_slug("NVIDIA H200") == "h200"
    assert plan.card_slug("???") == "gpu"


def test_steps_send_sigint_under_their_budget_and_stop_at_the_deadline(tmp_path, monkeypatch):
    """The runner on fake steps: each under `timeout -s INT -k 10`, a required failure stops the
    plan, and a step is skipped when too little time is left."""
    if shutil.which("timeout") is None:
        pytest.skip("no coreutils timeout on this machine")
    monkeypatch.setattr(plan, "card_name", lambda: "NVIDIA Test 1")
    steps = (plan.Step("build", 30, shell="true", required=True),
             plan.Step("slow", 2, shell="trap 'echo got-INT; exit 3' INT; sleep 20 & wait"),
             plan.Step("late", 30, shell="echo never"))
    # a deadline that leaves the first two steps their time (the second takes its 2 s) and the third none
    t0 = plan.time.time() - plan.DEADLINE_S + plan.RESERVE_S + plan.MIN_STEP_S + 1.5
    status = plan.run(tmp_path, t0, steps)
    log = (tmp_path / "run_test_1.log").read_text()
    assert status == 1
    assert "got-INT" in log and "== slow: timed out" in log  # timeout exits 124 after its signal
    assert "== late: skipped" in log and "never" not in log
    steps = (plan.Step("build", 30, shell="exit 1", required=True), plan.Step("next", 30, shell="echo ran"))
    plan.run(tmp_path / "b", plan.time.time(), steps)
    log = (tmp_path / "b" / "run_test_1.log").read_text()
    assert "build is required; stopping" in log and "ran" not in log


@pytest.mark.parametrize("step", PYTEST_STEPS, ids=[s.name for s in PYTEST_STEPS])
def test_every_selection_collects_cases(step):
    n, text = plan.collect(step)
    assert n > 0, f"{step.name}: pytest --collect-only {' '.join(step.args)} selects nothing:\n{text[-3000:]}"


def test_the_test_step_collects_without_what_the_machine_lacks(tmp_path):
    """The machine has no nibabel (and nothing outside the wheels that travel): a test module that
    imports it at the top must not stop the collection of the CUDA tests."""
    import os

    blocked = tmp_path / "nibabel"
    blocked.mkdir()
    (blocked / "__init__.py").write_text('raise ImportError("nibabel is not installed on the GPU machine")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    (step,) = [s for s in plan.STEPS if s.name == "tests"]
    n, text = plan.collect(step, env=env)
    assert "nibabel is not installed" in text  # the block worked: test_io_volumes did not import
    assert n > 0 and "test_projector.py::test_cuda_matches_cpu" in text, text[-3000:]


def test_what_travels_fits():
    files = plan.travelling_files(wheels=True)
    total = sum(size for _, size in files)
    assert total < plan.TRAVEL_LIMIT_BYTES, f"{total / 2**20:.1f} MiB would travel (limit 64 MiB)"
    names = {name for name, _ in files}
    assert {"bench/run_gpu.sh", "bench/gpu/plan.py", "bench/gpu/cufft_forward.c"} <= names


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("objdump") is None,
                    reason="no C compiler or objdump on this machine")
def test_the_cufft_shim_builds_and_exports_the_versioned_symbols(tmp_path):
    shim = tmp_path / "libcufft.so.11"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(shim), str(GPU / "cufft_forward.c"),
                    f"-Wl,--version-script={GPU / 'cufft_forward.map'}", "-Wl,-soname,libcufft.so.11", "-ldl"],
                   check=True, capture_output=True)
    exported = wheels._versioned_symbols(shim, defined=True)
    # the five functions libastra.so.0 (astra-toolbox 2.5.0) binds to version libcufft.so.11
    names = {"cufftPlan1d", "cufftExecR2C", "cufftExecC2R", "cufftDestroy", "cufftSetStream"}
    assert exported == {(n, "libcufft.so.11") for n in names}
    assert shim.stat().st_size < 64 * 1024


def test_the_wheel_list_is_pinned_and_carries_zarr_when_it_is_used():
    assert all("==" in w for w in wheels.WHEELS)
    names = {w.split("==")[0] for w in wheels.WHEELS}
    assert {"deepinv", "natsort", "astra-toolbox", "nvidia-cuda-runtime-cu12"} <= names
    # zarr (and what it needs beyond the image's numpy) travels exactly when something imports it
    used = [p for p in (ROOT / "unrolled3d").rglob("*.py") if re.search(r"^\s*(import|from) zarr", p.read_text(), re.M)]
    used += [p for p in (ROOT / "bench").rglob("*.py") if re.search(r"^\s*(import|from) zarr", p.read_text(), re.M)]
    zarr_set = {"zarr", "numcodecs", "donfig", "pyyaml", "google-crc32c"}
    assert (zarr_set <= names) == bool(used) and (names & zarr_set == set()) == (not used), used


def test_the_carried_wheels_are_ready():
    folder = ROOT / plan.WHEEL_DIR
    if not folder.is_dir():
        pytest.skip("no .whl/: bench/gpu/prepare.sh downloads the wheels (it needs the package registries); "
                    "run it before a GPU session")
    assert wheels.missing(folder) == []


def test_prepare_check_runs_the_same_checks():
    text = (GPU / "prepare.sh").read_text()
    assert "plan.py check --wheels" in text and "wheels.py --verify" in text
    run = (ROOT / "bench" / "run_gpu.sh").read_text()
    assert "plan.py run" in run and "carry" in run and sys.executable  # the device command is documented
