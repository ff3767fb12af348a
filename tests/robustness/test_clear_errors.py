"""Promise: a bad input (a file, a number, an argument) is refused with one clear error that names it,
never a traceback, a silent acceptance or a damaged file; a valid edge input (an integer size, a
rare format, a float16 tensor) is accepted and gives the right result. Issue 15's items 4, 5, 8."""
from __future__ import annotations

import pytest

from .catalogue import params


@pytest.mark.parametrize("case", params("clear_errors"))
def test_bad_input_gives_a_clear_error_and_edge_input_works(case, observe):
    observe(case)
