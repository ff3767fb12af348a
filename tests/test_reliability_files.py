"""Files nothing can corrupt (issue 29): a volume and its sidecar written as one, a full disk said in
one line naming the file, the leftovers of killed writers removed at the next write, SIGTERM and
SIGHUP like Ctrl-C for every command."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reliability_inputs import (can_mount_tmpfs, cli, dead_pid, env, error_lines, measurements, run_on_full_disk,
                                tiny_model)
from unrolled3d.errors import FileFormatError
from unrolled3d.io import read_volume, write_volume
from unrolled3d.io.stores import create_store, open_store

OLD, NEW = np.zeros((4, 5, 6), np.float32), np.ones((4, 5, 6), np.float32)
OLD_VS, NEW_VS = (2.0, 2.0, 2.0), (0.5, 0.5, 0.5)


def _consistent(path: Path) -> bool:
    """The pair at ``path`` reads as the old volume with the old voxel size or the new with the new."""
    vol, vs = read_volume(path)
    return (np.array_equal(vol.numpy(), OLD) and vs == OLD_VS) or (np.array_equal(vol.numpy(), NEW) and vs == NEW_VS)


def test_npy_pair_survives_a_kill_between_its_two_renames(tmp_path):
    """A kill -9 between the renames of X.npy and X.json never leaves a new volume with an old voxel size."""
    path = tmp_path / "x.npy"
    write_volume(path, OLD, OLD_VS)
    script = textwrap.dedent(f"""
        import os, numpy as np
        import unrolled3d.io.atomic as atomic
        calls, real = [], os.replace
        def replace(src, dst):
            calls.append(dst)
            if len(calls) == 2:   # the second rename of the pair: die before it, as kill -9 would
                os._exit(137)
            real(src, dst)
        atomic.os.replace = replace
        from unrolled3d.io import write_volume
        write_volume({str(path)!r}, np.ones((4, 5, 6), np.float32), {NEW_VS!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr
    assert _consistent(path)


def test_npy_pair_disk_full_while_writing_the_sidecar_keeps_the_old_pair(tmp_path, monkeypatch):
    """A full disk while the sidecar is written leaves the old volume with its old voxel size."""
    path = tmp_path / "x.npy"
    write_volume(path, OLD, OLD_VS)
    real = Path.write_text

    def full_for_json(self, *args, **kwargs):
        if ".json" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_for_json)
    with pytest.raises(OSError, match=r"no space left on the device writing .*x\.json"):
        write_volume(path, NEW, NEW_VS)
    monkeypatch.undo()
    assert _consistent(path) and read_volume(path)[1] == OLD_VS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.npy"]  # no temporary file left


def test_npy_replaced_behind_its_sidecar_is_refused(tmp_path):
    """An .npy replaced by another program is not read with the voxel size of the volume it replaced."""
    path = tmp_path / "x.npy"
    write_volume(path, OLD, OLD_VS)
    np.save(path, NEW)  # same shape, other values, sidecar untouched
    with pytest.raises(FileFormatError, match=r"x\.json: describes another version of x\.npy"):
        read_volume(path)


def test_npy_pair_copied_elsewhere_still_reads(tmp_path):
    """A pair copied by a tool that keeps neither inode nor time reads back (its content is hashed)."""
    write_volume(tmp_path / "x.npy", NEW, NEW_VS)
    (tmp_path / "copy").mkdir()
    for name in ("x.npy", "x.json"):
        (tmp_path / "copy" / name).write_bytes((tmp_path / name).read_bytes())
    vol, vs = read_volume(tmp_path / "copy" / "x.npy")
    assert np.array_equal(vol.numpy(), NEW) and vs == NEW_VS


def test_npy_pair_written_before_identities_still_reads(tmp_path):
    """A sidecar of an older version (no recorded identity) is read as before."""
    np.save(tmp_path / "x.npy", NEW)
    (tmp_path / "x.json").write_text(json.dumps({"voxel_size_zyx_mm": list(NEW_VS), "shape": [4, 5, 6]}))
    assert read_volume(tmp_path / "x.npy")[1] == NEW_VS


def test_streamed_npy_output_gets_its_sidecar_before_its_rename(tmp_path):
    """A .npy output written block by block becomes visible with its sidecar, both describing it."""
    from unrolled3d.io import Spatial

    path = tmp_path / "x.npy"
    write_volume(path, OLD, OLD_VS)
    store = create_store(path, (4, 5, 6), spatial=Spatial.from_voxel_size(NEW_VS), force=True)
    store.write((0, 0, 0), NEW)
    assert read_volume(path)[1] == OLD_VS  # not committed: the old pair, intact
    store.commit()
    assert _consistent(path) and read_volume(path)[1] == NEW_VS


# ------------------------------------------------------------------------------ full disk
_FULL_DISK = textwrap.dedent("""
    import json, sys, numpy as np, torch
    from pathlib import Path
    from unrolled3d.io import write_volume, save_measurements
    from unrolled3d.io.stores import create_store
    d = Path(sys.argv[1]); out = {}
    vol = np.random.default_rng(0).random((64, 64, 64)).astype(np.float32)  # 1 MiB: more than the disk
    def attempt(name, fn):
        (d / "old.txt").write_text("x")
        try:
            fn(); out[name] = "written"
        except BaseException as exc:
            out[name] = [type(exc).__name__, str(exc), sorted(p.name for p in d.iterdir())]
    for ext in (".npy", ".tif", ".pt", ".h5", ".nii", ".nii.gz"):
        attempt(ext, lambda: write_volume(d / f"x{ext}", vol))
    def zarr_store(kind):
        s = create_store(d / f"x.{kind}", (64, 64, 64), compressed=False)
        try:
            s.write((0, 0, 0), vol); s.commit()
        except BaseException:
            s.discard(); raise
    attempt(".zarr", lambda: zarr_store("zarr"))
    attempt("store.npy", lambda: zarr_store("npy"))
    print(json.dumps(out))
""")


def _torch_checkpoint_script() -> str:
    return textwrap.dedent("""
        import json, sys, torch
        from pathlib import Path
        from unrolled3d.io import atomic_path
        d = Path(sys.argv[1])
        try:
            with atomic_path(d / "checkpoint_00000001.pt") as tmp:
                torch.save({"w": torch.zeros(2**18)}, tmp)
            print(json.dumps("written"))
        except BaseException as exc:
            print(json.dumps([type(exc).__name__, str(exc), sorted(p.name for p in d.iterdir())]))
    """)


needs_tmpfs = pytest.mark.skipif(not can_mount_tmpfs(), reason="no user namespace to mount a small tmpfs in")


@needs_tmpfs
def test_full_disk_is_one_line_naming_the_file_for_every_format():
    """npy, tif, pt, h5, NIfTI and Zarr/.npy stores on a full disk: 'no space left ... writing FILE', nothing left over."""
    proc = run_on_full_disk(_FULL_DISK, size="512k")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in (".npy", ".tif", ".pt", ".h5", ".nii", ".nii.gz", ".zarr", "store.npy"):
        kind, message, left = out[name]
        target = f"x{name}" if name.startswith(".") else "x.npy"
        assert kind == "DiskFullError" and message.startswith("no space left on the device writing "), (name, message)
        assert message.split(" (")[0].endswith(target), (name, message)
        assert left == ["old.txt"], (name, left)  # no temporary file, no half-written output


@needs_tmpfs
def test_full_disk_during_a_torch_checkpoint_is_one_line():
    """A torch.save (checkpoints, model files) on a full disk: one line naming the file, not torch's enforce message."""
    proc = run_on_full_disk(_torch_checkpoint_script(), size="256k")
    assert proc.returncode == 0, proc.stderr[-2000:]
    kind, message, left = json.loads(proc.stdout.strip().splitlines()[-1])
    assert kind == "DiskFullError" and "enforce" not in message and message.startswith(
        "no space left on the device writing") and message.split(" (")[0].endswith("checkpoint_00000001.pt")
    assert left == []


def test_full_disk_reported_even_where_the_library_hides_errno(tmp_path, monkeypatch):
    """numpy's '... requested and ... written' on a full device becomes the one line naming the file."""
    import unrolled3d.io.atomic as atomic
    from unrolled3d.errors import DiskFullError

    monkeypatch.setattr(atomic.os, "statvfs", lambda p: os.statvfs_result((4096, 4096, 10, 0, 0, 10, 0, 0, 0, 255)))

    def failing_save(f, arr, allow_pickle=False):
        raise OSError("110592 requested and 49120 written")

    monkeypatch.setattr("unrolled3d.io.npy_pair.np.save", failing_save)
    with pytest.raises(DiskFullError, match=r"no space left on the device writing .*x\.npy \(0 B free"):
        write_volume(tmp_path / "x.npy", NEW)
    assert list(tmp_path.iterdir()) == []


@needs_tmpfs
def test_cli_full_disk_exit_2_one_line(tmp_path):
    """reconstruct into a full disk: exit 2 and one line 'no space left on the device writing OUT'."""
    m = measurements(tmp_path / "m.pt", size=24, views=8)
    script = textwrap.dedent(f"""
        import sys
        from unrolled3d.cli import main
        sys.exit(main(["reconstruct", {str(m)!r}, "--output", sys.argv[1] + "/x.tif", "--quiet"]))
    """)
    proc = run_on_full_disk(script, size="16k")
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "no space left on the device writing" in lines[0] and "x.tif" in lines[0], proc.stderr


# ------------------------------------------------------------------------------ leftovers of killed writers
def test_stale_leftovers_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    """Temporary files and store folders of killed writers beside an output go at the next write; a live writer's stay."""
    dead, alive = dead_pid(), os.getpid()
    stale = [f".x.npy.tmp-{dead}-abc.npy", f".h.pt.tmp-{dead}-q1.pt"]
    stale_dirs = [f".x.zarr.tmp-{dead}", f".x.zarr.old-{dead}", f".x.zarr.scratch-{dead}-k2"]
    live = [f".x.npy.tmp-{alive}-zzz.npy"]
    for name in stale + live:
        (tmp_path / name).write_bytes(b"partial")
    for name in stale_dirs:
        (tmp_path / name).mkdir()
        (tmp_path / name / "chunk").write_bytes(b"partial")
    write_volume(tmp_path / "x.npy", NEW)
    torch.save({}, tmp_path / "ignored.pt")
    from unrolled3d.io import atomic_path

    with atomic_path(tmp_path / "h.pt") as tmp:  # fit-normal's operator file is written through atomic_path
        torch.save({"h": torch.zeros(2)}, tmp)
    s = create_store(tmp_path / "x.zarr", (2, 2, 2))
    s.commit()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["x.npy", "x.json", "h.pt", "ignored.pt", "x.zarr", *live]), left


