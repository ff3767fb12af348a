"""Benchmark configuration: sizes and the quick selection from the command line.

Options (``pytest bench ...`` or ``unrolled3d bench ...``):

``--u3d-sizes 64,128``
    The volume sizes ``n`` of every case declared with ``@pytest.mark.u3d_sizes(...)`` (replacing
    its defaults); cases whose sizes are tied to other parameters keep only the listed sizes.
``--u3d-quick``
    The quick selection: only the cases that declare ``quick=`` sizes, at those sizes, timed with
    ``--benchmark-min-rounds 1 --benchmark-max-time 0.1`` unless given (about 3 CPU-minutes).

Timing uses pytest-benchmark's own rounds (``--benchmark-min-rounds``, ``--benchmark-max-time``);
``benchmark.pedantic`` is kept only where extra rounds would distort the figure (the GPU partition
cases, whose warm-up and out-of-memory handling come first). Memory is measured in a fresh process
(``memory.py``), apart from the timed calls. Results: see ``report.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # memory.py


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise pytest.UsageError(f"--u3d-sizes takes comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 8:
        raise pytest.UsageError(f"--u3d-sizes takes sizes >= 8, got {text!r}")
    return sizes


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unrolled3d")
    group.addoption("--u3d-sizes", default=None, help="volume sizes n, comma-separated (e.g. 64,128)")
    group.addoption("--u3d-quick", action="store_true", default=False,
                    help="the quick selection: small sizes, one round (a few minutes on 2 cores)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "u3d_sizes(default, quick=None): the sizes n of a case (see bench/conftest.py)")
    if config.getoption("--u3d-sizes") is not None:
        _sizes(config.getoption("--u3d-sizes"))
    if config.getoption("--u3d-quick"):
        # before pytest-benchmark reads them; explicit --benchmark-* options still win
        args = " ".join(config.invocation_params.args)
        if "--benchmark-min-rounds" not in args and hasattr(config.option, "benchmark_min_rounds"):
            config.option.benchmark_min_rounds = 1
        if "--benchmark-max-time" not in args and hasattr(config.option, "benchmark_max_time"):
            config.option.benchmark_max_time = 0.1
        if "--benchmark-warmup" not in args and hasattr(config.option, "benchmark_warmup"):
            config.option.benchmark_warmup = False


@pytest.hookimpl(optionalhook=True)  # pytest-benchmark's hook
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """What ran the suite, in the results file (``machine_info["unrolled3d"]``), so that the report
    states it instead of assuming it: the device (the GPU's name, or ``cpu``), torch's threads at
    the end of the run (cases that change them record their own in ``extra_info``), torch, the
    logical CPUs, and the sizes or quick selection asked for."""
    import os

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    machine_info["unrolled3d"] = {
        "device": device, "threads": torch.get_num_threads(), "torch": str(torch.__version__),
        "cuda": torch.version.cuda, "logical_cpus": os.cpu_count(),
        "sizes": config.getoption("--u3d-sizes"), "quick": bool(config.getoption("--u3d-quick")),
    }


@pytest.hookimpl(trylast=True)  # after the @parametrize marks: ``n`` ends the case's id, as before
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("u3d_sizes")
    if marker is None:
        return
    config = metafunc.config
    if config.getoption("--u3d-sizes") is not None:
        sizes = _sizes(config.getoption("--u3d-sizes"))
    elif config.getoption("--u3d-quick"):
        sizes = list(marker.kwargs.get("quick") or [])
    else:
        sizes = list(marker.args[0])
    metafunc.parametrize("n", sizes)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = config.getoption("--u3d-sizes")
    quick = config.getoption("--u3d-quick")
    if chosen is None and not quick:
        return
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("u3d_sizes")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if quick and (marker is None or not marker.kwargs.get("quick")) and chosen is None:
            drop.append(item)  # not part of the quick selection
        elif marker is None and chosen is not None and "n" in params and params["n"] not in _sizes(chosen):
            drop.append(item)  # sizes tied to other parameters: keep the chosen ones
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
