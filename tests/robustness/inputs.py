"""The input files the cases copy from (made once per session) and the helpers that spoil them.

``make(folder)`` writes: measurements ``m.pt`` (8^3, 4 views), ``m32.pt``, ``m64.pt``, ``m160.pt``; a model file
``model.pt``; fitted normal operators ``h.pt`` (8^3) and ``h16.pt``; a volume ``v.*`` in every format; a
Walnut scan folder; a finished 2-step command-line run ``run2``. The reference runs of the kill -9
cases (60 and 4 steps, fresh processes of the entry point) are made on first use (``reference``).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from .catalogue import toml

_FOLDER: list[Path] = []  # set once by make()

#: where the pickle payload would leave its mark, were a loader to unpickle it (checked after every case)
PWNED = Path(tempfile.gettempdir()) / f"unrolled3d_robustness_pwned_{os.getpid()}"


def fx(*names: str) -> Path:
    """The inputs folder, or a file in it."""
    if not _FOLDER:
        raise RuntimeError("the inputs are made by the session fixture (tests/robustness/conftest.py) first")
    return _FOLDER[0].joinpath(*names)


def cp(d: Path, *names: str) -> None:
    """Copy inputs into the case folder (so that its inputs are its own, hashed before and after)."""
    for n in names:
        src, dst = fx(n), d / Path(n).name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)


def g8():
    """The inputs' scan: 8^3 volume, 4 views (``standard_cone_beam(8, 4)``)."""
    from unrolled3d.physics import standard_cone_beam

    return standard_cone_beam(8, 4)


#: a small circular scan's arguments (``ConeBeamGeometry.circular(**CIRC)``), varied one at a time
CIRC = dict(n_views=4, source_origin=40.0, origin_detector=20.0, det_shape=(8, 10), det_spacing=1.5, vol_shape=(6, 6, 6))


def volume():
    """The 8^3 volume the ``v.*`` inputs hold (uniform random, seed 0)."""
    import torch

    return torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(0))


