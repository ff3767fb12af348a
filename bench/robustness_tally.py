#!/usr/bin/env python
"""Issue 15's tally, reproducible: bad, hostile and edge-case inputs and faults, classified from
what actually happens.

Run from a source checkout (the venv's ``unrolled3d`` entry point must be on ``PATH`` or beside
this Python)::

    python bench/robustness_tally.py --out bench/results/robustness_tally.json

Every case states what it expects (``error``: a bad input; ``ok``: a valid one, with a check of
the result; ``interrupt``: Ctrl-C; ``either``: a clear error and a correct result are both right)
and is classified automatically:

``clear_error``
    Python API: a ``ValueError``/``TypeError``/``OSError``/``ArithmeticError`` (``FileFormatError``
    is a ``ValueError``) whose message holds the case's needles (the argument or file it names);
    command line: exit 2 with exactly one ``unrolled3d ...: error:`` line holding the needles and no
    traceback; Ctrl-C: exit 130 with one ``interrupted`` line.
``ok``
    a valid input accepted and its result checked.
``vague_error``
    the right kind of error, but its message does not name what the case says it must.
``silent_accept``
    a bad input accepted with no error.
``refused_valid``
    a valid input refused; ``wrong_result``: accepted, but the check of the result failed.
``destructive_write``
    an input file (any file present in the case's folder before the run and not named as an
    output) changed, removed, or lost its mode or its link.
``traceback``
    a traceback on the command line, exit 1 (the CLI's "this is a bug"), or an exception of an
    unexpected type from the API (``KeyError``, ``RuntimeError``, ``IndexError`` ...).
``crash`` / ``hang``
    the process died (signal) / ran past the case's time limit.

API cases run in a worker subprocess (so a crash is observed, not suffered); the command-line
cases run the installed ``unrolled3d`` in subprocesses, two at a time, each in its own folder under
a temporary directory that is removed at the end. ``OMP_NUM_THREADS=1`` everywhere.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import os
import platform
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

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")

GOOD = ("clear_error", "ok")
CLASSES = ("clear_error", "ok", "vague_error", "silent_accept", "refused_valid", "wrong_result",
           "destructive_write", "traceback", "crash", "hang")
#: exception types that are a clear answer to bad input (when their message names the culprit)
EXPECTED_API_ERRORS = (ValueError, TypeError, OSError, ArithmeticError, MemoryError)

ITEMS = {
    1: "runs never mix", 2: "outputs never destroy inputs / sidecars", 3: "durability, kill -9, resume",
    4: "missing keys, wrong formats, pickles, empty files; one line", 5: "NaN / Inf / overflow",
    6: "permissions and symbolic links", 7: "progress and silent long work", 8: "integers, late checks, endings, huge sizes",
}

# tiny training configuration (8^3, 4 views, one unrolled iteration of a 2-channel U-Net, 4^3 patches)
TOML = ("[geometry]\nsize = 8\nviews = 4\n[model]\nn_iter = 1\nbase = 2\ndepth = 1\n[partition]\npatch = 4\n"
        "[train]\nsteps = {steps}\ncheckpoint_every = 1\nlr = {lr}\n{extra}")


def toml(steps: int = 2, lr: str = "1e-3", extra: str = "", **sections: dict[str, str]) -> str:
    """The tiny TOML with values replaced or added: ``toml(geometry={"size": "8.5"})``."""
    base = {"geometry": {"size": "8", "views": "4"}, "model": {"n_iter": "1", "base": "2", "depth": "1"},
            "partition": {"patch": "4"}, "train": {"steps": str(steps), "checkpoint_every": "1", "lr": lr}}
    for sec, vals in sections.items():
        base.setdefault(sec, {}).update(vals)
    return "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for s, kv in base.items()) + extra


# =============================================================================================== cases
@dataclasses.dataclass
class Case:
    """One input or fault. ``fn(d)`` (API) or ``argv`` / ``runner(d)`` (CLI) runs it in folder ``d``."""

    id: str
    item: int
    surface: str  # "api" or "cli"
    expect: str  # "error", "ok", "interrupt", "either"
    needles: tuple[str, ...] = ()
    fn: Callable[[Path], Any] | None = None
    argv: Sequence[str] | None = None
    runner: Callable[[Path], tuple[int, str, str]] | None = None
    setup: Callable[[Path], None] | None = None
    check: Callable[..., Any] | None = None
    outputs: tuple[str, ...] = ()  # names in d that the case may write (not inputs)
    timeout: float = 120.0
    what: str = ""
    errors: tuple[type, ...] = ()  # further exception types that are a clear answer for this case


FX: Path = Path(".")  # fixtures folder, set by the supervisor and the worker


def cp(d: Path, *names: str) -> None:
    """Copy fixtures into the case folder (so that its inputs are its own, hashed before and after)."""
    for n in names:
        src = FX / n
        dst = d / Path(n).name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)


def torch_variant(src: str, dst: Path, change: Callable[[dict], Any]) -> None:
    import torch

    state = torch.load(FX / src, weights_only=True)
    torch.save(change(dict(state)), dst)


class _Evil:
    """A pickle payload: loading it with full unpickling would run ``os.system``."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/unrolled3d_tally_pwned",))


def write_pickle(path: Path, payload: Any = None) -> None:
    import pickle

    import torch

    # torch.save of an arbitrary object is a pickle that weights_only=True must refuse
    torch.save({"format": "x", "evil": _Evil()} if payload is None else payload, path, pickle_module=pickle)


