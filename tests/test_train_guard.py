"""Training under concurrency, signals and hostile files (issue 29's training items, issue 30's
``train --json``): one test per defect, each of which failed on the code before (585a220).

Real processes where the defect is between processes: two ``train`` on one folder, SIGTERM and
SIGHUP sent to a running ``train``. The hostile TOML and model files are built here.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unrolled3d.cli import main
from unrolled3d.io import load_model, save_model, write_volume
from unrolled3d.memory import PeakRSS

pytestmark = pytest.mark.usefixtures("one_thread")

TOML = ("[geometry]\nsize = 16\nviews = 8\n[model]\nn_iter = 1\nbase = 2\ndepth = 1\n[partition]\npatch = 8\n"
        "[train]\nsteps = {steps}\ncheckpoint_every = {every}\nlr = 1e-3\n")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def one_line(err: str, *needles: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("unrolled3d")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


class Running:
    """``unrolled3d <argv>`` in a process of its own, its stderr collected as it comes."""

    def __init__(self, argv: list, cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "unrolled3d.cli", *map(str, argv)], cwd=cwd, env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.chunks: list[str] = []
        self.reader = threading.Thread(target=lambda: self.chunks.extend(iter(lambda: self.proc.stderr.read(1), "")),
                                       daemon=True)
        self.reader.start()

    def wait_for(self, ready, timeout: float = 240) -> None:
        t0 = time.time()
        while not ready() and self.proc.poll() is None and time.time() - t0 < timeout:
            time.sleep(0.05)
        assert self.proc.poll() is None, self.stderr()

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=120)
        self.reader.join(timeout=10)
        return self.proc.returncode, self.stderr()

    def stderr(self) -> str:
        return "".join(self.chunks)


def run(argv: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unrolled3d.cli", *map(str, argv)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


# ======================================================================= 1, 2: one process per run folder
def test_a_held_run_folder_is_refused_at_once_to_a_new_run_resume_and_overwrite(tmp_path):
    """Item 1: two runs on one folder both exited 0 and one's model was lost; item 2: ``--resume``
    while the run went on deleted its in-flight checkpoint. The first run now holds the folder:
    the others are refused at once, naming its process and command, and it goes on unharmed."""
    (tmp_path / "long.toml").write_text(TOML.format(steps=100000, every=0))
    (tmp_path / "short.toml").write_text(TOML.format(steps=1, every=1))
    out = tmp_path / "run"
    first = Running(["train", tmp_path / "long.toml", "--out-dir", out], tmp_path)
    try:
        first.wait_for(lambda: "train:" in first.stderr())  # its progress bar: it is training
        for extra in ([], ["--overwrite"], ["--resume"]):
            t0 = time.perf_counter()
            proc = run(["train", tmp_path / "short.toml", "--out-dir", out, *extra], tmp_path)
            assert proc.returncode == 2, proc.stderr
            line = one_line(proc.stderr, "is in use by another run", f"process {first.proc.pid}",
                            f"unrolled3d train {tmp_path / 'long.toml'} --out-dir {out}")
            assert time.perf_counter() - t0 < 60, line  # refused, not waited for
        assert first.proc.poll() is None, first.stderr()
        assert not (out / "model.pt").exists() and not (out / "archived").exists()
        assert not list(out.rglob("checkpoint_*.pt"))  # the short runs wrote nothing
    finally:
        code, err = first.stop(signal.SIGINT)
    assert code == 130, err
    assert not (out / ".run.lock").exists()  # released: the folder can be resumed now
    proc = run(["train", tmp_path / "short.toml", "--out-dir", out, "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr


_HOLD = """
import sys, time
from unrolled3d.training import RunFolder
with RunFolder(sys.argv[1]).claim("holder"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_lock_is_released_by_the_kernel_when_its_holder_is_killed(tmp_path):
    """kill -9 runs no clean-up: the lock file stays, but no one holds it, and the next claim works."""
    from unrolled3d.training import RunFolder, RunFolderInUse

    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                              env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderInUse, match=rf"process {holder.pid} \(holder\)"):
            with RunFolder(tmp_path / "run").claim("second"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "run" / ".run.lock").exists()
    with RunFolder(tmp_path / "run").claim("third"):
        assert json.loads((tmp_path / "run" / ".run.lock").read_text()) == {"pid": os.getpid(), "command": "third"}
        with pytest.raises(RunFolderInUse, match="third"):  # one process, two claims: refused as well
            with RunFolder(tmp_path / "run").claim("fourth"):
                pass
    assert not (tmp_path / "run" / ".run.lock").exists()


