"""atomic_path: all or nothing, and ordinary permissions."""
from __future__ import annotations

import os
import stat

import pytest

from unrolled3d.io import atomic_path


def test_atomic_write_has_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "b.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["b.txt"]


def test_an_interrupt_just_after_the_temporary_file_is_made_leaves_it_to_remove_own_temporaries(tmp_path, monkeypatch):
    """A signal can land between the creation of the temporary file and the ``try`` that removes it
    on failure (CI once found ``.checkpoint_00000006.pt.tmp-...`` after SIGHUP stopped ``train``).
    The file is registered before it is made, so the command line's clean-up finds and removes it."""
    from unrolled3d.io.atomic import TEMP_MARK, remove_own_temporaries

    real_close = os.close

    def close_then_interrupted(fd):
        real_close(fd)
        monkeypatch.setattr(os, "close", real_close)
        raise KeyboardInterrupt  # as Python raises it for a Ctrl-C between two bytecodes

    target = tmp_path / "a.pt"
    monkeypatch.setattr(os, "close", close_then_interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_path(target):
        pytest.fail("the body must not run")
    left = [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]
    assert len(left) == 1 and not target.exists()  # the window is real: the file is there
    assert remove_own_temporaries() == [str(left[0])]
    assert list(tmp_path.iterdir()) == []
    assert remove_own_temporaries() == []  # nothing twice
