"""Python API, every loader and every bad file: empty, garbage, text, pickles, truncated, missing
keys, wrong shapes, NaN; volumes in every format; measurements, k-space, Walnut scans."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from unrolled3d.data.walnut import read_walnut, read_walnut_geometry
from unrolled3d.io import check_pt_name, load_measurements, load_model, read_volume, save_measurements, write_volume
from unrolled3d.mri import read_kspace_npy
from unrolled3d.normal import DiagCirculantWrapper
from unrolled3d.physics import ConeBeamCT
from unrolled3d.train import load_checkpoint

from .catalogue import Case, Catalogue
from .inputs import cp, fx, g8, torch_variant, volume, write_pickle


def cases() -> list[Case]:  # noqa: C901 - a catalogue
    c = Catalogue()
    A = c.api

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
                    p.write_bytes(fx(src).read_bytes()[:200])
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
        "measurements_file": lambda p: shutil.copy(fx("m.pt"), p),
    }
    loader_cases("normal.load", 4, "h.pt", load_h, "h.pt", h_variants)

    loader_cases("load_checkpoint", 4, "model.pt", load_checkpoint, "checkpoint_00000001.pt", {})

    # volumes: every format
    vol = volume()
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

    A("read_kspace_npy.torch_zip", 8, "error", "k.npy",
      lambda d: (torch.save({"k": torch.zeros(2, dtype=torch.complex64)}, d / "k.npy"), read_kspace_npy(d / "k.npy"))[1])
    A("read_kspace_npy.real", 4, "error", "k.npy",
      lambda d: (np.save(d / "k.npy", np.zeros((2, 4, 4, 4), np.float32)), read_kspace_npy(d / "k.npy"))[1])
    A("read_kspace_npy.nan", 5, "error", "k.npy",
      lambda d: (np.save(d / "k.npy", np.full((2, 4, 4, 4), np.nan, np.complex64)), read_kspace_npy(d / "k.npy"))[1])

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
    return c.cases