def test_stale_temporary_files_are_removed_only_when_their_writer_is_gone(tmp_path):
    """Item 2: clean-up removed every temporary file, a running writer's included."""
    from unrolled3d.data import PhantomDataset
    from unrolled3d.models import UNet3D, UnrolledPGD
    from unrolled3d.partition import PartitionedReconstructor
    from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    from unrolled3d.train import TrainConfig, train  # the name both before and after

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        live_tmp = tmp_path / f".checkpoint_00000002.pt.tmp-{alive.pid}-k3j2.pt"
        dead_tmp = tmp_path / f".checkpoint_00000002.pt.tmp-{gone.pid}-x8q1.pt"
        for p in (live_tmp, dead_tmp):
            p.write_bytes(b"half a checkpoint")
        rec = PartitionedReconstructor(UnrolledPGD(UNet3D(base=2, depth=1), n_iter=1), (8, 8, 8), (4, 4, 4))
        log = train(rec, ConeBeamCT(standard_cone_beam(8, 4), normalize=True), PhantomDataset(4, 8),
                    TrainConfig(steps=1, out_dir=tmp_path, progress=False))
        assert live_tmp.exists() and not dead_tmp.exists()
        assert log["removed_temporaries"] == [str(dead_tmp)]
    finally:
        alive.kill()
        alive.wait()


def test_the_temporary_file_of_a_write_names_its_process(tmp_path):
    from unrolled3d.io import atomic_path

    with atomic_path(tmp_path / "a.txt") as tmp:
        assert tmp.name.startswith(f".a.txt.tmp-{os.getpid()}-")
        tmp.write_text("x")


# ======================================================================= 7: resume compares the data's values
def _data_toml(steps: int) -> str:
    return ("[geometry]\nsize = 16\nviews = 8\n[data]\npaths = [\"vol.npy\"]\n[model]\nn_iter = 1\nbase = 2\n"
            f"depth = 1\n[partition]\npatch = 8\n[train]\nsteps = {steps}\ncheckpoint_every = 1\n")


def test_resume_refuses_a_data_file_whose_values_changed(tmp_path, monkeypatch):
    """Item 7: the fingerprint recorded a data file's path, size and shape only: changed values
    (same size, even with the modification time put back) were resumed as the same run."""
    monkeypatch.setenv("UNROLLED3D_CACHE_DIR", str(tmp_path / "cache"))
    vol = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    write_volume(tmp_path / "vol.npy", vol)
    (tmp_path / "c.toml").write_text(_data_toml(1))
    assert cli("train", tmp_path / "c.toml", "--out-dir", tmp_path / "run", "--quiet")[0] == 0
    st = (tmp_path / "vol.npy").stat()
    write_volume(tmp_path / "vol.npy", vol[::-1].copy())  # the same shape, size and voxel size
    os.utime(tmp_path / "vol.npy", ns=(st.st_atime_ns, st.st_mtime_ns))
    (tmp_path / "c.toml").write_text(_data_toml(2))
    code, _, err = cli("train", tmp_path / "c.toml", "--out-dir", tmp_path / "run", "--resume")
    assert code == 2
    one_line(err, "belongs to another run", "data.sha256")
    write_volume(tmp_path / "vol.npy", vol)  # the values back: the same run again
    code, out, err = cli("train", tmp_path / "c.toml", "--out-dir", tmp_path / "run", "--resume", "--json")
    assert code == 0, err
    assert json.loads(out)["steps"] == 2


def test_file_hashes_are_streamed_once_and_cached_by_size_and_times(tmp_path, monkeypatch):
    import hashlib

    from unrolled3d.training.identity import HASH_CACHE_NAME, file_sha256

    monkeypatch.setenv("UNROLLED3D_CACHE_DIR", str(tmp_path / "cache"))
    p = tmp_path / "v.bin"
    p.write_bytes(os.urandom(3 << 20))  # three blocks of the stream
    key = str(p.resolve())
    assert file_sha256([p]) == {key: hashlib.sha256(p.read_bytes()).hexdigest()}
    cache_file = tmp_path / "cache" / HASH_CACHE_NAME
    cache = json.loads(cache_file.read_text())
    cache[key]["sha256"] = "0" * 64  # what the cache says is what is used, while the stamp holds
    cache_file.write_text(json.dumps(cache))
    assert file_sha256([p])[key] == "0" * 64
    p.write_bytes(p.read_bytes())  # rewritten: new times, hashed again
    assert file_sha256([p])[key] == hashlib.sha256(p.read_bytes()).hexdigest()


