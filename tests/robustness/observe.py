"""Run one case and classify what happened (the outcomes of ``catalogue.CLASSES``).

Python API cases and command-line cases run in a forked child of the test process, which has
imported torch already: a crash or a hang is observed, not suffered, and nothing a case changes in
its process (threads, flushed denormals, patched functions) leaks into the next one. The child of a
command-line case does what the console script does (``sys.exit(main())``: an uncaught exception
prints its traceback and exits 1, ``SystemExit`` exits with its code, a signal kills it). Cases that
time ``--help``, send Ctrl-C or kill -9 run the real entry point in new processes (their ``runner``).

API: ``clear_error`` is a ``ValueError``/``TypeError``/``OSError``/``ArithmeticError``/``MemoryError``
(``FileFormatError`` is a ``ValueError``) whose message holds the case's needles; any other exception
type is a ``traceback``. Command line: ``clear_error`` is exit 2 (130 for Ctrl-C) with exactly one
``unrolled3d ...: error:`` (``interrupted``) line holding the needles and no traceback; exit 1 (the
command line's "this is a bug") or a traceback is a ``traceback``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from .catalogue import Case
from .inputs import PWNED, env, exe, fx, newest_checkpoint, toml

#: exception types that are a clear answer to bad input (when their message names the culprit)
EXPECTED_API_ERRORS = (ValueError, TypeError, OSError, ArithmeticError, MemoryError)
_TIMED_OUT, _NOT_INJECTED, _NO_STOP = -997, -999, -998  # runner statuses that are no exit code


def observe(case: Case, work: Path) -> dict[str, Any]:
    """Run ``case`` in its own folder under ``work`` and return its record (``outcome`` and evidence)."""
    d = work / case.id.replace("/", "_")
    d.mkdir(parents=True)
    if case.setup:
        case.setup(d)
    before = snapshot(d, case.outputs)
    rec = _run_api(case, d) if case.surface == "api" else _run_cli(case, d)
    harm = destroyed(before, snapshot(d, case.outputs))
    if harm:
        rec["outcome"], rec["destroyed"] = "destructive_write", harm
    if case.outputs and case.surface == "cli" and rec["outcome"] in ("clear_error", "vague_error"):
        left = [o for o in case.outputs if (d / o).exists() and o not in before]
        if left:
            rec["left_on_failure"] = left
    if PWNED.exists():  # a pickle payload ran: the worst outcome, whatever the case returned
        PWNED.unlink()
        rec["outcome"], rec["observed"] = "crash", "a pickle payload ran os.system"
    shutil.rmtree(d, ignore_errors=True)
    return rec


# ------------------------------------------------------------------------------------- evidence
def snapshot(d: Path, skip: Sequence[str]) -> dict[str, tuple]:
    """Hash, mode and link target of every file (and link) under ``d`` but the outputs ``skip``."""
    snap: dict[str, tuple] = {}
    skip_paths = [d / s for s in skip]
    for p in sorted(d.rglob("*")):
        if any(p == s or s in p.parents for s in skip_paths):
            continue
        if p.is_symlink():
            snap[str(p.relative_to(d))] = ("link", os.readlink(p))
        elif p.is_file():
            snap[str(p.relative_to(d))] = (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
    return snap


def destroyed(before: dict, after: dict) -> list[str]:
    """What happened to the inputs: removed, changed, or changed in mode only."""
    out = []
    for k, v in before.items():
        if k not in after:
            out.append(f"{k} removed")
        elif after[k] != v:
            out.append(f"{k} changed" + (" (mode)" if v[0] == after[k][0] else ""))
    return out


def _missing(text: str, needles: Sequence[str]) -> list[str]:
    return [n for n in needles if n and n.lower() not in text.lower()]


def _checked(check: Callable[..., Any], *args) -> tuple[bool, str]:
    try:
        r = check(*args)
    except Exception as exc:  # a check that cannot read the result: the result is wrong
        return False, f"check raised {type(exc).__name__}: {exc}"
    if r is True:
        return True, ""
    return False, str(r) if isinstance(r, str) else "check failed"


# ------------------------------------------------------------------------------------- forked children
def _forked(body: Callable[[], int], timeout: float, out_f, err_f) -> int:
    """Run ``body`` in a forked child whose fds 1 and 2 are ``out_f``/``err_f``; its exit status as
    ``subprocess`` reports one (``-signal`` when killed), ``_TIMED_OUT`` past ``timeout`` seconds."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.dup2(out_f.fileno(), 1)
            os.dup2(err_f.fileno(), 2)
            sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), write_through=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            import torch

            torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 for the fresh processes
            code = body()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 1)
    t0 = time.time()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.time() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return _TIMED_OUT
        time.sleep(0.01)


