"""Durable, atomic file writes, and the rules every output of the package follows.

:func:`atomic_path` is the one way the package writes a file:

1. a temporary file beside the target (``.<name>.tmp-<pid>-<random><suffix>``, same folder, so
   the rename below is atomic; ``<pid>`` is the writing process) receives the bytes;
2. the temporary file is ``fsync``-ed: its bytes are on the disk before its name is;
3. it gets the mode of the file it replaces (or the umask's default for a new file) and is
   renamed over the target with ``os.replace``;
4. the folder is ``fsync``-ed: the new name survives a power cut.

A crash (or ``kill -9``, or a power cut) at any point leaves either the old file or the new one,
never a truncated one; only a temporary file may remain, which :func:`stale_temporaries` finds
and :func:`remove_stale_temporaries` removes once the process that wrote it is gone (a running
writer's temporary file is never taken for a stale one). Every write removes the leftovers of
dead writers of the same target first (:func:`remove_stale_leftovers`: temporary files, and the
temporary, replaced and scratch folders of stores, ``.<name>.tmp-<pid>``, ``.<name>.old-<pid>``,
``.<name>.scratch-<pid>-...``).

A full disk (or quota) while writing is a :class:`~unrolled3d.errors.DiskFullError`, one line
naming the target, whatever the library that hit it said; the old file stays.

The target itself is checked first: a symbolic link is written *through* (its target file is
replaced, the link stays), a read-only file is refused (``PermissionError``) unless
``replace_read_only=True``, a folder is refused. :func:`check_not_input` refuses an output that
is one of the inputs of the same command.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import DiskFullError

__all__ = ["atomic_path", "fsync_folder", "resolve_output", "check_not_input", "stale_temporaries",
           "remove_stale_temporaries", "remove_stale_leftovers", "remove_own_temporaries", "no_space_left", "put_in_place", "TEMP_MARK",
           "LEFTOVER_MARKS"]

#: what every temporary file's name holds after the target's name: ``.<name>.tmp-...``
TEMP_MARK = ".tmp-"
#: the marks of what a writer of ``<name>`` leaves beside it while it runs: its temporary file or
#: store, the store it is replacing, its scratch folder (each followed by the writer's process id)
LEFTOVER_MARKS = (TEMP_MARK, ".old-", ".scratch-")
#: free bytes under which a failed write is taken for a full disk when the library did not say ENOSPC
_NEARLY_FULL = 2**20


def fsync_folder(folder: str | os.PathLike) -> None:
    """``fsync`` a folder, so that the names created, renamed or removed in it are durable.

    File systems that cannot sync a folder (some network file systems) are skipped silently:
    there is nothing more a program can do there.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError as exc:  # pragma: no cover - platform without folder file descriptors
        if exc.errno in (errno.EACCES, errno.EISDIR, errno.EINVAL):
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_read_only(path: Path, st: os.stat_result) -> bool:
    # The owner's write bit as well as access(): root may write anything, but a file chmod-ed
    # read-only says "do not replace me" to root as well.
    return not (st.st_mode & stat.S_IWUSR) or not os.access(path, os.W_OK)


def resolve_output(path: str | os.PathLike, replace_read_only: bool = False) -> Path:
    """The file an output named ``path`` really writes, after checking that it may be replaced.

    A symbolic link resolves to its target (written through, the link kept); an existing
    read-only file raises ``PermissionError`` unless ``replace_read_only``; a folder raises
    ``IsADirectoryError``.
    """
    given = Path(path)
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    if target.is_dir():
        raise IsADirectoryError(f"{given} is a folder, not a file: choose a file name")
    if target.exists():
        st = target.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{given} exists and is not a regular file: not replaced")
        if not replace_read_only and _is_read_only(target, st):
            raise PermissionError(f"{given} is read-only: not replaced (make it writable, choose another name, "
                                  f"or force the replacement)")
    return target