# ======================================================================= 8: SIGTERM and SIGHUP, quoted hints
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_train_like_ctrl_c_with_a_quoted_resume_hint(tmp_path, sig, code):
    """Item 8: SIGTERM exited 143 with no word and no resume hint; the hint was not shell-quoted
    (a folder with a space broke the pasted command)."""
    (tmp_path / "my config.toml").write_text(TOML.format(steps=100000, every=1))
    out = tmp_path / "my run"
    proc = Running(["train", tmp_path / "my config.toml", "--out-dir", out, "--quiet"], tmp_path)
    proc.wait_for(lambda: any((out / "checkpoints").glob("checkpoint_*.pt")) if (out / "checkpoints").is_dir()
                  else False)
    status, err = proc.stop(sig)
    assert status == code, err
    line = one_line(err, f"stopped by {signal.Signals(sig).name}", "--resume")
    pasted = shlex.split(line.split("`")[1])
    assert pasted == ["unrolled3d", "train", str(tmp_path / "my config.toml"), "--out-dir", str(out), "--resume"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not (out / ".run.lock").exists()


_TERM_AT_RENAME = """
import os, signal, sys
real = os.replace
def replace(a, b, *k, **kw):
    if "checkpoint_00000002" in str(b):
        os.kill(os.getpid(), signal.SIGTERM)   # a scheduler stops the job between the write and the rename
    return real(a, b, *k, **kw)
os.replace = replace
from unrolled3d.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_a_checkpoint_write_removes_its_temporary_file(tmp_path):
    """Item 8: SIGTERM killed the process where it stood and left ``.checkpoint_*.tmp-*`` behind."""
    (tmp_path / "c.toml").write_text(TOML.format(steps=3, every=1))
    (tmp_path / "term.py").write_text(_TERM_AT_RENAME)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(tmp_path / "term.py"), "train", str(tmp_path / "c.toml"), "--out-dir",
                           str(out), "--quiet"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 143, proc.stderr
    one_line(proc.stderr, "stopped by SIGTERM", "--resume")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_00000001.pt"]


def test_the_recorded_command_is_shell_quoted(tmp_path):
    (tmp_path / "c.toml").write_text(TOML.format(steps=1, every=1))
    out = tmp_path / "a run; rm -rf x"
    assert cli("train", tmp_path / "c.toml", "--out-dir", out, "--quiet")[0] == 0
    _, config = load_model(out / "model.pt")
    assert shlex.split(config["command"]) == ["unrolled3d", "train", str(tmp_path / "c.toml"), "--out-dir", str(out),
                                              "--quiet"]


# ======================================================================= 5, 9: hostile configurations
@pytest.mark.parametrize("model, key", [
    ("depth = 64", "[model] depth"),          # grew to 18.8 GB and was killed
    ("base = 100000000", "[model] base"),     # reached 11.7 GB
    ("n_iter = 1000000000", "[model] n_iter"),  # grew without end
    ("base = 1024\ndepth = 10", "[model] depth = 10"),  # within the bounds, beyond any machine: costed
])
def test_a_model_no_machine_holds_is_refused_from_the_toml_naming_the_key(tmp_path, model, key):
    (tmp_path / "c.toml").write_text(f"[geometry]\nsize = 16\nviews = 8\n[model]\n{model}\n[partition]\npatch = 8\n"
                                     f"[train]\nsteps = 1\n")
    with PeakRSS() as mem:
        code, _, err = cli("train", tmp_path / "c.toml", "--out-dir", tmp_path / "run")
    assert code == 2 and not (tmp_path / "run").exists()
    one_line(err, "c.toml", key)
    assert mem.peak_mib is None or mem.peak_mib < 4096


def _hostile_model_file(tmp_path: Path, **model) -> Path:
    """A tiny real model file whose configuration then claims another network."""
    from unrolled3d.models import build_model

    cfg = {"geometry": {"size": 16, "views": 8}, "phantoms": {"kind": "ellipsoids", "seed": 0},
           "model": {"n_iter": 1, "base": 2, "depth": 1, "shared": True}, "partition": {"patch": 8},
           "train": {"steps": 1, "noise_std": 0.01}}
    path = tmp_path / "hostile.pt"
    save_model(path, build_model(cfg, (16, 16, 16)), cfg)
    state = torch.load(path, weights_only=True)
    config = json.loads(state["config"])
    config["model"].update(model)
    state["config"] = json.dumps(config)
    torch.save(state, path)
    assert path.stat().st_size < 64 * 1024
    return path


@pytest.mark.parametrize("model, key", [({"depth": 64}, "[model] depth"), ({"base": 1024, "depth": 10}, "[model] depth = 10")])
def test_a_small_model_file_claiming_a_huge_network_is_refused_before_allocation(tmp_path, model, key):
    """Item 5: a 12 KB model file saying ``depth = 64`` made ``reconstruct`` and ``demo`` allocate
    4.3 GB before failing."""
    hostile = _hostile_model_file(tmp_path, **model)
    assert cli("simulate", "--size", 16, "--views", 8, "--out", tmp_path / "m.pt", "--quiet")[0] == 0
    for argv in (["reconstruct", tmp_path / "m.pt", "--method", "unrolled", "--weights", hostile, "--out",
                  tmp_path / "x.npy"],
                 ["demo", "--quick", "--weights", hostile, "--out", tmp_path / "d.png"]):
        with PeakRSS() as mem:
            code, _, err = cli(*argv)
        assert code == 2, err
        one_line(err, "hostile.pt", key)
        assert mem.peak_mib is None or mem.peak_mib < 4096


@pytest.mark.parametrize("text, needles", [
    ("[train]\nseed = 1180591620717411303424\n", ["c.toml", "[train] seed", "must be an integer in"]),  # 2**70
    ("[phantoms]\nseed = 1180591620717411303424\n", ["c.toml", "[phantoms] seed"]),
    ("[train]\nsteps = " + "[" * 5000 + "]" * 5000 + "\n", ["c.toml", "nested too deeply"]),
    ("[model]\ninit = \"" + "x" * 200_000 + "\"\n", ["c.toml", "[model] init", "at most 4096 characters"]),
])
def test_hostile_toml_values_are_one_short_clear_line(tmp_path, text, needles):
    """Item 9: ``seed = 2^70`` gave "Overflow when unpacking long long", a deeply nested TOML
    "maximum recursion depth exceeded", a 200 KB ``init`` a 200 KB error line."""
    base = "[geometry]\nsize = 16\nviews = 8\n[partition]\npatch = 8\n"
    (tmp_path / "c.toml").write_text(base + text)
    code, _, err = cli("train", tmp_path / "c.toml", "--out-dir", tmp_path / "run")
    assert code == 2 and not (tmp_path / "run").exists()
    line = one_line(err, *needles)
    assert len(line) < 1000


# ======================================================================= issue 30: train --json
def test_train_json_prints_exactly_one_json_object_and_quiet_prints_nothing(tmp_path):
    """Issue 30: ``train --json`` printed ``step N: val PSNR ...`` before its JSON object (on
    stdout), so ``json.load`` failed; ``--quiet`` printed those lines too."""
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        write_volume(tmp_path / f"{name}.npy", rng.random((16, 16, 16)).astype(np.float32))
    (tmp_path / "c.toml").write_text(
        "[geometry]\nsize = 16\nviews = 8\n[data]\npaths = [\"a.npy\", \"b.npy\"]\nval_files = 1\nval_crops = 1\n"
        "[model]\nn_iter = 1\nbase = 2\ndepth = 1\n[partition]\npatch = 8\n[train]\nsteps = 2\nval_every = 1\n")
    proc = run(["train", tmp_path / "c.toml", "--out-dir", tmp_path / "run", "--json"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)  # the whole of stdout: one object, nothing else
    assert payload["steps"] == 2 and [v["step"] for v in payload["val"]] == [1, 2]
    proc = run(["train", tmp_path / "c.toml", "--out-dir", tmp_path / "quiet", "--quiet"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "val PSNR" not in proc.stderr and "it/s" not in proc.stderr
    proc = run(["train", tmp_path / "c.toml", "--out-dir", tmp_path / "shown"], tmp_path, timeout=300)
    assert proc.returncode == 0 and "val PSNR" in proc.stderr and "val PSNR" not in proc.stdout
