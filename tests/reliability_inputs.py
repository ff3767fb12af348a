"""Inputs and helpers of the tests/test_reliability_*.py modules: the command line in this process
or in a fresh one, tiny measurements and model files, hostile files built on the spot, a dead
process id, and a small full file system (a tmpfs in a user namespace) where one can be mounted."""
from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from unrolled3d.cli import main

REPO = Path(__file__).resolve().parents[1]


def cli(*argv: Any) -> tuple[int, str, str]:
    """The command line in this process: ``(exit status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def env() -> dict[str, str]:
    """A fresh process's environment: this checkout first on the path, one thread, unbuffered."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that the command line's error reporting wrote."""
    return [line for line in stderr.splitlines() if line.startswith("unrolled3d ")]


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def measurements(path: Path, size: int = 8, views: int = 4, dtype: torch.dtype = torch.float32,
                 geometry_change: dict | None = None) -> Path:
    """A measurements file of a Shepp-Logan phantom (``geometry_change``: entries of the geometry's
    dictionary replaced, e.g. ``vol_offset``)."""
    from unrolled3d.data import shepp_logan_3d, voxelize
    from unrolled3d.io import save_measurements
    from unrolled3d.io.files import MEAS_FORMAT
    from unrolled3d.ops import cone_project
    from unrolled3d.physics import standard_cone_beam

    g = standard_cone_beam(size, views)
    x = voxelize(shepp_logan_3d(0.45 * size), g.vol_shape)[None, None]
    y = cone_project(x, g)
    if geometry_change is None:
        save_measurements(path, y.to(dtype), g, x_true=x.to(dtype), meta={"phantom": "shepp-logan"})
    else:  # a geometry the writer would not take from us, as a file could hold it
        torch.save({"format": MEAS_FORMAT, "y": y.to(dtype), "meta": "{}",
                    "geometry": json.dumps({**g.to_dict(), **geometry_change})}, path)
    return path


def tiny_model(path: Path, size: int = 8) -> Path:
    """A model file of a 1-iteration, 2-channel network for ``size``^3 volumes (untrained)."""
    from unrolled3d.io import save_model
    from unrolled3d.models import build_model
    from unrolled3d.training import RunConfig

    toml = path.with_suffix(".toml")
    toml.write_text(f"[geometry]\nsize = {size}\nviews = 4\n[model]\nn_iter = 1\nbase = 2\ndepth = 1\n"
                    f"[partition]\npatch = {size // 2}\n[train]\nsteps = 1\n")
    run = RunConfig.from_toml(toml)
    config = {**run.to_dict(), "train": run.train.to_table()}
    config["train"].pop("out_dir", None)
    torch.manual_seed(0)
    save_model(path, build_model(run, (size,) * 3), config)
    return path


class Giant:
    """Pickles as a tensor of ``shape`` whose strides are all 0 over a one-value storage: a few
    bytes on disk that declare ``prod(shape)`` values (torch itself cannot make one that large)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def __reduce__(self):
        storage = torch.storage.TypedStorage(wrap_storage=torch.zeros(1).untyped_storage(), dtype=torch.float32,
                                             _internal=True)
        return (torch._utils._rebuild_tensor_v2,
                (storage, 0, self.shape, (0,) * len(self.shape), False, collections.OrderedDict()))


def can_mount_tmpfs() -> bool:
    """Whether this process may mount a tmpfs in a new user and mount namespace (``unshare -rm``)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


def run_on_full_disk(script: str, size: str = "512k", timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the Python ``script`` in a fresh process whose ``sys.argv[1]`` is a folder on a new tmpfs
    of ``size`` bytes (mounted in a private user and mount namespace; gone when it exits)."""
    shell = ('d=$(mktemp -d) && mount -t tmpfs -o size=' + size + ' tmpfs "$d" && '
             '"$0" -c "$1" "$d"; rc=$?; umount "$d"; rmdir "$d"; exit $rc')
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell, sys.executable,
                           script], capture_output=True, text=True, timeout=timeout, env=env())
