"""Promise: no command or function destroys an input, another file's sidecar, a file's mode or a
symbolic link; read-only files are refused unless forced; writes are atomic (an interrupted write
leaves the old file and no temporary); a training run killed with -9 at any moment resumes to
exactly the model of an uninterrupted run. Issue 15's items 2, 3, 6."""
from __future__ import annotations

import pytest

from .catalogue import params


@pytest.mark.parametrize("case", params("files_intact"))
def test_files_are_never_corrupted(case, observe):
    observe(case)