# ---------------------------------------------------------------------------- API catalogue
def api_cases() -> list[Case]:  # noqa: C901 - a catalogue
    import numpy as np
    import torch

    from unrolled3d.errors import FileFormatError  # noqa: F401 - imported so a bad install fails here
    from unrolled3d.geometry import ConeBeamGeometry
    from unrolled3d.io import (check_not_input, check_pt_name, load_measurements, load_model, read_volume,
                               save_measurements, write_volume)
    from unrolled3d.physics import ConeBeamCT, standard_cone_beam

    cases: list[Case] = []

    def A(id: str, item: int, expect: str, needles: str | tuple, fn, **kw) -> None:
        cases.append(Case(f"api.{id}", item, "api", expect, (needles,) if isinstance(needles, str) else needles,
                          fn=fn, **kw))

    g8 = lambda: standard_cone_beam(8, 4)  # noqa: E731
    circ = dict(n_views=4, source_origin=40.0, origin_detector=20.0, det_shape=(8, 10), det_spacing=1.5,
                vol_shape=(6, 6, 6))

    # ------------------------------------------------------------------ 5. geometry: NaN, inf, overflow
    def geo_vec(scale=1.0, put=None):
        def f(d):
            g = ConeBeamGeometry.circular(**circ)
            vec = np.array(g.vectors) * scale
            if put is not None:
                vec[put[0], put[1]] = put[2]
            return ConeBeamGeometry(vec, (8, 10), (6, 6, 6), 1.0)
        return f

    for name, scale, put, needle in [("vectors_nan", 1.0, (1, 2, float("nan")), "vectors"),
                                     ("vectors_inf", 1.0, (0, 0, float("inf")), "vectors"),
                                     ("vectors_x1e200", 1e200, None, "overflow"),
                                     ("vectors_x1e36", 1e36, None, "overflow"),
                                     ("vectors_x1e-300", 1e-300, None, "vectors"),
                                     ("vectors_zero_u", 1.0, (0, 6, 0.0), "vectors"),
                                     ]:
        if name == "vectors_zero_u":
            def f(d):
                g = ConeBeamGeometry.circular(**circ)
                vec = np.array(g.vectors)
                vec[0, 6:9] = 0.0  # detector u vector of view 0 is zero: a degenerate detector
                return ConeBeamGeometry(vec, (8, 10), (6, 6, 6), 1.0)
            A(f"geometry.{name}", 5, "error", "u", f)
        else:
            A(f"geometry.{name}", 5, "error", needle, geo_vec(scale, put))
    A("geometry.vectors_source_on_detector", 5, "error", "",
      lambda d: ConeBeamGeometry(np.tile(np.array([0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1.0]), (2, 1)), (8, 10), (6, 6, 6)))
    A("geometry.vectors_wrong_columns", 8, "error", "vectors", lambda d: ConeBeamGeometry(np.zeros((4, 11)), (8, 10), 6))
    A("geometry.vectors_empty", 8, "error", "vectors", lambda d: ConeBeamGeometry(np.zeros((0, 12)), (8, 10), 6))
    A("geometry.vectors_string", 8, "error", "vectors", lambda d: ConeBeamGeometry("abc", (8, 10), 6))
    for v, needle in [(1e-310, "voxel_size"), (1e-40, "voxel_size"), (float("nan"), "voxel_size"),
                      (float("inf"), "voxel_size"), (0.0, "voxel_size"), (-1.0, "voxel_size"), (True, "voxel_size"),
                      ("1", "voxel_size"), ((1.0, 1.0), "voxel_size"), (1e300, "")]:
        A(f"geometry.voxel_size={v!r}", 5 if isinstance(v, float) else 8, "error", needle,
          lambda d, v=v: ConeBeamGeometry.circular(**{**circ, "voxel_size": v}))
    for key, v in [("vol_offset", (float("nan"), 0, 0)), ("vol_offset", (0, float("inf"), 0)),
                   ("vol_offset", (1e308, 1e308, 1e308)),
                   ("det_spacing", float("nan")), ("det_spacing", 0.0), ("det_spacing", -1.5),
                   ("source_origin", float("nan")), ("source_origin", float("inf")), ("source_origin", 0.0),
                   ("source_origin", -40.0), ("origin_detector", float("nan")), ("det_offset", (float("nan"), 0.0)),
                   ("angles", [0.0, float("nan"), 1.0, 2.0]), ("angles", [0.0, 1.0]), ("start_angle", float("inf")),
                   ("scan", "half")]:
        A(f"geometry.{key}={v!r}", 5 if key != "scan" and key != "angles" or "nan" in repr(v) else 8, "error", key,
          lambda d, key=key, v=v: ConeBeamGeometry.circular(**{**circ, key: v}))
    for key, v in [("n_views", 0), ("n_views", -3), ("n_views", 2.5), ("n_views", True), ("det_shape", (0, 10)),
                   ("det_shape", (8,)), ("det_shape", (8.5, 10)), ("vol_shape", (6, 6)), ("vol_shape", (0, 6, 6)),
                   ("vol_shape", 6.0), ("vol_shape", (True, True, True)), ("vol_shape", (6, 6, -6))]:
        A(f"geometry.{key}={v!r}", 8, "error", key, lambda d, key=key, v=v: ConeBeamGeometry.circular(**{**circ, key: v}))
    A("geometry.int_vol_shape_is_a_cube", 8, "ok", "", lambda d: ConeBeamGeometry.circular(**{**circ, "vol_shape": 6}),
      check=lambda d, g: g.vol_shape == (6, 6, 6))
    A("geometry.from_dict_missing_key", 4, "error", "vectors",
      lambda d: ConeBeamGeometry.from_dict({k: v for k, v in g8().to_dict().items() if k != "vectors"}))
    A("geometry.restrict_outside", 8, "error", "outside", lambda d: g8().restrict((6, 0, 0), (4, 4, 4)))
    A("geometry.restrict_float_offset", 8, "error", "offset", lambda d: g8().restrict((1.5, 0, 0), (4, 4, 4)))

    # ------------------------------------------------------------------ projector / physics: shapes, dtypes, NaN
    from unrolled3d.ops import cone_backproject, cone_project

    def nan_views(d):
        g = ConeBeamGeometry.circular(**circ)
        g.views_tensor("cpu")[2, 4] = float("nan")
        return cone_project(torch.rand(1, 1, 6, 6, 6), g)
    A("project.nan_views", 5, "error", "NaN", nan_views)
    for name, make, needle in [
        ("4d_input", lambda: torch.rand(1, 8, 8, 8), "5-D"), ("int_dtype", lambda: torch.ones(1, 1, 8, 8, 8, dtype=torch.int64), "float32"),
        ("complex", lambda: torch.ones(1, 1, 8, 8, 8, dtype=torch.complex64), "float32"),
        ("wrong_volume", lambda: torch.rand(1, 1, 8, 8, 9), "8, 8, 8"), ("list", lambda: [[1.0]], "Tensor"),
        ("empty_batch", lambda: torch.rand(0, 1, 8, 8, 8), "empty"), ("numpy", lambda: np.zeros((1, 1, 8, 8, 8), np.float32), "Tensor"),
    ]:
        A(f"physics.A.{name}", 8, "error", needle, lambda d, make=make: ConeBeamCT(g8()).A(make()))
    A("physics.A_adjoint.wrong_sino", 8, "error", "", lambda d: ConeBeamCT(g8()).A_adjoint(torch.rand(1, 1, 4, 9, 9)))
    A("physics.A_dagger.empty", 8, "error", "empty", lambda d: ConeBeamCT(g8()).A_dagger(torch.rand(0, 1, *g8().sino_shape)))
    A("physics.nan_x_propagates", 5, "ok", "", lambda d: ConeBeamCT(g8()).A(torch.full((1, 1, 8, 8, 8), float("nan"))),
      check=lambda d, y: bool(torch.isnan(y).any()), what="NaN in the volume must show in A x, not vanish")
    for key, v, needle in [("fdk_window", "boxcar", "fdk_window"), ("normalize", "yes", "normalize"),
                           ("layout", "zyx", "layout"), ("device", "tpu", "device"), ("geometry", "g", "geometry")]:
        A(f"physics.ctor.{key}={v!r}", 8, "error", needle,
          lambda d, key=key, v=v: ConeBeamCT(v) if key == "geometry" else ConeBeamCT(g8(), **{key: v}))
    A("physics.ctor.device=3.5", 8, "error", "device", lambda d: ConeBeamCT(g8(), device=3.5))
    if not torch.cuda.is_available():
        A("physics.ctor.device=cuda_without_cuda", 8, "error", ("device", "cuda"), lambda d: ConeBeamCT(g8(), device="cuda"))
    A("physics.backproject_wrong_geometry", 8, "error", "", lambda d: cone_backproject(torch.rand(1, 1, 3, 10, 12), g8()))

    def noncontig(d):
        g = g8()
        x = torch.rand(1, 1, 8, 8, 16, dtype=torch.float64)[..., ::2]
        return cone_project(x, g), cone_project(x.contiguous(), g)
    A("project.non_contiguous_equals_contiguous", 8, "ok", "", noncontig, check=lambda d, r: torch.equal(*r))

    def threads(fn):
        def f(d):
            old = torch.get_num_threads()
            try:
                torch.set_num_threads(1)
                a = fn()
                torch.set_num_threads(2)
                b = fn()
            finally:
                torch.set_num_threads(old)
            return a, b
        return f
    xg = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    A("threads.project_1_vs_2", 8, "ok", "", threads(lambda: cone_project(xg, g8())), check=lambda d, r: torch.equal(*r))
    A("threads.backproject_1_vs_2", 8, "ok", "", threads(lambda: cone_backproject(cone_project(xg, g8()), g8())),
      check=lambda d, r: torch.equal(*r))
    A("threads.fdk_1_vs_2", 8, "ok", "", threads(lambda: ConeBeamCT(g8()).A_dagger(cone_project(xg, g8()))),
      check=lambda d, r: torch.equal(*r))

    # fdk
    from unrolled3d.physics import fdk
    for name, kw, needle in [("window_boxcar", {"window": "boxcar"}, "window"), ("scan_bad", {"scan": "third"}, "scan"),
                             ("slab_voxels_0", {"slab_voxels": 0}, "slab_voxels"),
                             ("slab_voxels_float", {"slab_voxels": 2.5}, "slab_voxels"),
                             ("padding_str", {"padding": "yes"}, "padding"), ("progress_str", {"progress": "no"}, "progress")]:
        A(f"fdk.{name}", 8, "error", needle, lambda d, kw=kw: fdk(torch.rand(1, 1, *g8().sino_shape), g8(), **kw))

    # ------------------------------------------------------------------ 8. partition / models: integers, late checks
    from unrolled3d.models import UNet3D, UnrolledPGD
    from unrolled3d.partition import PartitionedReconstructor

    def prec(**kw):
        args = {"img_size": (8, 8, 8), "patch_size": (4, 4, 4)}
        args.update(kw)
        return PartitionedReconstructor(UnrolledPGD(UNet3D(base=2, depth=1), n_iter=1), **args)

    for key, v, needle in [("patch_size", 4.7, "patch_size"), ("patch_size", (True,) * 3, "patch_size"),
                           ("patch_size", 0, "patch_size"), ("patch_size", (16, 16, 16), "patch"),
                           ("patch_size", (4, 4), "patch_size"), ("stride", 2.5, "stride"), ("stride", 0, "stride"),
                           ("stride", (8, 8, 8), "stride"), ("img_size", 8.0, "img_size"), ("img_size", "8", "img_size"),
                           ("img_size", (8, 8, 0), "img_size"), ("n_sweeps", 0, "n_sweeps"), ("n_sweeps", 1.5, "n_sweeps"),
                           ("progress", "no", "progress"), ("sweep_start", "middle", "sweep_start"),
                           ("patch_batch_size", 0, "patch_batch_size")]:
        A(f"partition.{key}={v!r}", 8, "error", needle, lambda d, key=key, v=v: prec(**{key: v}))
    A("partition.int_img_size_is_a_cube", 8, "ok", "", lambda d: prec(img_size=8), check=lambda d, r: r.img_shape == (8, 8, 8))
    A("partition.empty_batch", 8, "error", "empty",
      lambda d: prec()(torch.rand(0, 1, *g8().sino_shape), ConeBeamCT(g8())))
    A("partition.wrong_measurements", 8, "error", "", lambda d: prec()(torch.rand(1, 1, 4, 9, 9), ConeBeamCT(g8())))
    A("partition.physics_volume_mismatch", 8, "error", "",
      lambda d: prec(img_size=(6, 6, 6))(torch.rand(1, 1, *g8().sino_shape), ConeBeamCT(g8())))
    A("partition.with_patch_size_0", 8, "error", "patch", lambda d: prec().with_patch_size(0))
    for key, v in [("base", 2.5), ("depth", -1), ("depth", True), ("in_channels", 0), ("norm", "layer"), ("up", "sideways")]:
        A(f"unet.{key}={v!r}", 8, "error", key, lambda d, key=key, v=v: UNet3D(**{key: v}))
    for key, v in [("n_iter", 0), ("n_iter", 1.5), ("step_size", float("nan")), ("step_size", -1.0), ("shared", "yes"),
                   ("amp", "fp8")]:
        A(f"unrolled.{key}={v!r}", 5 if key == "step_size" else 8, "error", key,
          lambda d, key=key, v=v: UnrolledPGD(UNet3D(base=2, depth=1), **{key: v}))
    A("unrolled.denoiser_not_module", 8, "error", "denoiser", lambda d: UnrolledPGD("unet"))

    # data
    from unrolled3d.data import PhantomDataset, shepp_logan_3d, voxelize
    for key, v in [("length", -1), ("length", 2.5), ("n_ellipsoids", 4.7), ("kind", "cube"), ("vol_shape", 8.5),
                   ("voxel_size", float("nan")), ("seed", 1.5), ("n_ellipsoids", (5, 2))]:
        A(f"phantoms.{key}={v!r}", 5 if key == "voxel_size" else 8, "error", key if key != "n_ellipsoids" or v == 4.7 else "n_ellipsoids",
          lambda d, key=key, v=v: PhantomDataset(**{"length": 2, "vol_shape": 8, key: v}))
    # IndexError is what the sequence protocol requires of an out-of-range index (iteration stops on it)
    A("phantoms.index_out_of_range", 8, "error", "out of range", lambda d: PhantomDataset(2, 8)[5], errors=(IndexError,))
    A("voxelize.huge", 8, "error", ("memory",), lambda d: voxelize(shepp_logan_3d(1.0), (100000,) * 3))
    A("voxelize.radius_nan", 5, "error", "", lambda d: voxelize(shepp_logan_3d(float("nan")), (8, 8, 8)))
    A("voxelize.supersample_0", 8, "error", "supersample", lambda d: voxelize(shepp_logan_3d(3.0), (8, 8, 8), supersample=0))
    A("phantoms.huge_item", 8, "error", "memory", lambda d: PhantomDataset(1, 100000)[0])
    A("standard_cone_beam.size_8.5", 8, "error", "size", lambda d: standard_cone_beam(8.5, 4))
    A("standard_cone_beam.views_0", 8, "error", "", lambda d: standard_cone_beam(8, 0))
    A("standard_cone_beam.scan_half", 8, "error", "scan", lambda d: standard_cone_beam(8, 4, scan="half"))
    A("project.huge_volume", 8, "error", "memory",
      lambda d: ConeBeamCT(ConeBeamGeometry.circular(**{**circ, "vol_shape": (4000, 4000, 4000), "voxel_size": 0.001})).A_adjoint(
          torch.rand(1, 1, 4, 8, 10)))

    # metrics, budget
    from unrolled3d.budget import parse_bytes
    from unrolled3d.metrics import psnr, ssim
    A("psnr.shape_mismatch", 8, "error", "", lambda d: psnr(torch.rand(8, 8, 8), torch.rand(8, 8, 9)))
    A("ssim.shape_mismatch", 8, "error", "", lambda d: ssim(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 9)))
    A("psnr.data_range_0", 8, "error", "data_range", lambda d: psnr(torch.rand(8, 8, 8), torch.rand(8, 8, 8), data_range=0.0))
    for v in ["12Q", "-5G", "", "nanG", "infG", "1e400", True]:
        A(f"parse_bytes={v!r}", 8, "error", "", lambda d, v=v: parse_bytes(v))
    A("parse_bytes.512M", 8, "ok", "", lambda d: parse_bytes("512M"), check=lambda d, r: r == 512 * 2**20)

    # normal operator
    from unrolled3d.normal import DiagCirculantWrapper

    def wrapper():
        return DiagCirculantWrapper(ConeBeamCT(g8(), normalize=True), (8, 8, 8))
    for key, v in [("lr", float("nan")), ("lr", float("inf")), ("lr", 1e30), ("lr", -1.0), ("n_iter", 0), ("n_iter", 2.5),
                   ("batch_size", 0)]:
        A(f"normal.fit.{key}={v!r}", 5 if key == "lr" else 8, "error", "lr" if key == "lr" and v == 1e30 else key,
          lambda d, key=key, v=v: wrapper().fit(**{"n_iter": 3, key: v}))
    A("normal.ctor.kernel_radius=-1", 8, "error", "kernel_radius",
      lambda d: DiagCirculantWrapper(ConeBeamCT(g8(), normalize=True), (8, 8, 8), kernel_radius=-1))
    A("normal.ctor.kernel_radius=2.5", 8, "error", "kernel_radius",
      lambda d: DiagCirculantWrapper(ConeBeamCT(g8(), normalize=True), (8, 8, 8), kernel_radius=2.5))
    A("normal.set_parameters.nan_mask", 5, "error", "spatial_mask",
      lambda d: wrapper().set_parameters(spatial_mask=torch.full((1, 1, 8, 8, 8), float("nan"))))
    A("normal.set_parameters.wrong_mask", 8, "error", "spatial_mask",
      lambda d: wrapper().set_parameters(spatial_mask=torch.ones(1, 1, 8, 8, 9)))

    # MRI
    from unrolled3d.mri import MultiCoilMRI3D, birdcage_maps, variable_density_mask

    def mri_maps(put=None):
        def f(d):
            maps = birdcage_maps(2, (8, 8, 8))
            if put is not None:
                maps[1, 2, 3, 4] = put
            return MultiCoilMRI3D(variable_density_mask((8, 8, 8), acceleration=2), maps)
        return f
    A("mri.coil_maps_nan", 5, "error", "coil_maps", mri_maps(complex("nan")))
    A("mri.coil_maps_inf", 5, "error", "coil_maps", mri_maps(complex("inf")))

    def mri_mask(value):
        def f(d):
            m = variable_density_mask((8, 8, 8), acceleration=2)
            m[0, 0, 0] = value
            return MultiCoilMRI3D(m, birdcage_maps(2, (8, 8, 8)))
        return f
    A("mri.mask_nan", 5, "error", "mask", mri_mask(float("nan")))
    A("mri.mask_shape_mismatch", 8, "error", "", lambda d: MultiCoilMRI3D(variable_density_mask((8, 8, 8), acceleration=2),
                                                                         birdcage_maps(2, (8, 8, 6))))
    for v in [0, 0.5, float("nan")]:
        A(f"mri.mask_acceleration={v!r}", 8, "error", "acceleration",
          lambda d, v=v: variable_density_mask((8, 8, 8), acceleration=v))
    A("mri.birdcage_n_coils_2.5", 8, "error", "n_coils", lambda d: birdcage_maps(2.5, (8, 8, 8)))
    A("mri.empty_batch", 8, "error", "empty",
      lambda d: MultiCoilMRI3D(variable_density_mask((8, 8, 8), acceleration=2), birdcage_maps(2, (8, 8, 8))).A(
          torch.rand(0, 2, 8, 8, 8)))
    A("mri.float16_computed", 8, "ok", "",
      lambda d: MultiCoilMRI3D(variable_density_mask((8, 8, 8), acceleration=2), birdcage_maps(2, (8, 8, 8))).A(
          torch.rand(1, 2, 8, 8, 8).half()), check=lambda d, y: y.dtype == torch.float16 and bool(torch.isfinite(y).all()))

    # ------------------------------------------------------------------ 4. files: every loader, every bad file
    bad_pt = {
        "empty": lambda p: p.write_bytes(b""),
        "garbage": lambda p: p.write_bytes(os.urandom(300)),
        "text": lambda p: p.write_text("hello\n"),
        "pickle": lambda p: write_pickle(p),
        "npy_bytes": lambda p: np.save(open(p, "wb"), np.zeros(3)),
        "truncated": None,  # filled per loader (a truncated copy of the valid file)
        "directory": lambda p: p.mkdir(),
        "missing": lambda p: None,
        "list_payload": lambda p: torch.save([1, 2], p),
    }

    def loader_cases(prefix: str, item: int, src: str, load: Callable[[Path], Any], fname: str, variants: dict):
        for kind, make in {**bad_pt, **variants}.items():
            def f(d, kind=kind, make=make):
                p = d / fname
                if kind == "truncated":
                    p.write_bytes((FX / src).read_bytes()[:200])
                else:
                    make(p)
                return load(p)
            A(f"{prefix}.{kind}", item, "error", Path(fname).name, f)

    def meas_variant(change):
        return lambda p: torch_variant("m.pt", p, change)
    meas_variants = {
        "no_y": meas_variant(lambda s: {k: v for k, v in s.items() if k != "y"}),
        "no_geometry": meas_variant(lambda s: {k: v for k, v in s.items() if k != "geometry"}),
        "geometry_bad_json": meas_variant(lambda s: {**s, "geometry": "{not json"}),
        "geometry_missing_key": meas_variant(lambda s: {**s, "geometry": json.dumps(
            {k: v for k, v in json.loads(s["geometry"]).items() if k != "vol_shape"})}),
        "geometry_nan_vector": meas_variant(lambda s: {**s, "geometry": json.loads(s["geometry"]) and json.dumps(
            {**json.loads(s["geometry"]), "voxel_size": [float("nan")] * 3})}),
        "wrong_format_tag": meas_variant(lambda s: {**s, "format": "something/else"}),
        "y_wrong_shape": meas_variant(lambda s: {**s, "y": s["y"][..., :-1]}),
        "y_not_tensor": meas_variant(lambda s: {**s, "y": [1.0, 2.0]}),
        "y_nan": meas_variant(lambda s: {**s, "y": s["y"].index_fill(2, torch.tensor([1]), float("nan"))}),
        "y_inf": meas_variant(lambda s: {**s, "y": s["y"].index_fill(3, torch.tensor([0]), float("inf"))}),
        "y_int": meas_variant(lambda s: {**s, "y": s["y"].to(torch.int32)}),
        "y_empty_batch": meas_variant(lambda s: {**s, "y": s["y"][:0]}),
        "x_true_wrong_shape": meas_variant(lambda s: {**s, "x_true": torch.rand(1, 1, 3, 3, 3)}),
        "x_true_nan": meas_variant(lambda s: {**s, "x_true": torch.full_like(s["x_true"], float("nan"))}),
        "meta_not_object": meas_variant(lambda s: {**s, "meta": "[1, 2]"}),
    }
    loader_cases("load_measurements", 4, "m.pt", load_measurements, "meas.pt", meas_variants)

    def model_variant(change):
        return lambda p: torch_variant("model.pt", p, change)

    def cfg_without(section):
        def change(s):
            cfg = json.loads(s["config"])
            return {**s, "config": json.dumps({k: v for k, v in cfg.items() if k != section})}
        return change
    model_variants = {
        "no_state_dict": model_variant(lambda s: {k: v for k, v in s.items() if k != "state_dict"}),
        "no_config": model_variant(lambda s: {k: v for k, v in s.items() if k != "config"}),
        "config_bad_json": model_variant(lambda s: {**s, "config": "{oops"}),
        "config_no_model": model_variant(cfg_without("model")),
        "config_no_partition": model_variant(cfg_without("partition")),
    }
    loader_cases("load_model", 4, "model.pt", load_model, "w.pt", model_variants)

    def h_variant(change):
        return lambda p: torch_variant("h.pt", p, change)

    def load_h(p):
        return DiagCirculantWrapper(ConeBeamCT(g8(), normalize=True), (8, 8, 8)).load(p)
    h_variants = {
        "no_fourier_filter": h_variant(lambda s: {k: v for k, v in s.items() if k != "fourier_filter"}),
        "no_scaling": h_variant(lambda s: {k: v for k, v in s.items() if k != "scaling"}),
        "filter_nan": h_variant(lambda s: {**s, "fourier_filter": torch.full_like(s["fourier_filter"], float("nan"))}),
        "filter_wrong_shape": h_variant(lambda s: {**s, "fourier_filter": s["fourier_filter"][..., :-1]}),
        "wrong_format_tag": h_variant(lambda s: {**s, "format": "unrolled3d.Other/1"}),
        "measurements_file": lambda p: shutil.copy(FX / "m.pt", p),
    }
    loader_cases("normal.load", 4, "h.pt", load_h, "h.pt", h_variants)

    from unrolled3d.train import load_checkpoint
    loader_cases("load_checkpoint", 4, "model.pt", load_checkpoint, "checkpoint_00000001.pt", {})

    # volumes: every format
    vol = torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(0))
    for ext in [".npy", ".h5", ".tif", ".nii", ".nii.gz", ".pt"]:
        for kind, make in [("empty", lambda p: p.write_bytes(b"")), ("garbage", lambda p: p.write_bytes(os.urandom(500))),
                           ("missing", lambda p: None)]:
            A(f"read_volume{ext}.{kind}", 4, "error", f"v{ext}",
              lambda d, ext=ext, make=make: (make(d / f"v{ext}"), read_volume(d / f"v{ext}"))[1])
        A(f"write_read{ext}.roundtrip", 4, "ok", "", lambda d, ext=ext: (write_volume(d / f"v{ext}", vol, (0.5, 0.5, 0.5)),
                                                                       read_volume(d / f"v{ext}"))[1],
          check=lambda d, r: torch.allclose(r[0].float(), vol) and tuple(r[1]) == (0.5, 0.5, 0.5),
          outputs=(f"v{ext}", "v.json"))
    A("read_volume.npy_pickled_object", 4, "error", "v.npy",
      lambda d: (np.save(d / "v.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True), read_volume(d / "v.npy"))[1])
    A("read_volume.npy_2d", 4, "error", "v.npy", lambda d: (np.save(d / "v.npy", np.zeros((4, 4))), read_volume(d / "v.npy"))[1])
    A("read_volume.npy_complex", 4, "error", "v.npy",
      lambda d: (np.save(d / "v.npy", np.zeros((4, 4, 4), np.complex64)), read_volume(d / "v.npy"))[1])
    A("read_volume.npy_holds_torch_zip", 8, "error", "v.npy",
      lambda d: (torch.save({"x": torch.zeros(3)}, d / "v.npy"), read_volume(d / "v.npy"))[1])
    A("read_volume.h5_holds_npy", 8, "error", "v.h5",
      lambda d: (np.save(open(d / "v.h5", "wb"), np.zeros((4, 4, 4))), read_volume(d / "v.h5"))[1])
    A("read_volume.unknown_ending", 8, "error", "v.xyz", lambda d: (np.save(open(d / "v.xyz", "wb"), np.zeros((4, 4, 4))),
                                                                   read_volume(d / "v.xyz"))[1])
    A("read_volume.sidecar_bad_json", 4, "error", "v.json",
      lambda d: (np.save(d / "v.npy", np.zeros((4, 4, 4), np.float32)), (d / "v.json").write_text("{bad"),
                 read_volume(d / "v.npy"))[2])
    A("read_volume.sidecar_negative_voxel", 5, "error", "v.json",
      lambda d: (np.save(d / "v.npy", np.zeros((4, 4, 4), np.float32)),
                 (d / "v.json").write_text('{"voxel_size_zyx_mm": [-1, 1, 1]}'), read_volume(d / "v.npy"))[2])
    A("read_volume.sidecar_nan_voxel", 5, "error", "v.json",
      lambda d: (np.save(d / "v.npy", np.zeros((4, 4, 4), np.float32)),
                 (d / "v.json").write_text('{"voxel_size_zyx_mm": [NaN, 1, 1]}'), read_volume(d / "v.npy"))[2])
    A("read_volume.pt_pickle", 4, "error", "v.pt", lambda d: (write_pickle(d / "v.pt"), read_volume(d / "v.pt"))[1])
    A("write_volume.unknown_ending", 8, "error", "x.xyz", lambda d: write_volume(d / "x.xyz", vol))
    A("write_volume.txt_ending", 8, "error", "x.txt", lambda d: write_volume(d / "x.txt", vol))
    A("write_volume.2d", 8, "error", "", lambda d: write_volume(d / "x.npy", torch.rand(4, 4)))
    A("write_volume.voxel_nan", 5, "error", "voxel_size", lambda d: write_volume(d / "x.npy", vol, float("nan")))
    # a denormal but positive voxel size is recorded as given (nothing lost); the geometry refuses it when used
    A("write_volume.voxel_1e-310", 5, "either", "voxel_size", lambda d: write_volume(d / "x.npy", vol, 1e-310),
      check=lambda d, r: read_volume(d / "x.npy")[1] == (1e-310,) * 3, outputs=("x.npy", "x.json"))
    A("check_pt_name.npy", 8, "error", ".pt", lambda d: check_pt_name(d / "m.npy", "measurements"))
    A("save_measurements.nan_y", 5, "error", "", lambda d: save_measurements(
        d / "m.pt", torch.full((1, 1, *g8().sino_shape), float("nan")), g8()))
    A("save_measurements.wrong_shape", 8, "error", "", lambda d: save_measurements(d / "m.pt", torch.rand(1, 1, 4, 5, 5), g8()))
    A("save_measurements.x_true_wrong_shape", 8, "error", "x_true", lambda d: save_measurements(
        d / "m.pt", torch.rand(1, 1, *g8().sino_shape), g8(), x_true=torch.rand(1, 1, 3, 3, 3)))
    A("save_measurements.geometry_dict", 8, "error", "geometry", lambda d: save_measurements(
        d / "m.pt", torch.rand(1, 1, *g8().sino_shape), g8().to_dict()))
    A("save_measurements.roundtrip", 4, "ok", "", lambda d: (save_measurements(d / "m.pt", torch.ones(1, 1, *g8().sino_shape),
                                                                               g8()), load_measurements(d / "m.pt"))[1],
      check=lambda d, r: torch.equal(r[0], torch.ones(1, 1, *g8().sino_shape)) and r[1].to_dict() == g8().to_dict(),
      outputs=("m.pt",))
    A("save_measurements.npy_ending", 8, "error", ".pt", lambda d: save_measurements(
        d / "m.npy", torch.rand(1, 1, *g8().sino_shape), g8()))

    from unrolled3d.mri import read_kspace_npy
    A("read_kspace_npy.torch_zip", 8, "error", "k.npy",
      lambda d: (torch.save({"k": torch.zeros(2, dtype=torch.complex64)}, d / "k.npy"), read_kspace_npy(d / "k.npy"))[1])
    A("read_kspace_npy.real", 4, "error", "k.npy",
      lambda d: (np.save(d / "k.npy", np.zeros((2, 4, 4, 4), np.float32)), read_kspace_npy(d / "k.npy"))[1])
    A("read_kspace_npy.nan", 5, "error", "k.npy",
      lambda d: (np.save(d / "k.npy", np.full((2, 4, 4, 4), np.nan, np.complex64)), read_kspace_npy(d / "k.npy"))[1])

    from unrolled3d.data.walnut import read_walnut, read_walnut_geometry
    for name, text in [("empty", ""), ("eleven_columns", "1 " * 11 + "\n"), ("nan", "nan " * 12 + "\n"),
                       ("words", "a b c\n")]:
        A(f"walnut_geometry.{name}", 4, "error", "g.geom",
          lambda d, text=text: ((d / "g.geom").write_text(text), read_walnut_geometry(d / "g.geom"))[1])
    A("read_walnut.missing_folder", 4, "error", "nowhere", lambda d: read_walnut(d / "nowhere", vol_shape=(8, 8, 8)))

    def walnut_bad(edit, needle, **kw):
        def f(d):
            cp(d, "walnut")
            edit(d / "walnut")
            return read_walnut(d / "walnut", **{"vol_shape": (8, 8, 8), "voxel_size": 1.0, **kw})
        return f
    A("read_walnut.missing_projection", 4, "error", "scan_000003", walnut_bad(lambda w: (w / "scan_000003.tif").unlink(), ""))
    A("read_walnut.missing_dark", 4, "error", "di000000", walnut_bad(lambda w: (w / "di000000.tif").unlink(), ""))
    A("read_walnut.garbage_tif", 4, "error", "scan_000002.tif",
      walnut_bad(lambda w: (w / "scan_000002.tif").write_bytes(b"II*\x00garbage"), ""))
    for key, v in [("view_step", 0), ("binning", 0), ("voxel_size", float("nan")), ("vol_shape", (0, 8, 8)),
                   ("binning", 1000), ("view_step", 2.5)]:
        A(f"read_walnut.{key}={v!r}", 8, "error", key, walnut_bad(lambda w: None, "", **{key: v}))

    # ------------------------------------------------------------------ 2/6. outputs: inputs, sidecars, modes, links
    def h(p: Path) -> tuple:
        return p.read_bytes(), stat.S_IMODE(p.stat().st_mode)

    A("check_not_input.same", 2, "error", "input",
      lambda d: (cp(d, "m.pt"), check_not_input([d / "m.pt"], [d / "m.pt"]))[1])
    A("check_not_input.symlink", 2, "error", "input",
      lambda d: (cp(d, "m.pt"), (d / "l.pt").symlink_to(d / "m.pt"), check_not_input([d / "l.pt"], [d / "m.pt"]))[2])
    A("check_not_input.hardlink", 2, "error", "input",
      lambda d: (cp(d, "m.pt"), os.link(d / "m.pt", d / "hl.pt"), check_not_input([d / "hl.pt"], [d / "m.pt"]))[2])
    A("check_not_input.dotdot_spelling", 2, "error", "input",
      lambda d: (cp(d, "m.pt"), (d / "sub").mkdir(), check_not_input([d / "sub" / ".." / "m.pt"], [d / "m.pt"]))[2])
    A("write_volume.unrelated_json_sidecar", 2, "error", "X.json",
      lambda d: write_volume(d / "X.npy", vol), setup=lambda d: (d / "X.json").write_text('{"my": "notes"}'),
      outputs=("X.npy",))
    A("write_volume.own_sidecar_replaced", 2, "ok", "",
      lambda d: (write_volume(d / "Y.npy", vol, 0.5), write_volume(d / "Y.npy", vol, 0.7), read_volume(d / "Y.npy"))[2],
      check=lambda d, r: tuple(r[1]) == (0.7, 0.7, 0.7), outputs=("Y.npy", "Y.json"))
    A("write_volume.force_replaces_unrelated_json", 2, "ok", "", lambda d: write_volume(d / "X.npy", vol, force=True),
      setup=lambda d: (d / "X.json").write_text('{"my": "notes"}'), outputs=("X.npy", "X.json"),
      check=lambda d, r: "voxel_size_zyx_mm" in json.loads((d / "X.json").read_text()))
    for ext in [".npy", ".h5", ".tif", ".nii.gz", ".pt"]:
        def keep_mode(d, ext=ext):
            write_volume(d / f"x{ext}", vol)
            os.chmod(d / f"x{ext}", 0o600)
            write_volume(d / f"x{ext}", vol * 2)
            return stat.S_IMODE((d / f"x{ext}").stat().st_mode)
        A(f"write_volume{ext}.keeps_mode_0600", 6, "ok", "", keep_mode, check=lambda d, m: m == 0o600,
          outputs=(f"x{ext}", "x.json"))

        def ro(d, ext=ext):
            return write_volume(d / f"x{ext}", vol * 2)

        def ro_setup(d, ext=ext):
            write_volume(d / f"x{ext}", vol)
            os.chmod(d / f"x{ext}", 0o444)
        A(f"write_volume{ext}.read_only_refused", 6, "error", ("read-only", f"x{ext}"), ro, setup=ro_setup)

        def link(d, ext=ext):
            (d / "data").mkdir()
            write_volume(d / "data" / f"x{ext}", vol)
            (d / f"x{ext}").symlink_to(d / "data" / f"x{ext}")
            write_volume(d / f"x{ext}", vol * 2)
            return d
        A(f"write_volume{ext}.through_symlink", 6, "ok", "", link, outputs=(f"x{ext}", "x.json"),
          check=lambda d, r, ext=ext: (d / f"x{ext}").is_symlink() and torch.allclose(
              read_volume(d / "data" / f"x{ext}")[0].float(), vol * 2))
    A("write_volume.read_only_forced_keeps_mode", 6, "ok", "",
      lambda d: (write_volume(d / "x.h5", vol), os.chmod(d / "x.h5", 0o444), write_volume(d / "x.h5", vol * 2, force=True),
                 stat.S_IMODE((d / "x.h5").stat().st_mode))[3], check=lambda d, m: m == 0o444, outputs=("x.h5",))
    A("write_volume.dangling_symlink", 6, "either", "x.h5",
      lambda d: ((d / "x.h5").symlink_to(d / "gone" / "t.h5"), write_volume(d / "x.h5", vol))[1],
      check=lambda d, r: (d / "x.h5").is_symlink())
    A("write_volume.into_missing_folder", 6, "either", "x.h5", lambda d: write_volume(d / "no" / "such" / "x.h5", vol),
      check=lambda d, r: (d / "no" / "such" / "x.h5").exists())
    A("write_volume.target_is_directory", 6, "error", "x.h5", lambda d: ((d / "x.h5").mkdir(), write_volume(d / "x.h5", vol))[1])

    def atomic_failure(d):
        from unrolled3d.io import atomic_path
        (d / "keep.bin").write_bytes(b"old")
        try:
            with atomic_path(d / "keep.bin") as tmp:
                tmp.write_bytes(b"new half")
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        return d
    A("atomic_path.interrupted_leaves_target_and_no_temporary", 3, "ok", "", atomic_failure, outputs=("keep.bin",),
      check=lambda d, r: (d / "keep.bin").read_bytes() == b"old" and sorted(p.name for p in d.iterdir()) == ["keep.bin"])

    def atomic_order(d):
        from unrolled3d.io import atomic_path
        events, real_fsync, real_replace = [], os.fsync, os.replace

        def fsync(fd):
            events.append("dir" if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")) else "file")
            return real_fsync(fd)

        def replace(a, b, *k, **kw):
            events.append("replace")
            return real_replace(a, b, *k, **kw)
        os.fsync, os.replace = fsync, replace
        try:
            with atomic_path(d / "a.bin") as tmp:
                tmp.write_bytes(b"x")
        finally:
            os.fsync, os.replace = real_fsync, real_replace
        return events
    A("atomic_path.fsync_file_rename_fsync_dir", 3, "ok", "", atomic_order, outputs=("a.bin",),
      check=lambda d, ev: ev == ["file", "replace", "dir"])

    # ------------------------------------------------------------------ 1/3. training: runs, resume, fallback
    from unrolled3d.train import TrainConfig, train

    def tphys():
        return ConeBeamCT(g8(), normalize=True)

    def trec(base=2):
        torch.manual_seed(0)
        return PartitionedReconstructor(UnrolledPGD(UNet3D(base=base, depth=1), n_iter=1), (8, 8, 8), (4, 4, 4))

    def tcfg(out, steps=2, **kw):
        return TrainConfig(steps=steps, lr=kw.pop("lr", 1e-3), checkpoint_every=1, out_dir=str(out), progress=False, **kw)

    data = lambda seed=0: PhantomDataset(4, 8, seed=seed)  # noqa: E731

    for key, v in [("steps", 2.5), ("steps", True), ("steps", 0), ("lr", float("nan")), ("lr", float("inf")), ("lr", -1.0),
                   ("lr", 0.0), ("keep_checkpoints", 0), ("checkpoint_every", -1), ("batch_size", 0),
                   ("lr_schedule", "linear"), ("out_dir", 5), ("grad_clip", 0.0), ("noise_std", -1.0),
                   ("noise_std", float("nan")), ("min_lr", float("nan")), ("weight_decay", -1.0), ("seed", 1.5),
                   ("val_every", True), ("progress", "no")]:
        A(f"TrainConfig.{key}={v!r}", 5 if isinstance(v, float) and key not in ("steps", "seed") else 8, "error", key,
          lambda d, key=key, v=v: TrainConfig(**{key: v}))

    def setup_run(d):
        train(trec(), tphys(), data(), tcfg(d / "run", steps=2))
    A("train.new_run_in_folder_of_another", 1, "error", ("another run", "resume"),
      lambda d: train(trec(), tphys(), data(), tcfg(d / "run", steps=2, lr=5e-3)), setup=setup_run)
    for name, make, needle in [
        ("geometry", lambda d: train(trec(), ConeBeamCT(standard_cone_beam(8, 5), normalize=True), data(),
                                     tcfg(d / "run", steps=3), resume=True), "geometry"),
        ("data", lambda d: train(trec(), tphys(), data(5), tcfg(d / "run", steps=3), resume=True), "data"),
        ("model", lambda d: train(trec(base=3), tphys(), data(), tcfg(d / "run", steps=3), resume=True), "model"),
        ("noise_std", lambda d: train(trec(), tphys(), data(), tcfg(d / "run", steps=3, noise_std=0.1), resume=True),
         "noise_std"),
        ("lr", lambda d: train(trec(), tphys(), data(), tcfg(d / "run", steps=3, lr=5e-3), resume=True), "lr"),
    ]:
        A(f"train.resume_other_{name}", 1, "error", ("another run", needle), make, setup=setup_run)
    A("train.resume_same_run_continues", 1, "ok", "", lambda d: train(trec(), tphys(), data(), tcfg(d / "run", steps=3),
                                                                      resume=True),
      setup=setup_run, outputs=("run/checkpoint_00000003.pt", "run/checkpoint_00000001.pt", "run/checkpoint_00000002.pt"),
      check=lambda d, h: h["resumed_from"] == 2 and h["step"] == 3)
    A("train.overwrite_archives", 1, "ok", "", lambda d: train(trec(), tphys(), data(), tcfg(d / "run", steps=2, lr=5e-3),
                                                              overwrite=True),
      setup=setup_run, outputs=("run/checkpoint_00000001.pt", "run/checkpoint_00000002.pt"),
      check=lambda d, h: Path(h["archived_to"]).is_dir() and len(list(Path(h["archived_to"]).iterdir())) == 2
      and Path(h["checkpoint"]).exists())
    A("train.resume_in_empty_folder", 3, "either", "resume", lambda d: train(trec(), tphys(), data(), tcfg(d / "run", steps=1),
                                                                              resume=True),
      check=lambda d, h: h["step"] == 1)

    def corrupt_newest(how):
        def setup(d):
            setup_run(d)
            p = d / "run" / "checkpoint_00000002.pt"
            p.write_bytes(b"" if how == "empty" else p.read_bytes()[:64] if how == "truncated" else os.urandom(400))
        return setup
    for how in ("empty", "truncated", "garbage"):
        def fallback(d):
            import warnings
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                h = train(trec(), tphys(), data(), tcfg(d / "run", steps=2), resume=True)
            return h, [str(x.message) for x in w]
        A(f"train.resume_falls_back_past_{how}_checkpoint", 3, "ok", "", fallback, setup=corrupt_newest(how),
          outputs=("run/checkpoint_00000002.pt", "run/checkpoint_00000001.pt"),
          check=lambda d, r: r[0]["resumed_from"] == 1 and any("checkpoint_00000002.pt" in m for m in r[1]))

    def all_bad(d):
        setup_run(d)
        for p in (d / "run").glob("checkpoint_*.pt"):
            p.write_bytes(b"")
    A("train.resume_with_no_readable_checkpoint", 3, "either", "checkpoint",
      lambda d: train(trec(), tphys(), data(), tcfg(d / "run", steps=2), resume=True), setup=all_bad,
      outputs=("run/checkpoint_00000001.pt", "run/checkpoint_00000002.pt"), check=lambda d, h: h["step"] == 2)
    A("train.stale_temporary_removed", 3, "ok", "",
      lambda d: train(trec(), tphys(), data(), tcfg(d / "run", steps=1)),
      setup=lambda d: ((d / "run").mkdir(), (d / "run" / ".checkpoint_00000002.pt.tmp-k3j2.pt").write_bytes(b"half"),
                       (d / "run" / ".notes").write_text("mine")),
      outputs=("run/.checkpoint_00000002.pt.tmp-k3j2.pt",),
      check=lambda d, h: not (d / "run" / ".checkpoint_00000002.pt.tmp-k3j2.pt").exists() and (d / "run" / ".notes").exists())
    A("train.lr_1e30_diverges_clearly", 5, "error", "diverged",
      lambda d: train(trec(), tphys(), data(), tcfg(d / "run", steps=3, lr=1e30)))
    A("train.out_dir_is_a_file", 1, "error", "run",
      lambda d: train(trec(), tphys(), data(), tcfg(d / "run", steps=1)), setup=lambda d: (d / "run").write_text("x"))
    A("train.physics_not_physics", 8, "error", "physics", lambda d: train(trec(), "ct", data(), tcfg(d / "run", steps=1)))
    A("train.model_volume_mismatch", 8, "error", "",
      lambda d: train(trec(), ConeBeamCT(standard_cone_beam(6, 4), normalize=True), PhantomDataset(2, 6),
                      tcfg(d / "run", steps=1)))

    # ------------------------------------------------------------------ 7. progress (API)
    def captured(fn):
        def f(d):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                fn(d)
            return err.getvalue()
        return f
    A("progress.fdk", 7, "ok", "", captured(lambda d: fdk(torch.rand(1, 1, *g8().sino_shape), g8(), progress=True)),
      check=lambda d, e: len(e) > 0)
    A("progress.partition", 7, "ok", "", captured(lambda d: prec(progress=True)(torch.rand(1, 1, *g8().sino_shape),
                                                                              ConeBeamCT(g8(), normalize=True))),
      check=lambda d, e: "sweep" in e)
    A("progress.normal_fit", 7, "ok", "", captured(lambda d: wrapper().fit(n_iter=2, progress=True)),
      check=lambda d, e: len(e) > 0)
    A("progress.read_walnut", 7, "ok", "",
      captured(lambda d: (cp(d, "walnut"), read_walnut(d / "walnut", vol_shape=(8, 8, 8), voxel_size=1.0, progress=True))),
      check=lambda d, e: len(e) > 0)
    A("progress.quiet_by_default", 7, "ok", "", captured(lambda d: fdk(torch.rand(1, 1, *g8().sino_shape), g8())),
      check=lambda d, e: e == "")
    return cases


# ---------------------------------------------------------------------------- CLI catalogue
def _popen(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _exe() -> str:
    beside = Path(sys.executable).with_name("unrolled3d")
    return str(beside) if beside.exists() else (shutil.which("unrolled3d") or "unrolled3d")


def _fmt(argv: Sequence[str], d: Path) -> list[str]:
    return [str(a).replace("{d}", str(d)).replace("{fx}", str(FX)) for a in argv]


def signal_runner(argv: Sequence[str], ready: Callable[[Path, str], bool], sig: int = signal.SIGINT,
                  then: Sequence[str] | None = None, limit: float = 90.0):
    """Start ``unrolled3d argv``; send ``sig`` once ``ready(d, stderr so far)``; optionally run ``then``
    (e.g. the ``--resume``) after it. Returns the observation of the last command run."""

    def run(d: Path) -> tuple[int, str, str]:
        proc = _popen([_exe(), *_fmt(argv, d)], d)
        chunks: list[str] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
        reader.start()
        t0 = time.time()
        while not ready(d, "".join(chunks)) and proc.poll() is None and time.time() - t0 < limit:
            time.sleep(0.05)
        if proc.poll() is not None:  # finished before the signal: the case could not be run as meant
            reader.join(5)
            return -999, "", "finished before the signal was sent:\n" + "".join(chunks)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -998, "", "did not stop within 60 s of the signal\n" + "".join(chunks)
        reader.join(10)
        out = proc.stdout.read()
        if then is None:
            return proc.returncode, out, "".join(chunks)
        if proc.returncode != -sig:
            return proc.returncode, out, f"expected death by signal {sig}, got {proc.returncode}:\n" + "".join(chunks)
        p2 = subprocess.run([_exe(), *_fmt(then, d)], cwd=d, capture_output=True, text=True, env=_env(), timeout=limit)
        return p2.returncode, p2.stdout, p2.stderr
    return run


_KILL_AT = """
import os, signal, sys
real_replace, real_fsync = os.replace, os.fsync
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
    def run(d: Path) -> tuple[int, str, str]:
        (d / "kill.py").write_text(_KILL_AT)
        (d / "c.toml").write_text(toml(steps=4))
        p = subprocess.run([sys.executable, str(d / "kill.py"), where, "train", str(d / "c.toml"), "--out-dir",
                            str(d / "run"), "--quiet"], cwd=d, capture_output=True, text=True, env=_env(), timeout=120)
        if p.returncode != -signal.SIGKILL:
            return p.returncode, p.stdout, f"expected kill -9, got {p.returncode}:\n{p.stderr}"
        p = subprocess.run([_exe(), "train", str(d / "c.toml"), "--out-dir", str(d / "run"), "--resume"], cwd=d,
                           capture_output=True, text=True, env=_env(), timeout=120)
        return p.returncode, p.stdout, p.stderr
    return run


def same_model_as_reference(steps: int):
    """The resumed run's model.pt equals an uninterrupted run's (made once per ``steps``)."""

    def check(d: Path, rc: int, out: str, err: str) -> bool | str:
        import torch
        ref = FX / f"ref{steps}" / "model.pt"
        a = torch.load(d / "run" / "model.pt", weights_only=True)["state_dict"]
        b = torch.load(ref, weights_only=True)["state_dict"]
        leftovers = [p.name for p in (d / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
        if leftovers:
            return f"temporary files left: {leftovers}"
        if "resumed from" not in err:
            return "no 'resumed from' note"
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) or "weights differ from the reference"
    return check


def cli_cases() -> list[Case]:  # noqa: C901 - a catalogue
    cases: list[Case] = []

    def C(id: str, item: int, expect: str, needles: str | tuple, argv: Sequence[str] | None = None, **kw) -> None:
        cases.append(Case(f"cli.{id}", item, "cli", expect, (needles,) if isinstance(needles, str) else needles,
                          argv=argv, **kw))

    M, W, H = "{d}/m.pt", "{d}/model.pt", "{d}/h.pt"
    has = lambda *names: (lambda d: all((d / n).exists() for n in names))  # noqa: E731
    fx_m = lambda d: cp(d, "m.pt")  # noqa: E731
    fx_all = lambda d: cp(d, "m.pt", "model.pt", "h.pt")  # noqa: E731

    # ------------------------------------------------------------------ 2. outputs over inputs
    C("reconstruct.output_is_input", 2, "error", "input", ["reconstruct", M, "--output", M], setup=fx_m)
    C("reconstruct.output_symlink_to_input", 2, "error", "input", ["reconstruct", M, "--output", "{d}/l.pt"],
      setup=lambda d: (fx_m(d), (d / "l.pt").symlink_to(d / "m.pt")))
    C("reconstruct.output_hardlink_of_input", 2, "error", "input", ["reconstruct", M, "--output", "{d}/hl.pt"],
      setup=lambda d: (fx_m(d), os.link(d / "m.pt", d / "hl.pt")))
    C("reconstruct.output_relative_spelling", 2, "error", "input", ["reconstruct", "m.pt", "--output", "./sub/../m.pt"],
      setup=lambda d: (fx_m(d), (d / "sub").mkdir()))
    C("reconstruct.output_is_weights", 2, "error", "input",
      ["reconstruct", M, "--method", "unrolled", "--weights", W, "--output", W], setup=fx_all)
    C("reconstruct.output_is_normal", 2, "error", "input",
      ["reconstruct", M, "--method", "unrolled", "--weights", W, "--normal", H, "--output", H], setup=fx_all)
    C("reconstruct.npy_sidecar_is_input", 2, "error", "m.json", ["reconstruct", "{d}/m.json", "--output", "{d}/m.npy"],
      setup=lambda d: shutil.copy(FX / "m.pt", d / "m.json"))
    C("fit_normal.out_is_input", 2, "error", "input", ["fit-normal", M, "--iters", "1", "--out", M], setup=fx_m)
    C("fit_normal.out_symlink_to_input", 2, "error", "input", ["fit-normal", M, "--iters", "1", "--out", "{d}/l.pt"],
      setup=lambda d: (fx_m(d), (d / "l.pt").symlink_to(d / "m.pt")))
    C("simulate.output_is_volume", 2, "error", "input", ["simulate", "--volume", "{d}/v.pt", "--views", "4", "--output",
                                                         "{d}/v.pt"], setup=lambda d: cp(d, "v.pt"))
    C("simulate.output_symlink_to_volume", 2, "error", "input",
      ["simulate", "--volume", "{d}/v.pt", "--views", "4", "--output", "{d}/l.pt"],
      setup=lambda d: (cp(d, "v.pt"), (d / "l.pt").symlink_to(d / "v.pt")))
    C("import_walnut.out_is_geometry_file", 2, "error", "",
      ["import-walnut", "{d}/walnut", "--geometry-file", "g.pt", "--out", "{d}/walnut/g.pt", "--vol-shape", "8", "8", "8"],
      setup=lambda d: (cp(d, "walnut"), shutil.copy(d / "walnut" / "scan_geom_corrected.geom", d / "walnut" / "g.pt")))
    C("reconstruct.npy_unrelated_json", 2, "error", "X.json", ["reconstruct", M, "--output", "{d}/X.npy"],
      setup=lambda d: (fx_m(d), (d / "X.json").write_text('{"my": "notes"}')), outputs=("X.npy",))
    C("reconstruct.npy_unrelated_json_forced", 2, "ok", "", ["reconstruct", M, "--output", "{d}/X.npy", "--force", "--quiet"],
      setup=lambda d: (fx_m(d), (d / "X.json").write_text('{"my": "notes"}')), outputs=("X.npy", "X.json"),
      check=lambda d, rc, o, e: "voxel_size_zyx_mm" in (d / "X.json").read_text())
    C("reconstruct.npy_own_sidecar_replaced", 2, "ok", "", ["reconstruct", M, "--output", "{d}/x.npy", "--quiet"],
      setup=lambda d: (fx_m(d), shutil.copy(FX / "v.npy", d / "x.npy"), shutil.copy(FX / "v.json", d / "x.json")),
      outputs=("x.npy", "x.json"), check=lambda d, rc, o, e: json.loads((d / "x.json").read_text())["voxel_size_zyx_mm"]
      != [0.5, 0.5, 0.5])
    C("train.model_pt_read_only", 6, "error", ("read-only", "model.pt"), ["train", "{d}/c.toml", "--out-dir", "{d}/run",
                                                                           "--overwrite"],
      setup=lambda d: ((d / "c.toml").write_text(toml(steps=1)), (d / "run").mkdir(), shutil.copy(FX / "model.pt", d / "run" / "model.pt"),
                       os.chmod(d / "run" / "model.pt", 0o444)))

    # ------------------------------------------------------------------ 6. permissions and links
    for cmd, argv, out in [
        ("reconstruct", ["reconstruct", M, "--output", "{d}/x.h5"], "x.h5"),
        ("fit_normal", ["fit-normal", M, "--iters", "1", "--out", "{d}/o.pt"], "o.pt"),
        ("simulate", ["simulate", "--size", "8", "--views", "4", "--out", "{d}/o.pt"], "o.pt"),
    ]:
        def ro_setup(d, out=out):
            fx_m(d)
            shutil.copy(FX / ("v.h5" if out.endswith(".h5") else "h.pt"), d / out)
            os.chmod(d / out, 0o444)
        C(f"{cmd}.read_only_output_refused", 6, "error", ("read-only", out), argv, setup=ro_setup)
        if cmd != "reconstruct":
            continue  # the other commands write through the same atomic_path; one case each above
        C(f"{cmd}.read_only_output_forced", 6, "ok", "", [*argv, "--force", "--quiet"], setup=ro_setup, outputs=(out,),
          check=lambda d, rc, o, e, out=out: stat.S_IMODE((d / out).stat().st_mode) == 0o444
          and (d / out).read_bytes() != (FX / ("v.h5" if out.endswith(".h5") else "h.pt")).read_bytes())

        def mode_setup(d, out=out):
            fx_m(d)
            shutil.copy(FX / ("v.h5" if out.endswith(".h5") else "h.pt"), d / out)
            os.chmod(d / out, 0o600)
        C(f"{cmd}.keeps_mode_0600", 6, "ok", "", [*argv, "--quiet"], setup=mode_setup, outputs=(out,),
          check=lambda d, rc, o, e, out=out: stat.S_IMODE((d / out).stat().st_mode) == 0o600)

        def link_setup(d, out=out):
            fx_m(d)
            (d / "data").mkdir()
            shutil.copy(FX / ("v.h5" if out.endswith(".h5") else "h.pt"), d / "data" / out)
            (d / out).symlink_to(d / "data" / out)
        C(f"{cmd}.writes_through_symlink", 6, "ok", "", [*argv, "--quiet"], setup=link_setup, outputs=(out, f"data/{out}"),
          check=lambda d, rc, o, e, out=out: (d / out).is_symlink() and (d / "data" / out).read_bytes()
          != (FX / ("v.h5" if out.endswith(".h5") else "h.pt")).read_bytes())
    C("reconstruct.output_folder_missing", 6, "either", "", ["reconstruct", M, "--output", "{d}/no/such/x.h5", "--quiet"],
      setup=fx_m, check=lambda d, rc, o, e: (d / "no" / "such" / "x.h5").exists())
    C("reconstruct.output_is_a_folder", 6, "error", "x.h5", ["reconstruct", M, "--output", "{d}/x.h5"],
      setup=lambda d: (fx_m(d), (d / "x.h5").mkdir()))
    C("train.out_dir_is_a_file", 6, "error", "run", ["train", "{d}/c.toml", "--out-dir", "{d}/run"],
      setup=lambda d: ((d / "c.toml").write_text(toml()), (d / "run").write_text("x")))

    # ------------------------------------------------------------------ 4. bad files through the command line
    def variant(src, dst, change):
        return lambda d: torch_variant(src, d / dst, change)
    bad_files = {
        "empty": lambda p: p.write_bytes(b""), "garbage": lambda p: p.write_bytes(os.urandom(300)),
        "text": lambda p: p.write_text("hello\n"), "pickle": lambda p: write_pickle(p),
        "npy_bytes": lambda p: np_save(p), "directory": lambda p: p.mkdir(), "missing": lambda p: None,
        "list_payload": lambda p: torch_save([1, 2], p),
    }
    for kind, make in bad_files.items():
        C(f"reconstruct.measurements_{kind}", 4, "error", "bad.pt", ["reconstruct", "{d}/bad.pt", "--output", "{d}/x.npy"],
          setup=lambda d, make=make: make(d / "bad.pt"), outputs=("x.npy", "x.json"))
        if kind not in ("empty", "pickle", "garbage", "directory"):
            continue  # the loaders are one function (load_torch_file): the API cases try every kind on each
        C(f"reconstruct.weights_{kind}", 4, "error", "bad.pt",
          ["reconstruct", M, "--method", "unrolled", "--weights", "{d}/bad.pt", "--output", "{d}/x.npy"],
          setup=lambda d, make=make: (fx_m(d), make(d / "bad.pt")), outputs=("x.npy", "x.json"))
        if kind == "directory":
            continue
        C(f"reconstruct.normal_{kind}", 4, "error", "bad.pt",
          ["reconstruct", M, "--method", "unrolled", "--weights", W, "--normal", "{d}/bad.pt", "--output", "{d}/x.npy"],
          setup=lambda d, make=make: (fx_all(d), make(d / "bad.pt")), outputs=("x.npy", "x.json"))
        if kind == "garbage":
            continue
        C(f"fit_normal.measurements_{kind}", 4, "error", "bad.pt", ["fit-normal", "{d}/bad.pt", "--iters", "1", "--out", "{d}/o.pt"],
          setup=lambda d, make=make: make(d / "bad.pt"), outputs=("o.pt",))
    meas = {
        "no_y": lambda s: {k: v for k, v in s.items() if k != "y"},
        "no_geometry": lambda s: {k: v for k, v in s.items() if k != "geometry"},
        "geometry_bad_json": lambda s: {**s, "geometry": "{not json"},
        "y_nan": lambda s: {**s, "y": s["y"].index_fill(2, torch_tensor([1]), float("nan"))},
        "y_wrong_shape": lambda s: {**s, "y": s["y"][..., :-1]},
        "geometry_voxel_1e-310": lambda s: {**s, "geometry": json.dumps({**json.loads(s["geometry"]),
                                                                         "voxel_size": [1e-310] * 3})},
        "geometry_vectors_x1e200": lambda s: {**s, "geometry": json.dumps({**json.loads(s["geometry"]), "vectors": [
            [c * 1e200 for c in row] for row in json.loads(s["geometry"])["vectors"]]})},
    }
    for kind, change in meas.items():
        C(f"reconstruct.measurements_{kind}", 4 if "nan" not in kind and "inf" not in kind and "1e" not in kind else 5,
          "error", "bad.pt", ["reconstruct", "{d}/bad.pt", "--output", "{d}/x.npy"], setup=variant("m.pt", "bad.pt", change),
          outputs=("x.npy", "x.json"))
    C("reconstruct.unrolled_measurements_nan", 5, "error", "bad.pt",
      ["reconstruct", "{d}/bad.pt", "--method", "unrolled", "--weights", W, "--output", "{d}/x.npy"],
      setup=lambda d: (cp(d, "model.pt"), variant("m.pt", "bad.pt", meas["y_nan"])(d)), outputs=("x.npy", "x.json"))

    def cfg_change(fn):
        def change(s):
            return {**s, "config": json.dumps(fn(json.loads(s["config"])))}
        return change
    for kind, change in {
        "no_config_model": cfg_change(lambda c: {k: v for k, v in c.items() if k != "model"}),
        "config_bad_json": lambda s: {**s, "config": "{oops"},
        "no_state_dict": lambda s: {k: v for k, v in s.items() if k != "state_dict"},
        "weights_other_shape": cfg_change(lambda c: {**c, "model": {**c["model"], "base": 3}}),
        "config_model_base_float": cfg_change(lambda c: {**c, "model": {**c["model"], "base": 2.5}}),
    }.items():
        C(f"reconstruct.weights_{kind}", 4, "error", "bad.pt",
          ["reconstruct", M, "--method", "unrolled", "--weights", "{d}/bad.pt", "--output", "{d}/x.npy"],
          setup=lambda d, change=change: (fx_m(d), variant("model.pt", "bad.pt", change)(d)), outputs=("x.npy", "x.json"))
    for kind, change in {
        "no_fourier_filter": lambda s: {k: v for k, v in s.items() if k != "fourier_filter"},
        "no_scaling": lambda s: {k: v for k, v in s.items() if k != "scaling"},
        "filter_nan": lambda s: {**s, "fourier_filter": s["fourier_filter"] * float("nan")},
    }.items():
        C(f"reconstruct.normal_{kind}", 4, "error", "bad.pt",
          ["reconstruct", M, "--method", "unrolled", "--weights", W, "--normal", "{d}/bad.pt", "--output", "{d}/x.npy"],
          setup=lambda d, change=change: (cp(d, "m.pt", "model.pt"), variant("h.pt", "bad.pt", change)(d)),
          outputs=("x.npy", "x.json"))
    C("reconstruct.normal_other_volume", 4, "error", "h16.pt",
      ["reconstruct", M, "--method", "unrolled", "--weights", W, "--normal", "{d}/h16.pt", "--output", "{d}/x.npy"],
      setup=lambda d: (cp(d, "m.pt", "model.pt", "h16.pt")), outputs=("x.npy", "x.json"))
    for ext, make in [(".npy", lambda p: p.write_bytes(b"")), (".npy", lambda p: np_save(p, 2)), (".h5", lambda p: p.write_bytes(os.urandom(99))),
                      (".tif", lambda p: p.write_bytes(b"II*\x00xx")), (".pt", lambda p: write_pickle(p)), (".xyz", lambda p: np_save(p, 3))]:
        C(f"simulate.volume{ext}.bad_{len(cases)}", 4, "error", f"vol{ext}",
          ["simulate", "--volume", f"{{d}}/vol{ext}", "--views", "4", "--out", "{d}/o.pt"],
          setup=lambda d, ext=ext, make=make: make(d / f"vol{ext}"), outputs=("o.pt",))
    C("simulate.volume_nan", 5, "error", "vol.npy", ["simulate", "--volume", "{d}/vol.npy", "--views", "4", "--out", "{d}/o.pt"],
      setup=lambda d: np_save(d / "vol.npy", 3, nan=True), outputs=("o.pt",))
    C("simulate.volume_inf", 5, "error", "vol.npy", ["simulate", "--volume", "{d}/vol.npy", "--views", "4", "--out", "{d}/o.pt"],
      setup=lambda d: np_save(d / "vol.npy", 3, inf=True), outputs=("o.pt",))
    C("simulate.volume_with_size", 8, "error", "--volume", ["simulate", "--volume", "{d}/v.pt", "--size", "8", "--out", "{d}/o.pt"],
      setup=lambda d: cp(d, "v.pt"), outputs=("o.pt",))
    for ext in [".npy", ".h5", ".nii.gz"]:
        C(f"simulate.volume{ext}.ok", 4, "ok", "", ["simulate", "--volume", f"{{d}}/v{ext}", "--views", "4", "--out", "{d}/o.pt",
                                                    "--quiet"],
          setup=lambda d, ext=ext: cp(d, f"v{ext}", *(["v.json"] if ext == ".npy" else [])), outputs=("o.pt",),
          check=lambda d, rc, o, e: (d / "o.pt").stat().st_size > 0)

    # ------------------------------------------------------------------ 5. NaN / inf in arguments
    for v in ["nan", "inf", "-0.1"]:
        C(f"simulate.noise={v}", 5, "error", "--noise", ["simulate", "--size", "8", "--views", "4", "--noise", v, "--out",
                                                        "{d}/o.pt"], outputs=("o.pt",))
    C("simulate.noise=0", 5, "ok", "", ["simulate", "--size", "8", "--views", "4", "--noise", "0", "--out", "{d}/o.pt", "--quiet"],
      outputs=("o.pt",), check=lambda d, rc, o, e: (d / "o.pt").exists())
    for v in ["1e30", "nan", "0"]:
        C(f"fit_normal.lr={v}", 5, "error", "lr", ["fit-normal", M, "--iters", "3", "--lr", v, "--out", "{d}/o.pt"], setup=fx_m,
          outputs=("o.pt",))
    for v in ["0", "2.5"]:
        C(f"fit_normal.iters={v}", 8, "error", "--iters", ["fit-normal", M, "--iters", v, "--out", "{d}/o.pt"], setup=fx_m,
          outputs=("o.pt",))
    C("fit_normal.kernel_radius=-1", 8, "error", "kernel", ["fit-normal", M, "--iters", "1", "--kernel-radius", "-1", "--out",
                                                          "{d}/o.pt"], setup=fx_m, outputs=("o.pt",))
    for key, v in [("lr", "nan"), ("lr", "1e30"), ("noise_std", "nan"), ("grad_clip", "0.0")]:
        C(f"train.toml.{key}={v}", 5, "error", ("c.toml", key) if v != "1e30" else ("diverged",),
          ["train", "{d}/c.toml", "--out-dir", "{d}/run"], setup=lambda d, key=key, v=v: (d / "c.toml").write_text(
              toml(steps=3, train={key: v})), outputs=("run",))
    C("train.toml.size=inf", 5, "error", ("c.toml", "size"), ["train", "{d}/c.toml", "--out-dir", "{d}/run"],
      setup=lambda d: (d / "c.toml").write_text(toml(geometry={"size": "inf"})))

    # walnut
    wargs = ["--vol-shape", "8", "8", "8", "--voxel-size", "1"]

    def walnut_edit(fn):
        def setup(d):
            cp(d, "walnut")
            fn(d / "walnut")
        return setup

    def tif_pixel(value):
        def fn(w):
            import numpy as np
            import tifffile
            img = tifffile.imread(w / "scan_000005.tif").astype(np.float32)
            img[2, 3] = value
            tifffile.imwrite(w / "scan_000005.tif", img)
        return fn
    C("import_walnut.nan_pixel", 5, "error", ("scan_000005.tif", "NaN"), ["import-walnut", "{d}/walnut", "--out", "{d}/w.pt", *wargs],
      setup=walnut_edit(tif_pixel(float("nan"))), outputs=("w.pt",))
    C("import_walnut.inf_pixel", 5, "error", "scan_000005.tif", ["import-walnut", "{d}/walnut", "--out", "{d}/w.pt", *wargs],
      setup=walnut_edit(tif_pixel(float("inf"))), outputs=("w.pt",))
    C("import_walnut.geom_nan", 5, "error", "scan_geom_corrected.geom",
      ["import-walnut", "{d}/walnut", "--out", "{d}/w.pt", *wargs],
      setup=walnut_edit(nan_geometry_row),
      outputs=("w.pt",))
    for args, needle in [(["--voxel-size", "nan"], "voxel"), (["--voxel-size", "1e-310"], "voxel"),
                         (["--view-step", "0"], "view"), (["--view-step", "100000"], "view"), (["--binning", "0"], "binning"),
                         (["--vol-shape", "0", "8", "8"], "vol")]:
        base = ["--vol-shape", "8", "8", "8", "--voxel-size", "1"]
        argv = ["import-walnut", "{d}/walnut", "--out", "{d}/w.pt", *base, *args]
        C(f"import_walnut.{'_'.join(args)}", 5 if "nan" in args or "1e-310" in args else 8, "error", needle, argv,
          setup=lambda d: cp(d, "walnut"), outputs=("w.pt",))
    for name, edit, needle in [
        ("missing_projection", lambda w: (w / "scan_000003.tif").unlink(), "scan_000003"),
        ("missing_dark", lambda w: (w / "di000000.tif").unlink(), "di000000"),
        ("missing_geometry", lambda w: (w / "scan_geom_corrected.geom").unlink(), "scan_geom_corrected.geom"),
        ("garbage_tif", lambda w: (w / "scan_000002.tif").write_bytes(b"II*\x00garbage"), "scan_000002.tif"),
        ("geometry_11_columns", lambda w: (w / "scan_geom_corrected.geom").write_text("1 " * 11 + "\n"), "scan_geom_corrected.geom"),
    ]:
        C(f"import_walnut.{name}", 4, "error", needle, ["import-walnut", "{d}/walnut", "--out", "{d}/w.pt", *wargs],
          setup=walnut_edit(edit), outputs=("w.pt",))
    C("import_walnut.missing_folder", 4, "error", "nowhere", ["import-walnut", "{d}/nowhere", "--out", "{d}/w.pt", *wargs])
    C("import_walnut.other_geometry_file_missing", 4, "error", "other.geom",
      ["import-walnut", "{d}/walnut", "--geometry-file", "other.geom", "--out", "{d}/w.pt", *wargs], setup=lambda d: cp(d, "walnut"))
    C("import_walnut.out_npy", 8, "error", ".pt", ["import-walnut", "{d}/walnut", "--out", "{d}/w.npy", *wargs],
      setup=lambda d: cp(d, "walnut"), outputs=("w.npy",))
    C("import_walnut.ok_with_progress", 7, "ok", "", ["import-walnut", "{d}/walnut", "--out", "{d}/w.pt", *wargs],
      setup=lambda d: cp(d, "walnut"), outputs=("w.pt",), check=lambda d, rc, o, e: (d / "w.pt").exists() and "reading" in e)

    # ------------------------------------------------------------------ 8. integers, late checks, endings, huge sizes
    for args, needle in [(["--size", "4.7"], "--size"), (["--size", "0"], "--size"), (["--size", "3"], "--size"),
                         (["--size", "-8"], "--size"), (["--views", "2.5"], "--views"), (["--views", "0"], "--views"),
                         (["--views", "-1"], "--views"), (["--size", "1e3"], "--size"), (["--seed", "1.5"], "--seed"),
                         (["--phantom", "cube"], "--phantom"), (["--size", "100000"], "memory"),
                         (["--seed", "-1"], "seed"), (["--size", "true"], "--size")]:
        full = ["simulate", "--size", "8", "--views", "4", "--out", "{d}/o.pt", *args]
        C(f"simulate.{'_'.join(args)}", 8, "error", needle, full, outputs=("o.pt",))
    for out in ["o.npy", "o.txt", "o"]:
        C(f"simulate.out={out}", 8, "error", ".pt", ["simulate", "--size", "8", "--views", "4", "--out", f"{{d}}/{out}"],
          outputs=(out,))
    C("simulate.out=O.PT", 8, "either", ".pt", ["simulate", "--size", "8", "--views", "4", "--out", "{d}/O.PT", "--quiet"],
      outputs=("O.PT",), check=lambda d, rc, o, e: (d / "O.PT").exists())
    C("simulate.short_scan_ok", 8, "ok", "", ["simulate", "--size", "8", "--views", "4", "--short-scan", "--out", "{d}/o.pt",
                                              "--json"], outputs=("o.pt",), check=lambda d, rc, o, e: json.loads(o)["sino_shape"][2] == 4)
    for args, needle in [(["--patch-size", "4.7"], "--patch-size"), (["--patch-size", "0"], "--patch-size"),
                         (["--patch-size", "1000"], "--patch-size"),
                         (["--memory-budget", "abc"], "abc"), (["--memory-budget=-1G"], "-1G"),
                         (["--memory-budget", "1K"], "budget"), (["--memory-budget", "1G", "--patch-size", "4"], "--patch-size"),
                         (["--device", "tpu"], "tpu"), (["--device", "cuda"], "cuda")]:
        C(f"reconstruct.unrolled{'_'.join(args)}", 8, "error", needle,
          ["reconstruct", M, "--method", "unrolled", "--weights", W, "--output", "{d}/x.npy", *args],
          setup=lambda d: cp(d, "m.pt", "model.pt"), outputs=("x.npy", "x.json"))
    C("reconstruct.fdk_with_weights", 8, "error", "--weights", ["reconstruct", M, "--weights", W, "--output", "{d}/x.npy"],
      setup=lambda d: cp(d, "m.pt", "model.pt"))
    C("reconstruct.fdk_with_patch_size", 8, "error", "--patch-size", ["reconstruct", M, "--patch-size", "4", "--output",
                                                                      "{d}/x.npy"], setup=fx_m)
    C("reconstruct.unrolled_without_weights", 8, "error", "--weights", ["reconstruct", M, "--method", "unrolled", "--output",
                                                                        "{d}/x.npy"], setup=fx_m)
    C("reconstruct.method_bad", 8, "error", "--method", ["reconstruct", M, "--method", "sirt", "--output", "{d}/x.npy"], setup=fx_m)
    for out in ["x.xyz", "x.txt", "x"]:
        C(f"reconstruct.output={out}", 8, "error", out, ["reconstruct", M, "--output", f"{{d}}/{out}"], setup=fx_m,
          outputs=(out,))
    for out in ["x.npy", "x.nii.gz", "x.h5", "x.tif", "x.pt"]:
        C(f"reconstruct.output={out}.roundtrip", 8, "ok", "", ["reconstruct", M, "--output", f"{{d}}/{out}", "--quiet"],
          setup=fx_m, outputs=(out, "x.json"), check=lambda d, rc, o, e, out=out: vol_ok(d / out))
    C("reconstruct.unrolled_ok", 7, "ok", "", ["reconstruct", M, "--method", "unrolled", "--weights", W, "--output", "{d}/x.npy"],
      setup=lambda d: cp(d, "m.pt", "model.pt"), outputs=("x.npy", "x.json"),
      check=lambda d, rc, o, e: "sweep" in e and "patches" in e and vol_ok(d / "x.npy"))
    C("reconstruct.unrolled_normal_ok", 7, "ok", "",
      ["reconstruct", M, "--method", "unrolled", "--weights", W, "--normal", H, "--output", "{d}/x.npy", "--json"],
      setup=fx_all, outputs=("x.npy", "x.json"), check=lambda d, rc, o, e: json.loads(o)["method"] == "unrolled" and e == "")
    C("reconstruct.unrolled_memory_budget_ok", 8, "ok", "",
      ["reconstruct", M, "--method", "unrolled", "--weights", W, "--memory-budget", "2G", "--output", "{d}/x.npy", "--json"],
      setup=lambda d: cp(d, "m.pt", "model.pt"), outputs=("x.npy", "x.json"), check=lambda d, rc, o, e: "patch" in json.loads(o))
    C("reconstruct.fdk_progress", 7, "ok", "", ["reconstruct", M, "--output", "{d}/x.npy"], setup=fx_m, outputs=("x.npy", "x.json"),
      check=lambda d, rc, o, e: "FDK" in e)
    C("reconstruct.quiet_is_silent", 7, "ok", "", ["reconstruct", M, "--method", "unrolled", "--weights", W, "--output",
                                                   "{d}/x.npy", "--quiet"],
      setup=lambda d: cp(d, "m.pt", "model.pt"), outputs=("x.npy", "x.json"), check=lambda d, rc, o, e: o == "" and e == "")
    C("fit_normal.progress", 7, "ok", "", ["fit-normal", M, "--iters", "2", "--out", "{d}/o.pt"], setup=fx_m, outputs=("o.pt",),
      check=lambda d, rc, o, e: "||A||" in e and "fitting" in e)
    C("fit_normal.json_only_json", 7, "ok", "", ["fit-normal", M, "--iters", "2", "--out", "{d}/o.pt", "--json"], setup=fx_m,
      outputs=("o.pt",), check=lambda d, rc, o, e: isinstance(json.loads(o)["relative_error"], float) and e == "")
    for out in ["o.npy"]:
        C(f"fit_normal.out={out}", 8, "error", ".pt", ["fit-normal", M, "--iters", "1", "--out", f"{{d}}/{out}"], setup=fx_m,
          outputs=(out,))
    C("demo.out_txt", 8, "error", ".png", ["demo", "--quick", "--out", "{d}/d.txt"], outputs=("d.txt",))
    C("demo.size_4.7", 8, "error", "--size", ["demo", "--size", "4.7", "--out", "{d}/d.png"])
    C("demo.volumes_0", 8, "error", "volumes", ["demo", "--volumes", "0", "--out", "{d}/d.png"], outputs=("d.png",))
    C("demo.seed_-1", 8, "error", "--seed", ["demo", "--quick", "--seed", "-1", "--out", "{d}/d.png"], outputs=("d.png",))
    C("demo.weights_pickle", 4, "error", "bad.pt", ["demo", "--quick", "--weights", "{d}/bad.pt", "--out", "{d}/d.png"],
      setup=lambda d: write_pickle(d / "bad.pt"), outputs=("d.png",))
    C("demo.weights_is_png_target", 2, "error", "", ["demo", "--quick", "--weights", "{d}/w.png", "--out", "{d}/w.png"],
      setup=lambda d: shutil.copy(FX / "model.pt", d / "w.png"))

    # train TOML: integers, keys, sections
    for sec, key, v in [("geometry", "size", "16.7"), ("train", "steps", "2.5"), ("train", "steps", '"3"'),
                        ("model", "shared", '"no"'), ("geometry", "views", "true"), ("geometry", "size", "3"),
                        ("train", "keep_checkpoints", "0"), ("phantoms", "kind", '"cube"'),
                        ("train", "lr_schedule", '"linear"'), ("model", "base", "2.0"), ("partition", "patch", "[4, 4, 4]"),
                        ("train", "lr", '"0.1"'), ("geometry", "size", "1000000000")]:
        C(f"train.toml.{sec}.{key}={v}", 8, "error", ("c.toml", key), ["train", "{d}/c.toml", "--out-dir", "{d}/run"],
          setup=lambda d, sec=sec, key=key, v=v: (d / "c.toml").write_text(toml(**{sec: {key: v}})), outputs=("run",))
    for name, text, needle in [
        ("unknown_section", toml(extra="[optimizer]\nname = 1\n"), "optimizer"),
        ("unknown_key", toml(model={"width": "3"}), "width"),
        ("out_dir_in_geometry", toml(geometry={"out_dir": '"x"'}), "out_dir"),
        ("patch_larger_than_volume", toml(partition={"patch": "16"}), "patch"),
        ("bad_syntax", "[geometry\nsize = 8\n", "c.toml"),
        ("binary", None, "c.toml"),
    ]:
        C(f"train.toml.{name}", 4 if name in ("bad_syntax", "binary", "section_not_table") else 8, "error", ("c.toml", needle),
          ["train", "{d}/c.toml", "--out-dir", "{d}/run"],
          setup=lambda d, text=text: (d / "c.toml").write_bytes(os.urandom(200) if text is None else text.encode()),
          outputs=("run",))
    C("train.config_missing", 4, "error", "none.toml", ["train", "{d}/none.toml", "--out-dir", "{d}/run"], outputs=("run",))
    C("train.no_out_dir", 1, "error", "--out-dir", ["train", "{d}/c.toml"], setup=lambda d: (d / "c.toml").write_text(toml()))
    C("train.resume_and_overwrite", 1, "error", ("--resume", "--overwrite"),
      ["train", "{d}/c.toml", "--out-dir", "{d}/run", "--resume", "--overwrite"], setup=lambda d: (d / "c.toml").write_text(toml()))

    # ------------------------------------------------------------------ 1. runs never mix (CLI)
    def with_run(steps=2, lr="1e-3"):
        def setup(d):
            (d / "c.toml").write_text(toml(steps=steps, lr=lr))
            shutil.copytree(FX / "run2", d / "run")
        return setup
    C("train.new_run_refused", 1, "error", ("another run", "--resume", "--overwrite"),
      ["train", "{d}/c.toml", "--out-dir", "{d}/run"], setup=with_run(lr="5e-3"))
    C("train.resume_other_config", 1, "error", ("another run", "lr"),
      ["train", "{d}/c.toml", "--out-dir", "{d}/run", "--resume"], setup=with_run(lr="5e-3"))
    C("train.resume_model_without_checkpoints", 1, "error", "model.pt", ["train", "{d}/c.toml", "--out-dir", "{d}/run", "--resume"],
      setup=lambda d: ((d / "c.toml").write_text(toml()), (d / "run").mkdir(), shutil.copy(FX / "model.pt", d / "run" / "model.pt")))
    C("train.overwrite_archives", 1, "ok", "", ["train", "{d}/c.toml", "--out-dir", "{d}/run", "--overwrite", "--json"],
      setup=with_run(lr="5e-3"), outputs=("run/model.pt", "run/checkpoints/checkpoint_00000001.pt",
                                          "run/checkpoints/checkpoint_00000002.pt"),
      check=lambda d, rc, o, e: json.loads(o)["steps"] == 2 and len(list((d / "run" / "archived").iterdir())) == 1
      and (d / "run" / "checkpoints" / "checkpoint_00000002.pt").exists())
    C("train.resume_more_steps", 1, "ok", "", ["train", "{d}/c.toml", "--out-dir", "{d}/run", "--resume", "--json"],
      setup=with_run(steps=3), outputs=("run/model.pt", "run/checkpoints/checkpoint_00000001.pt",
                                        "run/checkpoints/checkpoint_00000002.pt"),
      check=lambda d, rc, o, e: json.loads(o)["steps"] == 3 and json.loads(o)["resumed_from"] is not None)
    C("train.resume_other_checkpoint_every", 1, "ok", "", ["train", "{d}/c.toml", "--out-dir", "{d}/run", "--resume", "--json"],
      setup=lambda d: (with_run(steps=2)(d), (d / "c.toml").write_text(toml(steps=2, train={"checkpoint_every": "2"}))),
      outputs=("run/model.pt", "run/checkpoints/checkpoint_00000001.pt", "run/checkpoints/checkpoint_00000002.pt"),
      check=lambda d, rc, o, e: json.loads(o)["steps"] == 2, what="how often checkpoints are written is not the run's identity")
    C("train.resume_other_noise_std", 1, "error", ("another run", "noise_std"),
      ["train", "{d}/c.toml", "--out-dir", "{d}/run", "--resume"],
      setup=lambda d: (with_run(steps=2)(d), (d / "c.toml").write_text(toml(steps=2, train={"noise_std": "0.2"}))))
    C("train.resume_other_model", 1, "error", ("another run", "model"), ["train", "{d}/c.toml", "--out-dir", "{d}/run", "--resume"],
      setup=lambda d: (with_run(steps=2)(d), (d / "c.toml").write_text(toml(steps=2, model={"base": "3"}))))
    C("train.resume_corrupt_newest_falls_back", 3, "ok", "", ["train", "{d}/c.toml", "--out-dir", "{d}/run", "--resume"],
      setup=lambda d: (with_run(steps=2)(d), (d / "run" / "checkpoints" / "checkpoint_00000002.pt").write_bytes(b"xx")),
      outputs=("run/model.pt", "run/checkpoints/checkpoint_00000001.pt", "run/checkpoints/checkpoint_00000002.pt"),
      check=lambda d, rc, o, e: "checkpoint_00000002.pt" in e and "resumed from" in e and "checkpoint_00000001.pt" in e)
    C("train.ok_progress", 7, "ok", "", ["train", "{d}/c.toml", "--out-dir", "{d}/run"], setup=lambda d: (d / "c.toml").write_text(toml()),
      outputs=("run",), check=lambda d, rc, o, e: (d / "run" / "model.pt").exists() and len(e) > 0)

    # ------------------------------------------------------------------ 3. kill -9 during training, then --resume
    for k in (1, 2, 3):
        C(f"train.kill9_after_checkpoint_{k}_then_resume", 3, "ok", "",
          runner=signal_runner(["train", "{d}/c.toml", "--out-dir", "{d}/run", "--quiet"],
                               lambda d, e, k=k: newest_checkpoint(d / "run" / "checkpoints") >= k,
                               sig=signal.SIGKILL, then=["train", "{d}/c.toml", "--out-dir", "{d}/run", "--resume"]),
          setup=lambda d: (d / "c.toml").write_text(toml(steps=60)), outputs=("run", "kill.py"),
          check=same_model_as_reference(60), timeout=300)
    for where in ("before_rename", "after_rename"):
        C(f"train.kill9_{where}_then_resume", 3, "ok", "", runner=kill_inject_runner(where), outputs=("run", "kill.py", "c.toml"),
          check=same_model_as_reference(4), timeout=240)

    # ------------------------------------------------------------------ 4/7. Ctrl-C in long commands
    C("ctrl_c.train_after_checkpoint", 4, "interrupt", ("interrupted", "--resume"),
      runner=signal_runner(["train", "{d}/c.toml", "--out-dir", "{d}/run", "--quiet"],
                           lambda d, e: (d / "run" / "checkpoints").is_dir() and any((d / "run" / "checkpoints").glob("checkpoint_*.pt"))),
      setup=lambda d: (d / "c.toml").write_text(toml(steps=100000)), outputs=("run",), timeout=180)
    C("ctrl_c.train_before_first_step", 4, "interrupt", "interrupted",
      runner=signal_runner(["train", "{d}/c.toml", "--out-dir", "{d}/run"], lambda d, e: (d / "run").exists()),
      setup=lambda d: (d / "c.toml").write_text(toml(steps=100000)), outputs=("run",), timeout=180)
    C("ctrl_c.reconstruct_unrolled", 4, "interrupt", "interrupted",
      runner=signal_runner(["reconstruct", "{d}/m32.pt", "--method", "unrolled", "--weights", "{d}/model.pt", "--output",
                            "{d}/x.npy"], lambda d, e: "sweep 1" in e),
      setup=lambda d: cp(d, "m32.pt", "model.pt"), outputs=("x.npy", "x.json"), timeout=180,
      check=lambda d, rc, o, e: not (d / "x.npy").exists())
    C("ctrl_c.reconstruct_fdk", 4, "interrupt", "interrupted",
      runner=signal_runner(["reconstruct", "{d}/m64.pt", "--output", "{d}/x.npy"], lambda d, e: "FDK backprojection" in e),
      setup=lambda d: cp(d, "m64.pt"), outputs=("x.npy", "x.json"), timeout=180)
    C("ctrl_c.fit_normal", 4, "interrupt", "interrupted",
      runner=signal_runner(["fit-normal", "{d}/m32.pt", "--iters", "100000", "--out", "{d}/o.pt"], lambda d, e: "fitting" in e),
      setup=lambda d: cp(d, "m32.pt"), outputs=("o.pt",), timeout=180)
    C("ctrl_c.simulate_large", 4, "interrupt", "interrupted",
      runner=signal_runner(["simulate", "--size", "200", "--views", "60", "--out", "{d}/o.pt"],
                           lambda d, e, t0=[]: (t0.append(time.time()) or True) and time.time() - t0[0] > 6.0),
      outputs=("o.pt",), timeout=180)
    C("ctrl_c.demo", 4, "interrupt", "interrupted",
      runner=signal_runner(["demo", "--quick", "--out", "{d}/d.png"], lambda d, e: len(e) > 0),
      outputs=("d.png",), timeout=180)

    # ------------------------------------------------------------------ 7. --help fast, info
    for sub in ["", "demo", "simulate", "fit-normal", "train", "reconstruct", "import-walnut", "bench", "info"]:
        def run(d, sub=sub):
            t0 = time.perf_counter()
            p = subprocess.run([_exe(), *([sub] if sub else []), "--help"], cwd=d, capture_output=True, text=True,
                               env=_env(), timeout=60)
            return p.returncode, p.stdout, p.stderr + f"\n[wall {time.perf_counter() - t0:.2f} s]"
        C(f"help.{sub or 'main'}_under_1.5s", 7, "ok", "", runner=run,
          check=lambda d, rc, o, e: "usage" in o and float(e.split("[wall ")[1].split()[0]) < 1.5 or e.strip())
    C("info.json", 7, "ok", "", ["info", "--json"], check=lambda d, rc, o, e: "version" in json.loads(o))
    C("bench.unknown_suite", 8, "error", "nope", ["bench", "--suite", "nope", "--results", "{d}/r"])
    C("no_command", 8, "error", "", [])
    C("unknown_command", 8, "error", "", ["frobnicate"])
    return cases


def newest_checkpoint(folder: Path) -> int:
    """The step of the newest checkpoint in ``folder`` (0: none yet); older ones may be pruned already."""
    steps = [int(p.stem.split("_")[1]) for p in folder.glob("checkpoint_*.pt")] if folder.is_dir() else []
    return max(steps, default=0)


def nan_geometry_row(w: Path) -> None:
    """The last number of the first row of the Walnut geometry file becomes ``nan``."""
    lines = (w / "scan_geom_corrected.geom").read_text().splitlines()
    lines[0] = " ".join([*lines[0].split()[:-1], "nan"])
    (w / "scan_geom_corrected.geom").write_text("\n".join(lines) + "\n")


# small helpers the CLI catalogue uses in its setups (kept out of the lambdas for readability)
def np_save(p: Path, ndim: int = 3, nan: bool = False, inf: bool = False) -> None:
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


def torch_tensor(v):
    import torch
    return torch.tensor(v)


def vol_ok(p: Path) -> bool | str:
    from unrolled3d.io import read_volume
    import torch
    v, vs = read_volume(p)
    return (tuple(v.shape) == (8, 8, 8) and bool(torch.isfinite(torch.as_tensor(v)).all())) or f"read back {tuple(v.shape)}"


# =============================================================================================== fixtures
def make_fixtures(fx: Path) -> None:
    """m.pt (8^3, 4 views), m32.pt, model.pt, h.pt, h16.pt, volumes in every format, a Walnut folder,
    a finished 2-step run, and reference runs for the kill -9 cases."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from test_walnut import make_scan

    from unrolled3d.cli.commands import load_train_config
    from unrolled3d.data import shepp_logan_3d, voxelize
    from unrolled3d.io import save_measurements, save_model, write_volume
    from unrolled3d.models import build_model
    from unrolled3d.normal import DiagCirculantWrapper
    from unrolled3d.ops import cone_project
    from unrolled3d.physics import ConeBeamCT, standard_cone_beam

    fx.mkdir(parents=True, exist_ok=True)
    for size, views, name in [(8, 4, "m.pt"), (32, 16, "m32.pt"), (64, 32, "m64.pt")]:
        g = standard_cone_beam(size, views)
        x = voxelize(shepp_logan_3d(0.45 * size), g.vol_shape)[None, None]
        save_measurements(fx / name, cone_project(x, g), g, x_true=x, meta={"phantom": "shepp-logan"})
    (fx / "c.toml").write_text(toml(steps=1))
    cfg = load_train_config(fx / "c.toml")
    cfg["train"].pop("out_dir", None)
    torch.manual_seed(0)
    save_model(fx / "model.pt", build_model(cfg, (8, 8, 8)), cfg)
    for size, name in [(8, "h.pt"), (16, "h16.pt")]:
        g = standard_cone_beam(size, 4)
        w = DiagCirculantWrapper(ConeBeamCT(g, normalize=True), g.vol_shape)
        w.fit(n_iter=2, progress=False)
        w.save(fx / name)
    vol = torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(0))
    for ext in [".npy", ".h5", ".tif", ".nii.gz", ".pt"]:
        write_volume(fx / f"v{ext}", vol, 0.5)
    make_scan(fx / "walnut")
    procs = []
    for steps, folder in [(2, "run2"), (60, "ref60"), (4, "ref4")]:
        (fx / f"c{steps}.toml").write_text(toml(steps=steps))
        procs.append(subprocess.Popen([_exe(), "train", str(fx / f"c{steps}.toml"), "--out-dir", str(fx / folder), "--quiet"],
                                      cwd=fx, env=_env()))
    for p in procs:
        if p.wait(timeout=300) != 0:
            raise RuntimeError("a fixture training run failed")
    # run2 as a CLI run folder (checkpoints/ + model.pt) is what the CLI cases copy


# =============================================================================================== running
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
            st = p.stat()
            snap[str(p.relative_to(d))] = (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode))
    return snap


def destroyed(before: dict, after: dict) -> list[str]:
    out = []
    for k, v in before.items():
        if k not in after:
            out.append(f"{k} removed")
        elif after[k] != v:
            out.append(f"{k} changed" + (" (mode)" if v[0] == after[k][0] else ""))
    return out


def _needles_in(text: str, needles: Sequence[str]) -> list[str]:
    return [n for n in needles if n and n.lower() not in text.lower()]


def _checked(check, *args) -> tuple[bool, str]:
    try:
        r = check(*args)
    except Exception as exc:  # a check that cannot read the result: the result is wrong
        return False, f"check raised {type(exc).__name__}: {exc}"
    if r is True:
        return True, ""
    return False, str(r) if isinstance(r, str) else "check failed"


class _Timeout(BaseException):
    pass


def run_api_case(case: Case, base: Path) -> dict[str, Any]:
    d = base / case.id.replace("/", "_")
    d.mkdir(parents=True)
    if case.setup:
        case.setup(d)
    before = snapshot(d, case.outputs)
    exc: BaseException | None = None
    result = None

    def alarm(signum, frame):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(case.timeout))
    t0 = time.perf_counter()
    try:
        result = case.fn(d)
    except _Timeout as e:
        exc = e
    except Exception as e:  # classified below
        exc = e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    seconds = time.perf_counter() - t0
    rec: dict[str, Any] = {"id": case.id, "item": case.item, "surface": "api", "expect": case.expect,
                           "needles": list(case.needles), "seconds": round(seconds, 2)}
    if case.what:
        rec["what"] = case.what
    if isinstance(exc, _Timeout):
        rec.update(outcome="hang", observed=f"no answer within {case.timeout:.0f} s")
    elif exc is not None:
        message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:400]
        rec["observed"] = message
        if not isinstance(exc, EXPECTED_API_ERRORS + case.errors):
            rec["outcome"] = "traceback"
            rec["traceback_tail"] = "".join(traceback.format_exception(exc)[-3:])[-600:]
        elif case.expect == "ok":
            rec["outcome"] = "refused_valid"
        else:
            missing = _needles_in(str(exc), case.needles)
            rec["outcome"] = "vague_error" if missing else "clear_error"
            if missing:
                rec["missing_from_message"] = missing
    else:
        rec["observed"] = f"returned {type(result).__name__}"
        if case.expect == "error":
            rec["outcome"] = "silent_accept"
        else:
            good, why = _checked(case.check, d, result) if case.check else (True, "")
            rec["outcome"] = "ok" if good else "wrong_result"
            if why:
                rec["observed"] += f"; {why}"
    harm = destroyed(before, snapshot(d, case.outputs))
    if harm:
        rec["outcome"], rec["destroyed"] = "destructive_write", harm
    shutil.rmtree(d, ignore_errors=True)
    return rec


def classify_cli(case: Case, d: Path, rc: int, out: str, err: str, seconds: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": case.id, "item": case.item, "surface": "cli", "expect": case.expect,
                           "needles": list(case.needles), "exit": rc, "seconds": round(seconds, 2),
                           "stderr_tail": err[-500:]}
    if case.what:
        rec["what"] = case.what
    if case.argv is not None:
        rec["argv"] = [a.replace(str(d), "{d}") for a in _fmt(case.argv, d)]
    lines = [ln for ln in err.replace("\r", "\n").splitlines()
             if ln.startswith("unrolled3d") and (": error:" in ln or ": interrupted" in ln or "internal error" in ln)]
    if rc == -997:
        rec["outcome"] = "hang"
    elif rc in (-999, -998):
        rec["outcome"] = "hang" if rc == -998 else "wrong_result"  # -999: the fault could not be injected
    elif rc < 0:
        rec["outcome"] = "crash"
    elif "Traceback (most recent call last)" in err or rc == 1:
        rec["outcome"] = "traceback"
    elif rc == 0:
        if case.expect in ("error", "interrupt"):
            rec["outcome"] = "silent_accept"
        else:
            good, why = _checked(case.check, d, rc, out, err) if case.check else (True, "")
            rec["outcome"] = "ok" if good else "wrong_result"
            if why:
                rec["why"] = why
    elif rc in (2, 130):
        if case.expect == "ok":
            rec["outcome"] = "refused_valid"
        elif (case.expect == "interrupt") != (rc == 130):
            rec["outcome"] = "vague_error"
            rec["why"] = f"exit {rc} for a {'Ctrl-C' if case.expect == 'interrupt' else 'bad input'}"
        elif len(lines) != 1:
            rec["outcome"] = "vague_error"
            rec["why"] = f"{len(lines)} error lines"
        else:
            missing = _needles_in(lines[0], case.needles)
            rec["outcome"] = "vague_error" if missing else "clear_error"
            if missing:
                rec["missing_from_message"] = missing
            if case.check and not missing:
                good, why = _checked(case.check, d, rc, out, err)
                if not good:
                    rec["outcome"], rec["why"] = "wrong_result", why
        if lines:
            rec["message"] = lines[0]
    else:
        rec["outcome"] = "crash"
    return rec


def forked_cli(argv: list[str], cwd: Path, timeout: float) -> tuple[int, str, str]:
    """``unrolled3d argv`` in a forked child of this process, which has imported torch already.

    The child does what the console script does (``sys.exit(main())``): an uncaught exception
    prints its traceback and exits 1, ``SystemExit`` (argparse) exits with its code, a signal
    kills it. Only the seconds of importing torch are saved (on a loaded 2-core machine, 30 s a
    command); the ``--help`` timings, Ctrl-C and kill -9 cases, and ``--fresh``, run the real
    entry point in a new process.
    """
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.chdir(cwd)
                os.dup2(out_f.fileno(), 1)
                os.dup2(err_f.fileno(), 2)
                sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), write_through=True)
                sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), write_through=True)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                sys.argv = ["unrolled3d", *argv]
                from unrolled3d.cli import main
                code = main(argv)
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
                break
            if time.time() - t0 > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return -997, "", f"timed out after {timeout} s"
            time.sleep(0.02)
        rc = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        return rc, out_f.read().decode(errors="replace"), err_f.read().decode(errors="replace")


