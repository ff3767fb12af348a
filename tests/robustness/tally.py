#!/usr/bin/env python
"""Issue 15's tally: the robustness catalogue run through pytest, every outcome counted.

From the repository root (any further arguments go to pytest, e.g. ``-m "not slow"``)::

    python tests/robustness/tally.py --out bench/results/robustness_tally.json

runs ``tests/robustness`` (the same tests CI runs) with a plugin that collects each case's record
(``observe`` attaches it to the test's report) and writes the JSON and, beside it, the Markdown
table: outcomes by surface (Python API, command line), by item of the issue and by promise, and
every case whose outcome is not ``clear_error`` or ``ok``. The exit status is pytest's.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the catalogue is the package ``robustness``

from robustness.catalogue import CLASSES, GOOD, ITEMS, PROMISES, all_cases  # noqa: E402

RUNNER = ("pytest tests/robustness (tests/robustness/tally.py): every case in a forked child of the test process, "
          "which has imported torch; --help, Ctrl-C and kill -9 cases in new processes of the entry point")


class TallyPlugin:
    """Collects the record of every case from the test reports (and a record for a test that failed
    before its case could report: a crash, or a hang when pytest-timeout stopped it)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        case_id = report.nodeid.rsplit("[", 1)[-1].rstrip("]") if "[" in report.nodeid else report.nodeid
        rec = dict(report.user_properties).get("robustness")
        if rec is not None:
            self.records[case_id] = rec
        elif report.failed and case_id not in self.records:
            text = str(report.longrepr)
            self.records[case_id] = {"id": case_id, "outcome": "hang" if "Timeout" in text else "crash",
                                     "observed": f"the test failed in {report.when} before its case reported: "
                                                 + " ".join(text.split())[-400:]}


def totals(records: list[dict]) -> dict[str, Any]:
    """Outcome counts: all, per surface, per item of the issue, per promise."""
    promise_of = {c.id: c.promise for c in all_cases()}

    def count(rs: list[dict]) -> dict[str, int]:
        c = {k: 0 for k in CLASSES}
        for r in rs:
            c[r["outcome"]] += 1
        c["cases"] = len(rs)
        return c
    return {"all": count(records), "api": count([r for r in records if r.get("surface") == "api"]),
            "cli": count([r for r in records if r.get("surface") == "cli"]),
            "by_item": {str(i): count([r for r in records if r.get("item") == i]) for i in ITEMS},
            "by_promise": {p: count([r for r in records if promise_of.get(r["id"]) == p]) for p in PROMISES}}


def markdown(report: dict) -> str:
    """The tally as Markdown tables."""
    t = report["totals"]
    head = ["cases", *CLASSES]
    rule = "|---" * (len(head) + 1) + "|"

    def row(name: str, counts: dict) -> str:
        return f"| {name} | " + " | ".join(str(counts[h]) for h in head) + " |"
    lines = ["# Issue 15 robustness tally", "",
             f"{report['machine']}; torch {report['torch']}; Python {report['python']}; {report['date']}; "
             f"load average at the end {report['load_average_at_end']}; {report['wall_seconds']:.0f} s wall; "
             f"unrolled3d at {report['package']['commit']}"
             f"{' + uncommitted changes' if report['package']['uncommitted_changes'] else ''}. "
             f"Made by `python tests/robustness/tally.py` ({report['runner'].split(': ', 1)[1]}).", "",
             "| | " + " | ".join(head) + " |", rule]
    lines += [row(name, t[key]) for name, key in [("Python API", "api"), ("command line", "cli"), ("**all**", "all")]]
    lines += ["", "By item of the issue:", "", "| item | " + " | ".join(head) + " |", rule]
    lines += [row(f"{i}. {name}", t["by_item"][str(i)]) for i, name in ITEMS.items()]
    lines += ["", "By promise (one test module of `tests/robustness/` each):", "", "| promise | " + " | ".join(head) + " |",
              rule]
    lines += [row(f"`test_{p}.py`: {PROMISES[p][0]}", t["by_promise"][p]) for p in PROMISES]
    bad = [r for r in report["cases"] if r["outcome"] not in GOOD]
    lines += ["", f"Cases not `clear_error`/`ok`: {len(bad)}", ""]
    for r in bad:
        what = r.get("message") or r.get("observed") or r.get("why") or r.get("stderr_tail", "")[-200:]
        lines.append(f"- `{r['id']}` ({r['outcome']}): {' '.join(str(what).split())[:240]}")
    return "\n".join(lines) + "\n"


def machine() -> str:
    """CPU model, cores, memory and OS, in one line."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError):
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    return f"{model}, {os.cpu_count()} cores{mem}, {platform.platform()}"


def package_info() -> dict[str, Any]:
    """Which unrolled3d the cases ran (its folder and commit: the tally is of that code)."""
    import unrolled3d

    folder = Path(unrolled3d.__file__).resolve().parents[1]

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=folder, capture_output=True, text=True).stdout.strip()
    return {"path": str(folder), "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes": bool(git("status", "--porcelain", "--", "unrolled3d", "kernels", "tests/robustness"))}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/robustness_tally.json"),
                    help="the JSON to write (the Markdown goes beside it, .md)")
    args, pytest_args = ap.parse_known_args(argv)
    import pytest

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    plugin = TallyPlugin()
    t0 = time.time()
    status = pytest.main([str(HERE), "-q", "-p", "no:cacheprovider", *pytest_args], plugins=[plugin])
    import torch

    order = {c.id: i for i, c in enumerate(all_cases())}
    records = sorted(plugin.records.values(), key=lambda r: order.get(r["id"], len(order)))
    if len(records) < len(order):
        print(f"tally: {len(order) - len(records)} of {len(order)} cases did not run (deselected?)", file=sys.stderr)
    report = {
        "machine": machine(), "torch": torch.__version__, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "package": package_info(), "wall_seconds": round(time.time() - t0, 1), "runner": RUNNER,
        "pytest_args": list(pytest_args), "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "classes": list(CLASSES), "totals": totals(records), "cases": records,
    }
    from unrolled3d.io import atomic_path

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    with atomic_path(args.out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(report))
    t = report["totals"]["all"]
    print(f"{t['cases']} cases: " + ", ".join(f"{k} {t[k]}" for k in CLASSES) + f" ({report['wall_seconds']:.0f} s)")
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
