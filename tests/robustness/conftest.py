"""Fixtures of the robustness catalogue: the inputs every case copies from (made once per session),
and ``observe``, which runs one case, records what happened and asserts that the promise held."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from . import inputs
from .catalogue import GOOD, Case
from .observe import observe as observe_case


@pytest.fixture(scope="session")
def robustness_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the cases run in (one subfolder each, removed after it); the inputs beside it."""
    base = tmp_path_factory.mktemp("robustness")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared machine; the cases' own processes use one thread too
    try:
        inputs.make(base / "inputs")
    finally:
        torch.set_num_threads(threads)
    return base / "cases"


def explain(rec: dict[str, Any]) -> str:
    """One paragraph saying what a case did (for a failed assertion)."""
    evidence = (rec.get("destroyed") or rec.get("missing_from_message") or rec.get("message") or rec.get("observed")
                or rec.get("why") or rec.get("stderr_tail", "")[-300:])
    return f"{rec['id']} ({rec.get('expect')}): {rec['outcome']}: {' '.join(str(evidence).split())[:600]}"


@pytest.fixture
def observe(robustness_work: Path, request: pytest.FixtureRequest) -> Callable[[Case], dict[str, Any]]:
    """``observe(case)``: run it, attach its record to the test's report (for ``tally.py``), and assert
    that its outcome is ``clear_error`` or ``ok``."""

    def run(case: Case) -> dict[str, Any]:
        rec = observe_case(case, robustness_work)
        request.node.user_properties.append(("robustness", rec))
        assert rec["outcome"] in GOOD, explain(rec)
        return rec
    return run