@contextmanager
def atomic_path(path: str | os.PathLike, replace_read_only: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success make it durable and rename it onto ``path``.

    Parameters
    ----------
    path : str or path-like
        The file to write. Missing parent folders are created. A symbolic link is written
        through to the file it points to.
    replace_read_only : bool
        Replace an existing read-only file (it stays read-only). Default: refuse it.

    Raises
    ------
    PermissionError
        ``path`` is read-only (and ``replace_read_only`` is false), or its folder is not writable.
    IsADirectoryError
        ``path`` is a folder.

    Examples
    --------
    >>> import os, tempfile
    >>> from unrolled3d.io import atomic_path
    >>> target = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("all or nothing")
    >>> open(target).read()
    'all or nothing'
    """
    target = resolve_output(path, replace_read_only)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        mode = stat.S_IMODE(target.stat().st_mode)  # the replaced file's permissions are kept
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask  # what a plain open() would give (the temporary file is made 0600)
    remove_stale_leftovers(target)  # of writers of this target that were killed
    try:
        tmp = _new_temporary(target)
    except PermissionError:
        raise PermissionError(f"cannot write {path}: the folder {target.parent} is not writable") from None
    except OSError as exc:
        raise no_space_left(exc, target) or exc
    try:
        yield Path(tmp)
        _fsync_file(tmp)  # the bytes first ...
        os.chmod(tmp, mode)
        os.replace(tmp, target)  # ... then the name,
        fsync_folder(target.parent)  # durably
    except BaseException as exc:
        full = no_space_left(exc, target) if isinstance(exc, Exception) else None  # measured while tmp holds its space
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if full is not None:
            raise full from None
        raise
    finally:
        _OWN_TEMPORARIES.discard(tmp)


#: the temporary files this process has created and not yet renamed or removed. A signal (Ctrl-C,
#: SIGTERM) can land between two bytecodes where no ``except`` of :func:`atomic_path` covers the file
#: yet (just after its creation): :func:`remove_own_temporaries` removes what such a signal left.
_OWN_TEMPORARIES: set[str] = set()


def _new_temporary(target: Path) -> str:
    """Create an empty temporary file beside ``target`` (mode 0600) and return its name, which is
    registered in :data:`_OWN_TEMPORARIES` *before* the file exists."""
    while True:
        name = str(target.parent / f".{target.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{target.suffix}")
        _OWN_TEMPORARIES.add(name)
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return name
        except FileExistsError:  # not ours: a name drawn twice (or left by a dead process of our id)
            _OWN_TEMPORARIES.discard(name)
        except OSError:  # not created (a folder not writable, a full disk)
            _OWN_TEMPORARIES.discard(name)
            raise
        # an interrupt (KeyboardInterrupt, Terminated) leaves the name registered: the file may exist


def remove_own_temporaries() -> list[str]:
    """Remove the temporary files of :func:`atomic_path` that this process left behind (an interrupt
    that landed just after one was created); returns their names. The command line calls it when a
    command is stopped by Ctrl-C, SIGTERM or SIGHUP."""
    removed = []
    for name in sorted(_OWN_TEMPORARIES):
        try:
            os.unlink(name)
            removed.append(name)
        except FileNotFoundError:
            pass
        _OWN_TEMPORARIES.discard(name)
    return removed


def no_space_left(exc: BaseException, target: str | os.PathLike) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``target`` when ``exc`` (a failed write) comes from a full disk
    or quota, else ``None``.

    ``ENOSPC``/``EDQUOT`` anywhere in the exception's chain says so; libraries that report the
    failure in their own words (numpy: "110592 requested and 49120 written", torch: "[enforce
    fail at inline_container.cc]") are recognised by the device's free space (under 1 MiB, measured
    while the partial file still occupies its space).
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            break
        e = e.__cause__ or e.__context__
    else:
        e = None
    if isinstance(exc, DiskFullError):
        return exc
    folder = Path(target).parent
    try:
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    full = e is not None or (isinstance(exc, (OSError, RuntimeError)) and free is not None and free < _NEARLY_FULL)
    if not full:
        return None
    from .limits import human_bytes

    return DiskFullError(target, f"{human_bytes(free)} free in {folder}" if free is not None else "")


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike | None],
                    what: str = "output") -> None:
    """Refuse to write any of ``outputs`` over one of ``inputs`` (the same file by any name:
    a relative path, a symbolic or hard link).

    Raises
    ------
    ValueError
        Naming the output and the input it would destroy.

    Examples
    --------
    >>> from unrolled3d.io import check_not_input
    >>> check_not_input(["x.npy"], ["m.pt"])          # distinct files: nothing to say
    >>> check_not_input(["runs/../m.pt"], ["m.pt"])
    Traceback (most recent call last):
        ...
    ValueError: output runs/../m.pt is the input m.pt: refusing to overwrite an input of the same command
    """
    ins = [Path(p) for p in inputs if p is not None]
    for out in outputs:
        out = Path(out)
        for inp in ins:
            if _same(out, inp):
                raise ValueError(f"{what} {out} is the input {inp}: refusing to overwrite an input of the same "
                                 f"command")


def _owner_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine; a reused number counts as alive: the file
    is then kept, never wrongly removed)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no process number at all
        return False
    except (PermissionError, OSError):  # someone else's process, or no way to tell: alive
        return True
    return True


def stale_temporaries(folder: str | os.PathLike, name_pattern: str = r".+") -> list[Path]:
    """Temporary files :func:`atomic_path` left in ``folder`` (a crash between write and rename)
    for targets whose names match the regular expression ``name_pattern``, whose writing process
    is gone (the process id is in the name; names without one, from older versions, are stale)."""
    d = Path(folder)
    if not d.is_dir():
        return []
    rx = re.compile(rf"^\.(?:{name_pattern}){re.escape(TEMP_MARK)}(?:(?P<pid>\d+)(?:-|$))?")
    found = []
    for p in d.iterdir():
        m = rx.match(p.name)
        if m and p.is_file() and not (m.group("pid") and _owner_alive(int(m.group("pid")))):
            found.append(p)
    return sorted(found)


def remove_stale_temporaries(folder: str | os.PathLike, name_pattern: str = r".+") -> list[Path]:
    """Remove :func:`stale_temporaries` (those of processes that are gone) and return what was
    removed."""
    found = stale_temporaries(folder, name_pattern)
    for p in found:
        p.unlink(missing_ok=True)
    return found


def remove_stale_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of ``target`` left beside it: files and folders named
    ``.<name><mark><pid>...`` (:data:`LEFTOVER_MARKS`) whose process ``<pid>`` is gone. A running
    writer's leftovers (its process alive, or a reused number) are kept. Returns what was removed.

    Examples
    --------
    >>> import os, tempfile
    >>> from pathlib import Path
    >>> from unrolled3d.io.atomic import remove_stale_leftovers
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / ".x.zarr.tmp-999999999").mkdir(); (d / f".x.zarr.tmp-{os.getpid()}").mkdir()
    >>> [p.name for p in remove_stale_leftovers(d / "x.zarr")]      # the dead writer's only
    ['.x.zarr.tmp-999999999']
    """
    target = Path(target)
    folder = target.parent
    if not folder.is_dir():
        return []
    marks = "|".join(re.escape(m) for m in LEFTOVER_MARKS)
    rx = re.compile(rf"^\.{re.escape(target.name)}(?:{marks})(?P<pid>\d+)(?:-|$)")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        m = rx.match(name)
        if m is None or _owner_alive(int(m.group("pid"))):
            continue
        p = folder / name
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:  # another process cleaned it first
            continue
        except OSError:  # not ours to remove (permissions): leave it, never fail a write for it
            continue
        removed.append(p)
    return sorted(removed)


_RENAME_EXCHANGE = 2  # renameat2's flag (Linux >= 3.15): swap two names in one step
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically (``renameat2(RENAME_EXCHANGE)``); ``False`` where the
    system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a C library without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def put_in_place(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` (a finished file or folder) onto ``dst``, replacing what is there at once:
    a reader sees the old or the new, never neither.

    A file is renamed over (``os.replace``); a folder (a Zarr store) over a folder is swapped with it
    in one step (``renameat2(RENAME_EXCHANGE)``) and the old one, now under ``src``'s name, removed.
    Where the system cannot swap, the old folder is moved aside first (``.<name>.old-<pid>``): a
    crash between the two renames then leaves both beside ``dst``, removed by the next write of it
    (:func:`remove_stale_leftovers`). The folder is synced afterwards.
    """
    src, dst = Path(src), Path(dst)
    if src.is_dir() and dst.is_dir() and not dst.is_symlink():
        if _exchange(src, dst):
            shutil.rmtree(src, ignore_errors=True)
        else:
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            os.replace(dst, old)
            os.replace(src, dst)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    fsync_folder(dst.parent)
