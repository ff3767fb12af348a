"""Start-up of the ``unrolled3d`` program: the wall time of a whole process, as a user waits for it.

Run: ``.venv/bin/python -m pytest bench/test_bench_cli.py --benchmark-json bench/results/cli_startup_cpu.json``.

Each round starts a fresh interpreter (``python -m unrolled3d.cli ...``, what the installed
``unrolled3d`` program runs), so the figure holds the imports, the command and the exit. The floor,
``python -c "import torch"``, is timed in the same run: ``info`` cannot be faster than torch's own
import, and ``extra_info`` records the floor's best time beside the command's (issue 30's target:
``--help`` and ``info`` under 2 s).
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

COMMANDS = {
    "help": [sys.executable, "-m", "unrolled3d.cli", "--help"],
    "version": [sys.executable, "-m", "unrolled3d.cli", "--version"],
    "info": [sys.executable, "-m", "unrolled3d.cli", "info"],
    # the same work ended by the interpreter's ordinary teardown (as every command did before
    # cli.main.run ended the commands that write nothing with os._exit)
    "info_ordinary_exit": [sys.executable, "-c", "import sys; from unrolled3d.cli.main import main; "
                           "sys.exit(main(['info']))"],
    "import_torch": [sys.executable, "-c", "import torch"],
}


def _wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    return time.perf_counter() - t0


@pytest.mark.parametrize("command", ["help", "version", "info", "info_ordinary_exit"])
def test_cli_startup(benchmark, command):
    floor = min(_wall(COMMANDS["import_torch"]) for _ in range(3))  # the same machine state, before
    benchmark.pedantic(_wall, args=(COMMANDS[command],), rounds=5, warmup_rounds=1)
    floor = min(floor, *(_wall(COMMANDS["import_torch"]) for _ in range(3)))  # ... and after
    best = benchmark.stats.stats.min
    benchmark.extra_info.update({"best_s": best, "import_torch_best_s": floor, "ratio_to_import_torch": best / floor,
                                 "argv": COMMANDS[command][1:]})
    print(f"{command}: best {best:.2f} s; python -c 'import torch': best {floor:.2f} s")