FRESH = False  # --fresh: every command-line case in a new process of the real entry point


def run_cli_case(case: Case, base: Path) -> dict[str, Any]:
    d = base / case.id.replace("/", "_")
    d.mkdir(parents=True)
    if case.setup:
        case.setup(d)
    before = snapshot(d, case.outputs)
    t0 = time.perf_counter()
    try:
        if case.runner is not None:
            rc, out, err = case.runner(d)
        elif not FRESH:
            rc, out, err = forked_cli(_fmt(case.argv, d), d, case.timeout)
        else:
            p = subprocess.run([_exe(), *_fmt(case.argv, d)], cwd=d, capture_output=True, text=True, env=_env(),
                               timeout=case.timeout)
            rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = -997, "", f"timed out after {exc.timeout} s"
    rec = classify_cli(case, d, rc, out, err, time.perf_counter() - t0)
    harm = destroyed(before, snapshot(d, case.outputs))
    if harm:
        rec["outcome"], rec["destroyed"] = "destructive_write", harm
    if case.outputs and rec["outcome"] in ("clear_error", "vague_error"):
        left = [o for o in case.outputs if (d / o).exists() and o not in before]
        if left:
            rec["left_on_failure"] = left
    shutil.rmtree(d, ignore_errors=True)
    return rec


