"""``unrolled3d bench``: run the pytest-benchmark suites of a source checkout and render the report."""
from __future__ import annotations

import argparse
from pathlib import Path

from .output import emit

__all__ = ["BENCH_SUITES", "bench_cmd"]


#: ``unrolled3d bench`` suites: name -> file in the source checkout's bench/ folder
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


def bench_cmd(args: argparse.Namespace) -> int:
    """Run pytest-benchmark suites from bench/ and render bench/results/report.md."""
    import importlib.util
    import subprocess
    import sys


    from ..io import atomic_path

    root = Path(args.bench_dir) if args.bench_dir else Path(__file__).resolve().parents[2] / "bench"
    if not (root / "report.py").exists():
        raise FileNotFoundError(f"no benchmark suite in {root}: the suites live in the source checkout's bench/ "
                                "folder (pass --bench-dir)")
    results = Path(args.results) if args.results else root / "results"
    suites = list(BENCH_SUITES) if args.suite == ["all"] else args.suite
    unknown = [s for s in suites if s not in BENCH_SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {', '.join(BENCH_SUITES)} or all")
    tag = _device_tag()
    written = []
    for suite in suites:
        target = results / f"{suite}_{tag}.json"
        with atomic_path(target) as tmp:
            cmd = [sys.executable, "-m", "pytest", str(root / BENCH_SUITES[suite]), f"--benchmark-json={tmp}",
                   "-p", "no:cacheprovider", "-q" if not (args.quiet or args.json) else "-qq"]
            if args.select:
                cmd += ["-k", args.select]
            quiet = args.quiet or args.json
            proc = subprocess.run(cmd, cwd=root.parent,
                                  stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None,
                                  text=True)
            if proc.returncode != 0:
                tail = (proc.stdout or "")[-2000:] if quiet else ""
                raise RuntimeError(f"benchmark suite {suite!r} failed (pytest exit {proc.returncode}) {tail}".strip())
        written.append(str(target))
    spec = importlib.util.spec_from_file_location("unrolled3d_bench_report", root / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    report.main(results)
    emit(args, {"results": written, "report": str(results / "report.md")},
          "\n".join(f"wrote {w}" for w in written) + f"\nwrote {results / 'report.md'}")
    return 0