def env() -> dict[str, str]:
    """The environment of every process a case starts: one thread, unbuffered output."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def exe() -> str:
    """The console script ``unrolled3d`` beside this Python (a virtual environment's), else on ``PATH``."""
    beside = Path(sys.executable).with_name("unrolled3d")
    return str(beside) if beside.exists() else (shutil.which("unrolled3d") or "unrolled3d")


class _Evil:
    """A pickle payload: loading it with full unpickling would run ``os.system``."""

    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


def write_pickle(path: Path, payload: Any = None) -> None:
    """``torch.save`` of an arbitrary object: a pickle that ``weights_only=True`` must refuse."""
    import pickle

    import torch

    torch.save({"format": "x", "evil": _Evil()} if payload is None else payload, path, pickle_module=pickle)


def copy_m(d: Path) -> None:
    """The measurements ``m.pt`` into the case folder."""
    cp(d, "m.pt")


def copy_all(d: Path) -> None:
    """The measurements, a model and a normal operator (``m.pt``, ``model.pt``, ``h.pt``) into the case folder."""
    cp(d, "m.pt", "model.pt", "h.pt")


def torch_variant(src: str, dst: Path, change: Callable[[dict], Any]) -> None:
    """``dst``: the input ``src`` (a torch file of a dict) with ``change`` applied to its dict."""
    import torch

    state = torch.load(fx(src), weights_only=True)
    torch.save(change(dict(state)), dst)


def np_save(p: Path, ndim: int = 3, nan: bool = False, inf: bool = False) -> None:
    """A random float32 ``8^ndim`` array, optionally with one NaN or inf, as ``.npy`` bytes under any name."""
    import numpy as np

    a = np.random.default_rng(0).random((8,) * ndim).astype(np.float32)
    if nan:
        a[1, 2, 3] = np.nan
    if inf:
        a[1, 2, 3] = np.inf
    with open(p, "wb") as f:  # np.save(path) would append .npy to a name that lacks it
        np.save(f, a)


def torch_save(obj: Any, p: Path) -> None:
    import torch

    torch.save(obj, p)


def vol_ok(p: Path) -> bool | str:
    """The volume file ``p`` reads back as a finite 8^3 volume."""
    import torch

    from unrolled3d.io import read_volume

    v, _ = read_volume(p)
    return (tuple(v.shape) == (8, 8, 8) and bool(torch.isfinite(torch.as_tensor(v)).all())) or f"read back {tuple(v.shape)}"


def newest_checkpoint(folder: Path) -> int:
    """The step of the newest checkpoint in ``folder`` (0: none yet); older ones may be pruned already."""
    steps = [int(p.stem.split("_")[1]) for p in folder.glob("checkpoint_*.pt")] if folder.is_dir() else []
    return max(steps, default=0)


def nan_geometry_row(w: Path) -> None:
    """The last number of the first row of the Walnut geometry file becomes ``nan``."""
    lines = (w / "scan_geom_corrected.geom").read_text().splitlines()
    lines[0] = " ".join([*lines[0].split()[:-1], "nan"])
    (w / "scan_geom_corrected.geom").write_text("\n".join(lines) + "\n")


def make(folder: Path) -> None:
    """Write every input into ``folder`` (see the module docstring) and make it the cases' inputs."""
    import torch
    from test_walnut import make_scan  # tests/ is on sys.path under pytest

    from unrolled3d.cli.commands import load_train_config
    from unrolled3d.data import shepp_logan_3d, voxelize
    from unrolled3d.io import save_measurements, save_model, write_volume
    from unrolled3d.models import build_model
    from unrolled3d.normal import DiagCirculantWrapper
    from unrolled3d.ops import cone_project
    from unrolled3d.physics import ConeBeamCT, standard_cone_beam

    from .observe import forked_cli

    folder.mkdir(parents=True, exist_ok=True)
    _FOLDER[:] = [folder]
    for size, views, name in [(8, 4, "m.pt"), (32, 16, "m32.pt"), (64, 32, "m64.pt"), (160, 120, "m160.pt")]:
        g = standard_cone_beam(size, views)
        x = voxelize(shepp_logan_3d(0.45 * size), g.vol_shape)[None, None]
        save_measurements(folder / name, cone_project(x, g), g, x_true=x, meta={"phantom": "shepp-logan"})
    (folder / "c.toml").write_text(toml(steps=1))
    cfg = load_train_config(folder / "c.toml")
    cfg["train"].pop("out_dir", None)
    torch.manual_seed(0)
    save_model(folder / "model.pt", build_model(cfg, (8, 8, 8)), cfg)
    for size, name in [(8, "h.pt"), (16, "h16.pt")]:
        g = standard_cone_beam(size, 4)
        w = DiagCirculantWrapper(ConeBeamCT(g, normalize=True), g.vol_shape)
        w.fit(n_iter=2, progress=False)
        w.save(folder / name)
    vol = volume()
    for ext in [".npy", ".h5", ".tif", ".nii.gz", ".pt"]:
        write_volume(folder / f"v{ext}", vol, 0.5)
    make_scan(folder / "walnut")
    # a finished command-line run (checkpoints/ + model.pt), which the run cases copy
    (folder / "c2.toml").write_text(toml(steps=2))
    rc, _, err = forked_cli(["train", str(folder / "c2.toml"), "--out-dir", str(folder / "run2"), "--quiet"], folder, 300)
    if rc != 0:
        raise RuntimeError(f"the 2-step input run failed (exit {rc}): {err[-1000:]}")


@functools.lru_cache(maxsize=None)
def reference(steps: int) -> Path:
    """``model.pt`` of an uninterrupted ``steps``-step run, made like the kill -9 runs it is compared with
    (a fresh process of the entry point, one thread); both references start together on first use."""
    procs = {}
    for n in (60, 4):
        if not (fx(f"ref{n}") / "model.pt").exists():
            fx(f"c{n}.toml").write_text(toml(steps=n))
            procs[n] = subprocess.Popen([exe(), "train", str(fx(f"c{n}.toml")), "--out-dir", str(fx(f"ref{n}")),
                                         "--quiet"], cwd=fx(), env=env(), stderr=subprocess.PIPE, text=True)
    for n, p in procs.items():
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"the {n}-step reference run failed (exit {p.returncode}): {err[-1000:]}")
    return fx(f"ref{steps}", "model.pt")
