"""Promise: long work shows progress (and is quiet when asked), ``--help`` answers at once, and Ctrl-C
stops every long command with one ``interrupted`` line, exit 130 and no traceback or half-written
output. Issue 15's item 7 and the Ctrl-C runs."""
from __future__ import annotations

import pytest

from .catalogue import params


@pytest.mark.parametrize("case", params("progress_and_interrupts"))
def test_progress_is_shown_and_interrupts_stop_cleanly(case, observe):
    observe(case)