def forked_cli(argv: list[str], cwd: Path, timeout: float) -> tuple[int, str, str]:
    """``unrolled3d argv`` in a forked child, in folder ``cwd``: (exit status, stdout, stderr)."""

    def body() -> int:
        from unrolled3d.cli import main

        os.chdir(cwd)
        sys.argv = ["unrolled3d", *argv]
        return main(argv)

    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        rc = _forked(body, timeout, out_f, err_f)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read().decode(errors="replace"), err_f.read().decode(errors="replace")
    return rc, out, err + (f"\ntimed out after {timeout} s" if rc == _TIMED_OUT else "")


# ------------------------------------------------------------------------------------- Python API
def _run_api(case: Case, d: Path) -> dict[str, Any]:
    """The case's function and its check in a forked child; the record comes back as JSON."""
    rec: dict[str, Any] = {"id": case.id, "item": case.item, "surface": "api", "expect": case.expect,
                           "needles": list(case.needles)}
    if case.what:
        rec["what"] = case.what
    with tempfile.TemporaryFile() as result, tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        def body() -> int:
            record = json.dumps(_api_in_child(case, d)).encode()
            result.write(record)
            result.flush()
            return 0

        t0 = time.perf_counter()
        rc = _forked(body, case.timeout, out_f, err_f)
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        result.seek(0)
        err_f.seek(0)
        text, err = result.read().decode(errors="replace"), err_f.read().decode(errors="replace")
    if rc == _TIMED_OUT:
        rec.update(outcome="hang", observed=f"no answer within {case.timeout:.0f} s")
    elif rc != 0 or not text:
        rec.update(outcome="crash", observed=f"the child died with status {rc}: {err[-400:]}")
    else:
        rec.update(json.loads(text))
    return rec


def _api_in_child(case: Case, d: Path) -> dict[str, Any]:
    """Run the case's function (in the child) and classify its answer."""
    try:
        result = case.fn(d)
    except Exception as exc:  # classified below
        message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:400]
        if not isinstance(exc, EXPECTED_API_ERRORS + case.errors):
            return {"observed": message, "outcome": "traceback",
                    "traceback_tail": "".join(traceback.format_exception(exc)[-3:])[-600:]}
        if case.expect == "ok":
            return {"observed": message, "outcome": "refused_valid"}
        missing = _missing(str(exc), case.needles)
        return {"observed": message, "outcome": "vague_error" if missing else "clear_error",
                **({"missing_from_message": missing} if missing else {})}
    observed = f"returned {type(result).__name__}"
    if case.expect == "error":
        return {"observed": observed, "outcome": "silent_accept"}
    good, why = _checked(case.check, d, result) if case.check else (True, "")
    return {"observed": observed + (f"; {why}" if why else ""), "outcome": "ok" if good else "wrong_result"}


# ------------------------------------------------------------------------------------- command line
def _fmt(argv: Sequence[str], d: Path) -> list[str]:
    return [str(a).replace("{d}", str(d)).replace("{fx}", str(fx())) for a in argv]


