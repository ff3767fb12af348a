"""``unrolled3d bench``: run the pytest-benchmark suites and render the report.

The suites ship with the package (``unrolled3d/bench``, from the repository's ``bench/``), so the
command runs from an installed package; in a source checkout it runs ``bench/`` itself. They need
the ``bench`` extra (``pip install "unrolled3d[bench]"``: pytest-benchmark, pygal). The report is
rendered by ``unrolled3d.bench.experiments.report`` (the repository's ``bench/experiments/report.py``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .output import emit

__all__ = ["BENCH_SUITES", "bench_cmd"]


#: ``unrolled3d bench`` suites: name -> file in the bench folder
BENCH_SUITES = {
    "projector": "test_bench_projector.py", "fused": "test_bench_fused.py", "normal": "test_bench_normal.py",
    "partition": "test_bench_partition.py", "mri": "test_bench_mri.py", "compat": "test_bench_compat.py",
    "partition_speed": "test_bench_partition_speed.py",
}


def _device_tag() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name().lower()
    return "cuda_" + next((w for w in name.replace("-", " ").split() if any(c.isdigit() for c in w)), "gpu")


def _holds_suites(folder: Path) -> bool:
    """Whether ``folder`` is a bench folder: its pytest configuration beside pytest-benchmark suites."""
    return (folder / "conftest.py").is_file() and any(folder.glob("test_bench_*.py"))


def bench_dir() -> Path:
    """The suites: the source checkout's ``bench/`` (editable install) or the installed copy."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "bench", package / "bench"):
        if _holds_suites(candidate):
            return candidate
    raise FileNotFoundError(f"no benchmark suites in {package.parent / 'bench'} or {package / 'bench'}: reinstall "
                            "the package, or pass --bench-dir")


def _run_suite(args: argparse.Namespace, root: Path, suite: str, target: Path) -> str:
    """Run one suite into ``target`` (written atomically): ``"written"``, ``"no cases"`` (it
    selected none), or the one-line reason it failed (its previous results are kept)."""
    quiet = args.quiet or args.json
    try:
        _pytest_into(args, root, suite, target, quiet)
    except _NoCases:
        return "no cases"
    except RuntimeError as exc:  # a failed case: the later suites still run, the failure is reported
        return " ".join(str(exc).split())
    return "written"


class _NoCases(Exception):
    """pytest selected no case: raised inside atomic_path, so the previous results stay."""


def _pytest_into(args: argparse.Namespace, root: Path, suite: str, target: Path, quiet: bool) -> None:
    import subprocess
    import sys

    from ..io import atomic_path

    with atomic_path(target) as tmp:
        cmd = [sys.executable, "-m", "pytest", str(root / BENCH_SUITES[suite]), f"--benchmark-json={tmp}",
               "-p", "no:cacheprovider", "-qq" if quiet else "-q", "--rootdir", str(root)]
        if args.select:
            cmd += ["-k", args.select]
        if getattr(args, "quick", False):
            cmd += ["--u3d-quick"]
        if getattr(args, "sizes", None):
            cmd += ["--u3d-sizes", args.sizes]
        proc = subprocess.run(cmd, cwd=root, stdout=subprocess.PIPE if quiet else None,
                              stderr=subprocess.STDOUT if quiet else None, text=True)
        if proc.returncode == 5:  # pytest: no case selected (say, --quick on a GPU-only suite)
            raise _NoCases(suite)
        if proc.returncode != 0:
            tail = (proc.stdout or "")[-2000:] if quiet else ""
            raise RuntimeError(f"benchmark suite {suite!r} failed (pytest exit {proc.returncode}) {tail}".strip())


def bench_cmd(args: argparse.Namespace) -> int:
    """Run pytest-benchmark suites and render report.md beside their JSON results."""
    import importlib
    import importlib.util

    root = Path(args.bench_dir) if args.bench_dir else bench_dir()
    if not _holds_suites(root):
        raise FileNotFoundError(f"no benchmark suite in {root} (--bench-dir names the bench/ folder of a checkout)")
    if importlib.util.find_spec("pytest_benchmark") is None:
        raise ValueError('the benchmarks need pytest-benchmark: pip install "unrolled3d[bench]"')
    in_checkout = root.parent.name != "unrolled3d"  # the installed copy sits inside the package
    results = Path(args.results) if args.results else (root / "results" if in_checkout else Path("bench-results"))
    suites = list(BENCH_SUITES) if args.suite == ["all"] else args.suite
    unknown = [s for s in suites if s not in BENCH_SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {', '.join(BENCH_SUITES)} or all")
    tag = _device_tag()
    written, skipped, failed = [], [], {}
    for suite in suites:
        target = results / f"{suite}_{tag}.json"
        outcome = _run_suite(args, root, suite, target)
        if outcome == "written":
            written.append(str(target))
        elif outcome == "no cases":
            skipped.append(suite)
        else:
            failed[suite] = outcome
    # the report of this package (whichever bench folder ran): it reads the results folder only
    importlib.import_module("unrolled3d.bench.experiments.report").main(results)
    emit(args, {"results": written, "skipped": skipped, "failed": failed, "report": str(results / "report.md")},
         "\n".join([f"wrote {w}" for w in written] + [f"no case selected in suite {s!r}" for s in skipped]
                   + [f"suite {s!r} failed: {why[:300]}" for s, why in failed.items()]
                   + [f"wrote {results / 'report.md'}"]))
    if failed:  # after every suite ran and the report was written: one line, exit 2
        raise RuntimeError(f"{len(failed)} of {len(suites)} benchmark suite(s) failed ({', '.join(failed)}); "
                           f"the others' results and the report were written")
    return 0
