"""The package's own error types (a leaf: every layer may raise them).

Bad *arguments* are ``ValueError``/``TypeError`` with the words of :mod:`unrolled3d._validation`.
A bad *file* is a :class:`FileFormatError`: one type for every loader (volumes, measurements,
models, checkpoints, fitted operators, k-space, scans, configurations), naming the file and what
is wrong with it. It is a ``ValueError``, so code that catches ``ValueError`` keeps working, and
the command line turns it into exit status 2 and one line.
"""
from __future__ import annotations

import errno
import os

__all__ = ["FileFormatError", "DiskFullError", "first_line"]


class FileFormatError(ValueError):
    """A file exists but cannot be used: truncated, corrupt, another format, missing entries,
    non-finite values, or written for something else.

    Parameters
    ----------
    path : str or path-like
        The file.
    problem : str
        What is wrong with it, in words (one line).

    Attributes
    ----------
    path : str
        The file, as given.
    problem : str
        What is wrong.

    Examples
    --------
    >>> from unrolled3d.errors import FileFormatError
    >>> err = FileFormatError("runs/a/model.pt", "not an unrolled3d model file (no [model] section)")
    >>> print(err)
    runs/a/model.pt: not an unrolled3d model file (no [model] section)
    >>> isinstance(err, ValueError), err.path
    (True, 'runs/a/model.pt')
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        # one line: library messages (zip readers, JSON decoders) sometimes span several
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # picklable (e.g. raised in a DataLoader worker)
        return (type(self), (self.path, self.problem))


class DiskFullError(OSError):
    """No space left on the device (or the quota) while writing a file: one line naming it.

    An ``OSError`` with ``errno.ENOSPC``; its message is the sentence alone (no ``[Errno 28]``),
    whatever the library that hit the full disk said (numpy's "110592 requested and 49120
    written", torch's "[enforce fail at inline_container.cc]", HDF5's error stack).

    Examples
    --------
    >>> from unrolled3d.errors import DiskFullError
    >>> err = DiskFullError("out/x.npy", "12 KiB free")
    >>> print(err); err.errno == errno.ENOSPC, err.filename
    no space left on the device writing out/x.npy (12 KiB free)
    (True, 'out/x.npy')
    """

    def __init__(self, path: str | os.PathLike, detail: str = "") -> None:
        self.path, self.detail = os.fspath(path), detail
        text = f"no space left on the device writing {self.path}" + (f" ({detail})" if detail else "")
        super().__init__(errno.ENOSPC, text, self.path)

    def __str__(self) -> str:
        # always the text given to OSError.__init__ above (typeshed types strerror as optional)
        return self.strerror or ""

    def __reduce__(self):
        return (type(self), (self.path, self.detail))


def first_line(exc: BaseException) -> str:
    """``"Type: first line of its message"`` (the message cut at 200 characters): a library's error
    in the one line a :class:`FileFormatError` gives it."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"
