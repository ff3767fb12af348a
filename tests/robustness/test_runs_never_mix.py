"""Promise: a training run never takes over another run's folder: a new run there is refused (unless
``--overwrite``, which archives the old run whole), ``--resume`` continues only the same run (same
geometry, data, model and settings), and how long a run goes or how often it saves is not its
identity. Issue 15's item 1."""
from __future__ import annotations

import pytest

from .catalogue import params


@pytest.mark.parametrize("case", params("runs_never_mix"))
def test_runs_never_mix(case, observe):
    observe(case)