def _run_cli(case: Case, d: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        if case.runner is not None:
            rc, out, err = case.runner(d)
        else:
            rc, out, err = forked_cli(_fmt(case.argv, d), d, case.timeout)
    except subprocess.TimeoutExpired as exc:
        rc, out, err = _TIMED_OUT, "", f"timed out after {exc.timeout} s"
    return classify_cli(case, d, rc, out, err, time.perf_counter() - t0)


def classify_cli(case: Case, d: Path, rc: int, out: str, err: str, seconds: float) -> dict[str, Any]:
    """The record of a command-line case from its exit status and output."""
    rec: dict[str, Any] = {"id": case.id, "item": case.item, "surface": "cli", "expect": case.expect,
                           "needles": list(case.needles), "exit": rc, "seconds": round(seconds, 2),
                           "stderr_tail": err[-500:]}
    if case.what:
        rec["what"] = case.what
    if case.argv is not None:
        rec["argv"] = [a.replace(str(d), "{d}") for a in _fmt(case.argv, d)]
    lines = [ln for ln in err.replace("\r", "\n").splitlines()
             if ln.startswith("unrolled3d") and (": error:" in ln or ": interrupted" in ln or "internal error" in ln)]
    if rc in (_TIMED_OUT, _NO_STOP):
        rec["outcome"] = "hang"
    elif rc == _NOT_INJECTED:  # the fault could not be injected (the command finished first)
        rec["outcome"] = "wrong_result"
    elif rc < 0:
        rec["outcome"] = "crash"
    elif "Traceback (most recent call last)" in err or rc == 1:
        rec["outcome"] = "traceback"
    elif rc == 0:
        _classify_success(case, d, rc, out, err, rec)
    elif rc in (2, 130):
        _classify_refusal(case, d, rc, out, err, lines, rec)
    else:
        rec["outcome"] = "crash"
    return rec


def _classify_success(case: Case, d: Path, rc: int, out: str, err: str, rec: dict) -> None:
    if case.expect in ("error", "interrupt"):
        rec["outcome"] = "silent_accept"
        return
    good, why = _checked(case.check, d, rc, out, err) if case.check else (True, "")
    rec["outcome"] = "ok" if good else "wrong_result"
    if why:
        rec["why"] = why


def _classify_refusal(case: Case, d: Path, rc: int, out: str, err: str, lines: list[str], rec: dict) -> None:
    if lines:
        rec["message"] = lines[0]
    if case.expect == "ok":
        rec["outcome"] = "refused_valid"
    elif (case.expect == "interrupt") != (rc == 130):
        rec["outcome"], rec["why"] = "vague_error", f"exit {rc} for a {'Ctrl-C' if case.expect == 'interrupt' else 'bad input'}"
    elif len(lines) != 1:
        rec["outcome"], rec["why"] = "vague_error", f"{len(lines)} error lines"
    else:
        missing = _missing(lines[0], case.needles)
        rec["outcome"] = "vague_error" if missing else "clear_error"
        if missing:
            rec["missing_from_message"] = missing
        elif case.check:
            good, why = _checked(case.check, d, rc, out, err)
            if not good:
                rec["outcome"], rec["why"] = "wrong_result", why


# ------------------------------------------------------------------------------------- fresh processes
def signal_runner(argv: Sequence[str], ready: Callable[[Path, str], bool], sig: int = signal.SIGINT,
                  then: Sequence[str] | None = None, limit: float = 90.0):
    """Start ``unrolled3d argv`` in a new process; send ``sig`` once ``ready(d, stderr so far)``; then run
    ``then`` (e.g. the ``--resume``), if given. Returns the observation of the last command run."""

    def run(d: Path) -> tuple[int, str, str]:
        proc = subprocess.Popen([exe(), *_fmt(argv, d)], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env())
        chunks: list[str] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
        reader.start()
        t0 = time.time()
        while not ready(d, "".join(chunks)) and proc.poll() is None and time.time() - t0 < limit:
            time.sleep(0.05)
        if proc.poll() is not None:  # finished before the signal: the case could not be run as meant
            reader.join(5)
            return _NOT_INJECTED, "", "finished before the signal was sent:\n" + "".join(chunks)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return _NO_STOP, "", "did not stop within 60 s of the signal\n" + "".join(chunks)
        reader.join(10)
        out = proc.stdout.read()
        if then is None:
            return proc.returncode, out, "".join(chunks)
        if proc.returncode != -sig:
            return proc.returncode, out, f"expected death by signal {sig}, got {proc.returncode}:\n" + "".join(chunks)
        p2 = subprocess.run([exe(), *_fmt(then, d)], cwd=d, capture_output=True, text=True, env=env(), timeout=limit)
        return p2.returncode, p2.stdout, p2.stderr
    return run


_KILL_AT = """
import os, signal, sys
real_replace = os.replace
where = sys.argv.pop(1)
def replace(a, b, *k, **kw):
    if where == "before_rename" and "checkpoint_00000002" in str(b):
        os.kill(os.getpid(), signal.SIGKILL)
    r = real_replace(a, b, *k, **kw)
    if where == "after_rename" and "checkpoint_00000002" in str(b):
        os.kill(os.getpid(), signal.SIGKILL)
    return r
os.replace = replace
from unrolled3d.cli import main
sys.exit(main(sys.argv[1:]))
"""


def kill_inject_runner(where: str):
    """A 4-step run killed with -9 just ``before_rename`` or ``after_rename`` of its second checkpoint
    (injected by wrapping ``os.replace``), then ``--resume``: the observation of the resume."""

    def run(d: Path) -> tuple[int, str, str]:
        (d / "kill.py").write_text(_KILL_AT)
        (d / "c.toml").write_text(toml(steps=4))
        p = subprocess.run([sys.executable, str(d / "kill.py"), where, "train", str(d / "c.toml"), "--out-dir",
                            str(d / "run"), "--quiet"], cwd=d, capture_output=True, text=True, env=env(), timeout=120)
        if p.returncode != -signal.SIGKILL:
            return p.returncode, p.stdout, f"expected kill -9, got {p.returncode}:\n{p.stderr}"
        p = subprocess.run([exe(), "train", str(d / "c.toml"), "--out-dir", str(d / "run"), "--resume"], cwd=d,
                           capture_output=True, text=True, env=env(), timeout=120)
        return p.returncode, p.stdout, p.stderr
    return run


def killed_at_checkpoint(k: int):
    """``ready`` of a kill -9 case: the run has written checkpoint ``k`` (older ones may be pruned)."""
    return lambda d, err: newest_checkpoint(d / "run" / "checkpoints") >= k


def after_seconds(seconds: float):
    """``ready`` of a signal case: ``seconds`` after the command started (the first call)."""
    started: dict[Path, float] = {}

    def ready(d: Path, err: str) -> bool:
        return time.time() - started.setdefault(d, time.time()) > seconds
    return ready


def same_model_as_reference(steps: int):
    """The resumed run's model.pt equals an uninterrupted run's (``inputs.reference``), with no temporary left."""

    def check(d: Path, rc: int, out: str, err: str) -> bool | str:
        import torch

        from .inputs import reference

        a = torch.load(d / "run" / "model.pt", weights_only=True)["state_dict"]
        b = torch.load(reference(steps), weights_only=True)["state_dict"]
        leftovers = [p.name for p in (d / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
        if leftovers:
            return f"temporary files left: {leftovers}"
        if "resumed from" not in err:
            return "no 'resumed from' note"
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) or "weights differ from the reference"
    return check


def help_runner(sub: str):
    """``unrolled3d [sub] --help`` in a new process; its wall time appended to stderr as ``[wall t s]``."""

    def run(d: Path) -> tuple[int, str, str]:
        t0 = time.perf_counter()
        p = subprocess.run([exe(), *([sub] if sub else []), "--help"], cwd=d, capture_output=True, text=True,
                           env=env(), timeout=60)
        return p.returncode, p.stdout, p.stderr + f"\n[wall {time.perf_counter() - t0:.2f} s]"
    return run