# ------------------------------------------------------------------------------ signals for every command
def _start(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unrolled3d.cli", *argv], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cwd: Path, pattern: str, proc: subprocess.Popen, seconds: float = 240.0) -> None:
    deadline = time.monotonic() + seconds
    while not list(cwd.glob(pattern)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{pattern} never appeared (exit {proc.returncode}): {proc.communicate()[1][-1000:]}")
        time.sleep(0.2)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_simulate_stopped_by_a_signal_says_so_and_leaves_nothing(tmp_path, sig, status):
    """SIGTERM/SIGHUP during simulate into a Zarr store: one line, exit 128+signal, the temporary store removed."""
    proc = _start(["simulate", "--size", "128", "--views", "90", "--output", "m.zarr"], tmp_path)
    _wait_for(tmp_path, ".m.zarr.tmp-*", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == status, err
    assert error_lines(err) == [f"unrolled3d simulate: stopped by {signal.Signals(sig).name}"], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("maker", ["scan", "zarr", "npy"])
def test_a_store_the_signal_caught_before_its_caller_held_it_is_removed(tmp_path, maker):
    """A signal can land just after a temporary store is made, before its maker's caller holds it (so no
    ``discard`` can run; the SIGTERM test above once left ``.m.zarr.tmp-<pid>`` under load). Such stores are
    registered before they exist, and the command line's clean-up removes them; committed or discarded
    ones are not touched."""
    from unrolled3d.io.scan_stores import create_scan
    from unrolled3d.io.stores import remove_own_temporary_stores
    from unrolled3d.physics import standard_cone_beam

    def make(name):
        if maker == "scan":
            return create_scan(tmp_path / f"{name}.zarr", standard_cone_beam(8, 4))
        return create_store(tmp_path / f"{name}.{maker}", (4, 4, 4))

    make("lost")  # the caller never got it
    kept, dropped = make("kept"), make("dropped")
    kept.commit()
    dropped.discard()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert before == sorted([f".lost.{'zarr' if maker == 'scan' else maker}.tmp-{os.getpid()}",
                             f"kept.{'zarr' if maker == 'scan' else maker}", *(["kept.json"] if maker == "npy" else [])])
    removed = remove_own_temporary_stores()
    assert [Path(p).name for p in removed] == [before[0]] and not Path(removed[0]).exists()
    assert remove_own_temporary_stores() == []  # nothing twice
    assert sorted(p.name for p in tmp_path.iterdir()) == before[1:]  # the committed store is kept


def test_simulate_interrupted_just_after_its_store_is_made_leaves_nothing(tmp_path, monkeypatch, capsys):
    """The window itself, through the command line: create_scan returns, and the interrupt lands before
    simulate holds the store."""
    from unrolled3d.cli import main
    from unrolled3d.io import scan_stores

    real = scan_stores.create_scan

    def made_then_interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # as Python raises it for a Ctrl-C between two bytecodes

    monkeypatch.setattr(scan_stores, "create_scan", made_then_interrupted)
    assert main(["simulate", "--size", "16", "--views", "6", "--output", str(tmp_path / "m.zarr")]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_reconstruct_stopped_by_sigterm_removes_its_output_store_and_scratch(tmp_path):
    """SIGTERM during a streamed unrolled reconstruct: one line, exit 143, no temporary output or scratch left."""
    m = measurements(tmp_path / "m.pt", size=48, views=30)
    w = tiny_model(tmp_path / "w.pt")
    proc = _start(["reconstruct", str(m), "--method", "unrolled", "--weights", str(w), "--output", "x.zarr",
                   "--patch-size", "8"], tmp_path)
    _wait_for(tmp_path, ".x.zarr.scratch-*", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    assert error_lines(err) == ["unrolled3d reconstruct: stopped by SIGTERM"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "w.pt", "w.toml"]


@pytest.mark.parametrize("entry", ["unrolled3d.cli.main:run", "python -m unrolled3d.cli"])
def test_a_signal_while_the_program_exits_prints_no_traceback(tmp_path, entry):
    """Ctrl-C (and SIGTERM) after the work is done, while the interpreter shuts down, exits 0 in silence.

    The signals are sent from an ``atexit`` hook, that is during the shutdown, where they once interrupted
    a torch finalizer and printed its traceback (seen in CI: Ctrl-C right after ``reconstruct`` finished)."""
    hook = ("import atexit, os, signal, time\n"
            "atexit.register(lambda: [os.kill(os.getpid(), s) or time.sleep(0.2) for s in (signal.SIGINT, signal.SIGTERM)])\n")
    call = ("from unrolled3d.cli.main import run; run()" if entry.endswith(":run")
            else "import runpy; runpy.run_module('unrolled3d.cli', run_name='__main__')")
    # a command that writes (``info`` ends without the teardown, so without atexit hooks: see the next test)
    argv = ['unrolled3d', 'simulate', '--size', '8', '--views', '4', '--out', 'm.pt', '--quiet']
    proc = subprocess.run([sys.executable, "-c", hook + f"import sys; sys.argv = {argv!r}\n" + call],
                          cwd=tmp_path, capture_output=True, text=True, env=env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr
    assert (tmp_path / "m.pt").is_file()


def test_only_commands_that_write_nothing_skip_the_teardown(tmp_path):
    """``info`` ends with ``os._exit`` (0.45 s of torch's teardown saved, ``bench/test_bench_cli.py``);
    a command that writes a file keeps the ordinary exit, with its atexit hooks."""
    hook = "import atexit; atexit.register(lambda: print('ATEXIT RAN'))\n"
    for argv, ran in ((['unrolled3d', 'info'], False),
                      (['unrolled3d', 'simulate', '--size', '8', '--views', '4', '--out', 'm.pt', '--quiet'], True)):
        proc = subprocess.run([sys.executable, "-c", hook + f"import sys; sys.argv = {argv!r}\n"
                               "from unrolled3d.cli.main import run; run()"],
                              cwd=tmp_path, capture_output=True, text=True, env=env(), timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert ("ATEXIT RAN" in proc.stdout) == ran, (argv, proc.stdout)
        if not ran:  # its output was flushed before the fast exit, to a pipe (block-buffered)
            assert proc.stdout.startswith("version") and "backend switches" in proc.stdout, proc.stdout
    assert (tmp_path / "m.pt").is_file()


def test_a_reader_that_leaves_early_ends_the_command_in_silence(tmp_path):
    """``unrolled3d info | head -1`` printed "error: [Errno 32] Broken pipe" (exit 2): the reader of
    stdout left, which is no error of the command's. It now ends in silence with 141 (128 + SIGPIPE,
    what a shell shows for ``cat`` in the same place)."""
    proc = subprocess.Popen([sys.executable, "-m", "unrolled3d.cli", "info"], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


@pytest.mark.parametrize("what", ["scan", "store"])
def test_interrupt_while_a_zarr_output_is_made_leaves_nothing(tmp_path, monkeypatch, what):
    """Ctrl-C/SIGTERM while a Zarr output is being created (before its writer can discard it) removes it."""
    import zarr

    from unrolled3d.io.scan_stores import create_scan
    from unrolled3d.physics import standard_cone_beam

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if what == "scan":
        monkeypatch.setattr(zarr.Group, "create_array", interrupted)
        with pytest.raises(KeyboardInterrupt):
            create_scan(tmp_path / "m.zarr", standard_cone_beam(8, 4))
    else:
        real = zarr.create_array

        def half_made(store, **kwargs):  # the folder and its metadata exist, then the interrupt
            real(store, **kwargs)
            raise KeyboardInterrupt

        monkeypatch.setattr(zarr, "create_array", half_made)
        with pytest.raises(KeyboardInterrupt):
            create_store(tmp_path / "x.zarr", (4, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_discard_waits_for_the_zarr_write_an_interrupt_left_running(tmp_path, monkeypatch):
    """An interrupt during a Zarr chunk write ends the caller's wait, not the write: discard waits for it, then removes all."""
    import asyncio
    import threading

    import zarr.storage

    real_set = zarr.storage.LocalStore.set

    async def slow_set(self, key, value, *args, **kwargs):
        await asyncio.sleep(1.0)  # the chunk lands after the caller was interrupted
        return await real_set(self, key, value, *args, **kwargs)

    s = create_store(tmp_path / "x.zarr", (8, 8, 8), chunks=(4, 4, 4))
    monkeypatch.setattr(zarr.storage.LocalStore, "set", slow_set)
    # a real signal (interrupt_main would not break the wait on Zarr's future until the write is done)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        try:
            s.write((0, 0, 0), np.ones((8, 8, 8), np.float32))
            time.sleep(5)  # (the interrupt lands here if the write was faster than the timer)
        except KeyboardInterrupt:
            s.discard()
            raise
    time.sleep(1.5)  # any write still running would have recreated files by now
    assert list(tmp_path.iterdir()) == []


def test_npy_written_through_a_link_keeps_its_pair_beside_the_data(tmp_path):
    """Writing X.npy through a symbolic link renews the sidecar beside the data: link and target read the same."""
    (tmp_path / "data").mkdir()
    write_volume(tmp_path / "data" / "x.npy", OLD, OLD_VS)
    (tmp_path / "x.npy").symlink_to(tmp_path / "data" / "x.npy")
    write_volume(tmp_path / "x.npy", NEW, NEW_VS)
    for p in (tmp_path / "x.npy", tmp_path / "data" / "x.npy"):
        vol, vs = read_volume(p)
        assert np.array_equal(vol.numpy(), NEW) and vs == NEW_VS, p
    assert (tmp_path / "x.npy").is_symlink()


def test_zarr_output_replaced_by_a_crashing_writer_is_never_missing(tmp_path):
    """A kill -9 while a finished Zarr store replaces an old one: the final name holds the old or the new store."""
    from unrolled3d.io.atomic import _exchange
    from unrolled3d.io.stores import create_store as make

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    if not _exchange(tmp_path / "a", tmp_path / "b"):  # the fallback has a window by design (see put_in_place)
        pytest.skip("this file system cannot swap two names in one step (renameat2 RENAME_EXCHANGE)")
    (tmp_path / "a").rmdir(), (tmp_path / "b").rmdir()
    old = make(tmp_path / "x.zarr", (4, 4, 4))
    old.write((0, 0, 0), np.zeros((4, 4, 4)))
    old.commit()
    script = textwrap.dedent(f"""
        import os, numpy as np
        calls, real = [], os.replace
        def replace(src, dst):  # the second rename of a two-step replacement: die before it
            calls.append(dst)
            if len(calls) == 2:
                os._exit(137)
            real(src, dst)
        os.replace = replace
        import shutil
        shutil.rmtree = lambda *a, **k: os._exit(137)  # or die before the old store is removed
        from unrolled3d.io.stores import create_store
        s = create_store({str(tmp_path / "x.zarr")!r}, (4, 4, 4), force=True)
        s.write((0, 0, 0), np.ones((4, 4, 4)))
        s.commit()
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr
    values = open_store(tmp_path / "x.zarr").read((0, 0, 0), (4, 4, 4))
    assert np.all(values == 1) or np.all(values == 0)
    make(tmp_path / "x.zarr", (4, 4, 4), force=True).commit()  # the next write removes the crashed writer's leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["x.zarr"]