def api_worker(fx: Path, results: Path, start: int, base: Path) -> None:
    """Run the API cases from ``start`` on, appending one JSON line per case (a 'start' line first,
    so that the supervisor can name the case a crash killed)."""
    global FX
    FX = fx
    import warnings
    warnings.simplefilter("ignore")
    cases = api_cases()
    with open(results, "a") as f:
        for i in range(start, len(cases)):
            f.write(json.dumps({"start": i, "id": cases[i].id}) + "\n")
            f.flush()
            rec = run_api_case(cases[i], base)
            f.write(json.dumps({"done": i, "record": rec}) + "\n")
            f.flush()


def run_api(fx: Path, work: Path) -> list[dict]:
    results = work / "api.jsonl"
    n = len(api_cases())
    start, records = 0, {}
    while start < n:
        p = subprocess.run([sys.executable, __file__, "--worker", str(fx), str(results), str(start), str(work / "api")],
                           env=_env(), timeout=1800)
        last_started = None
        for line in results.read_text().splitlines():
            e = json.loads(line)
            if "start" in e:
                last_started = e
            else:
                records[e["done"]] = e["record"]
        if p.returncode == 0:
            break
        # the worker died in the case it had started: a crash; carry on with the next one
        i = last_started["start"]
        if i not in records:
            records[i] = {"id": last_started["id"], "surface": "api", "outcome": "crash",
                          "observed": f"worker died with status {p.returncode}"}
        start = i + 1
    cases = api_cases()
    for i, c in enumerate(cases):
        records.setdefault(i, {"id": c.id, "surface": "api", "outcome": "crash", "observed": "never ran"})
        records[i].setdefault("item", c.item)
        records[i].setdefault("expect", c.expect)
    return [records[i] for i in range(n)]


