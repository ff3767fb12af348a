"""The benchmark machinery (issue 30): the memory probe retries a void reading and then reports the
case as unmeasured instead of failing; ``unrolled3d bench`` runs every suite even when one fails;
the report says what ran each file (device, threads, torch, sizes) from the file itself."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from unrolled3d.cli import main


@pytest.fixture(scope="module")
def memory():
    from unrolled3d.bench import memory  # bench/ ships as unrolled3d.bench

    return memory


def _small_input() -> tuple[torch.Tensor]:
    return (torch.zeros(4),)


def _no_allocation(x: torch.Tensor) -> torch.Tensor:
    return x  # runs in memory the process holds: the high-water mark cannot move


def _allocate_64_mib(x: torch.Tensor) -> torch.Tensor:
    big = torch.ones(16 * 2**20)  # 64 MiB, touched
    return big[:4] + x


def test_a_void_reading_is_retried_then_reported_unmeasured(memory):
    with pytest.warns(UserWarning, match="unmeasured"):
        res = memory.cpu_peak(_small_input, _no_allocation, attempts=2)
    assert math.isnan(res["extra_bytes"]) and math.isnan(res["ratio"])
    assert res["attempts"] == 2 and "high-water mark" in res["unmeasured"]


def test_a_real_allocation_is_measured(memory):
    res = memory.cpu_peak(_small_input, _allocate_64_mib)
    assert "unmeasured" not in res
    assert 64 * 2**20 <= res["extra_bytes"] < 96 * 2**20  # the 64 MiB buffer, plus allocator slack


SUITE_OK = """
def test_fast(benchmark):
    benchmark.extra_info.update(size=8, threads=1, device="cpu")
    benchmark(sum, [1, 2, 3])
"""
SUITE_FAILING = """
def test_broken(benchmark):
    raise RuntimeError("the call did not raise the RSS high-water mark")
"""


def test_bench_runs_every_suite_when_one_fails(tmp_path, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    from unrolled3d.cli.bench import bench_dir

    (bench / "conftest.py").write_text((bench_dir() / "conftest.py").read_text())  # the real configuration
    (bench / "test_bench_projector.py").write_text(textwrap.dedent(SUITE_FAILING))  # the first suite fails
    (bench / "test_bench_fused.py").write_text(textwrap.dedent(SUITE_OK))
    results = tmp_path / "results"
    code = main(["bench", "--bench-dir", str(bench), "--suite", "projector", "fused", "--results", str(results),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "1 of 2 benchmark suite(s) failed (projector)" in err
    assert (results / "fused_cpu.json").is_file() and (results / "report.md").is_file()
    assert not (results / "projector_cpu.json").exists()  # a failed suite writes no result file
    data = json.loads((results / "fused_cpu.json").read_text())
    env = data["machine_info"]["unrolled3d"]  # what ran the suite, recorded by bench/conftest.py
    # the suite ran in a fresh process: its threads are a fresh process's (this one's may have been set
    # by an earlier test)
    fresh = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           capture_output=True, text=True, check=True)
    assert env["device"] == "cpu" and env["threads"] == int(fresh.stdout) and env["quick"] is False
    assert env["torch"] == str(torch.__version__)


@pytest.fixture()
def report(tmp_path):
    from unrolled3d.bench.experiments import report

    old = report.RESULTS
    report.RESULTS = tmp_path
    yield report
    report.RESULTS = old


def _results(path: Path, rows: list[dict], env: dict | None = None) -> None:
    info = {"node": "box", "cpu": {"brand_raw": "Some CPU"}}
    if env is not None:
        info["unrolled3d"] = env
    path.write_text(json.dumps({"machine_info": info, "benchmarks": [
        {"name": f"test_x[{i}]", "stats": {"min": 0.1}, "extra_info": e} for i, e in enumerate(rows)]}))


def test_the_report_labels_each_file_with_what_ran_it(report, tmp_path):
    _results(tmp_path / "a.json", [{"size": 32, "threads": 1, "device": "cpu"}, {"size": 48, "threads": 1}])
    assert report.run_label("a.json") == "CPU Some CPU; 1 thread; sizes 32^3, 48^3"
    _results(tmp_path / "b.json", [{"size": 256, "device": "NVIDIA H100 80GB HBM3"}],
             env={"device": "NVIDIA H100 80GB HBM3", "threads": 16, "torch": "2.11.0"})
    assert report.run_label("b.json") == "NVIDIA H100 80GB HBM3; torch 2.11.0; sizes 256^3"
    _results(tmp_path / "c.json", [{"size": 64}], env={"device": "cpu", "threads": 2, "torch": "2.14.1",
                                                       "quick": True})
    assert report.run_label("c.json") == "CPU Some CPU; 2 threads; torch 2.14.1; sizes 64^3; --quick"
    _results(tmp_path / "d.json", [{"size": 64}])  # an old file: nothing says how many threads
    assert "threads not recorded" in report.run_label("d.json")


def test_compat_and_projector_tables_state_the_rows_own_sizes(report):
    rows = [{"extra_info": {"op": "A", "size": 32, "n_views": 32, "native_s": 0.01, "adapter_s": 0.011,
                            "overhead": 0.1}}]
    table = report.compat_table(rows, "CPU Some CPU; 1 thread")
    assert "| A | 32^3, 32 views |" in table and "128" not in table
    proj = [{"stats": {"min": 0.002}, "extra_info": {"direction": "forward", "size": 32, "impl": "cpp",
                                                      "gups": 1.0, "mem_ratio": float("nan")}}]
    assert "| unmeasured |" in report.projector_table(proj, "x")