def run_cli(work: Path, jobs: int, log: Path | None = None) -> list[dict]:
    """The command-line cases, ``jobs`` at a time (each in its own folder); one line per finished
    case to ``log`` (to follow a long run)."""
    cases = cli_cases()
    lock = threading.Lock()
    if not FRESH:  # forked children: one at a time (a fork from a threaded process can inherit held locks)
        jobs = 1
        import unrolled3d.cli.commands  # noqa: F401 - imported once here, shared by the forked children
        from unrolled3d import data, io as _io, models, normal, physics, train  # noqa: F401

    def one(c: Case) -> dict:
        rec = run_cli_case(c, work / "cli")
        if log is not None:
            with lock, open(log, "a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, cases))


def totals(records: list[dict]) -> dict[str, Any]:
    def count(rs):
        c = {k: 0 for k in CLASSES}
        for r in rs:
            c[r["outcome"]] += 1
        c["cases"] = len(rs)
        return c
    return {"all": count(records), "api": count([r for r in records if r["surface"] == "api"]),
            "cli": count([r for r in records if r["surface"] == "cli"]),
            "by_item": {str(i): count([r for r in records if r.get("item") == i]) for i in ITEMS}}


def markdown(report: dict) -> str:
    t = report["totals"]
    head = ["cases", "clear_error", "ok", "vague_error", "silent_accept", "refused_valid", "wrong_result",
            "destructive_write", "traceback", "crash", "hang"]
    lines = [f"# Issue 15 robustness tally", "",
             f"{report['machine']}; torch {report['torch']}; Python {report['python']}; {report['date']}; "
             f"load average at the end {report['load_average_at_end']}; "
             f"{report['wall_seconds']:.0f} s wall; unrolled3d at {report['package']['commit']}"
             f"{' + uncommitted changes' if report['package']['uncommitted_changes'] else ''}. "
             f"Script: `bench/robustness_tally.py`.", "",
             "| | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name, key in [("Python API", "api"), ("command line", "cli"), ("**all**", "all")]:
        lines.append(f"| {name} | " + " | ".join(str(t[key][h]) for h in head) + " |")
    lines += ["", "By item of the issue:", "", "| item | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for i, name in ITEMS.items():
        lines.append(f"| {i}. {name} | " + " | ".join(str(t["by_item"][str(i)][h]) for h in head) + " |")
    bad = [r for r in report["cases"] if r["outcome"] not in GOOD]
    lines += ["", f"Cases not `clear_error`/`ok`: {len(bad)}", ""]
    for r in bad:
        what = r.get("message") or r.get("observed") or r.get("why") or r.get("stderr_tail", "")[-200:]
        lines.append(f"- `{r['id']}` ({r['outcome']}): {' '.join(str(what).split())[:240]}")
    return "\n".join(lines) + "\n"


def machine() -> str:
    """CPU model, cores, memory and OS, in one line."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError):
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    return f"{model}, {os.cpu_count()} cores{mem}, {platform.platform()}"


def package_info() -> dict[str, str]:
    """Which unrolled3d the cases ran (its folder and commit: the tally is of that code)."""
    import unrolled3d
    folder = Path(unrolled3d.__file__).resolve().parents[1]
    git = lambda *a: subprocess.run(["git", *a], cwd=folder, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {"path": str(folder), "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes": bool(git("status", "--porcelain", "--", "unrolled3d", "kernels"))}


def main(argv: Sequence[str] | None = None) -> int:
    global FX
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/robustness_tally.json")
    ap.add_argument("--jobs", type=int, default=2, help="command-line cases run at once (default 2)")
    ap.add_argument("--only", choices=["api", "cli"], help="run one surface only")
    ap.add_argument("--fresh", action="store_true",
                    help="run every command-line case in a new process of the real entry point (slow: torch is "
                         "imported each time) instead of a forked child of a process that has imported it")
    ap.add_argument("--log", type=Path, help="append each finished command-line case to this JSON-lines file")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global FRESH
    FRESH = args.fresh
    if args.worker:
        api_worker(Path(args.worker[0]), Path(args.worker[1]), int(args.worker[2]), Path(args.worker[3]))
        return 0
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="u3d_tally_") as tmp:
        work = Path(tmp)
        FX = work / "fx"
        print("making fixtures ...", file=sys.stderr, flush=True)
        make_fixtures(FX)
        records: list[dict] = []
        if args.only in (None, "cli"):
            print(f"running {len(cli_cases())} command-line cases ...", file=sys.stderr, flush=True)
            records += run_cli(work, args.jobs, args.log)
        if args.only in (None, "api"):
            print(f"running {len(api_cases())} API cases ...", file=sys.stderr, flush=True)
            records += run_api(FX, work)
        pwned = Path("/tmp/unrolled3d_tally_pwned")
        if pwned.exists():  # a pickle payload ran somewhere: the worst outcome, reported loudly
            pwned.unlink()
            records.append({"id": "pickle_payload_executed", "surface": "api", "item": 4, "expect": "error",
                            "outcome": "crash", "observed": "a pickle payload ran os.system"})
    import torch
    report = {
        "machine": machine(),
        "torch": torch.__version__, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "package": package_info(),
        "wall_seconds": round(time.time() - t0, 1),
        "cli_mode": "fresh processes of the entry point" if FRESH else
        "forked children of a process that imported torch (help, Ctrl-C and kill -9 cases: fresh processes)",
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "classes": list(CLASSES), "totals": totals(records), "cases": records,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    t = report["totals"]["all"]
    print(f"{t['cases']} cases: " + ", ".join(f"{k} {t[k]}" for k in CLASSES) + f" ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
