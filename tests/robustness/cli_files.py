"""Command line, bad files: every kind of bad measurements, weights, normal-operator and volume
file refused in one line naming the file."""
from __future__ import annotations

import json
import os

import torch

from .catalogue import Case, Catalogue
from .inputs import copy_all, copy_m, cp, np_save, torch_save, torch_variant, write_pickle


def cases() -> list[Case]:  # noqa: C901 - a catalogue
    c = Catalogue()
    C = c.cli
    M, W = "{d}/m.pt", "{d}/model.pt"

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
          setup=lambda d, make=make: (copy_m(d), make(d / "bad.pt")), outputs=("x.npy", "x.json"))
        if kind == "directory":
            continue
        C(f"reconstruct.normal_{kind}", 4, "error", "bad.pt",
          ["reconstruct", M, "--method", "unrolled", "--weights", W, "--normal", "{d}/bad.pt", "--output", "{d}/x.npy"],
          setup=lambda d, make=make: (copy_all(d), make(d / "bad.pt")), outputs=("x.npy", "x.json"))
        if kind == "garbage":
            continue
        C(f"fit_normal.measurements_{kind}", 4, "error", "bad.pt", ["fit-normal", "{d}/bad.pt", "--iters", "1", "--out", "{d}/o.pt"],
          setup=lambda d, make=make: make(d / "bad.pt"), outputs=("o.pt",))
    meas = {
        "no_y": lambda s: {k: v for k, v in s.items() if k != "y"},
        "no_geometry": lambda s: {k: v for k, v in s.items() if k != "geometry"},
        "geometry_bad_json": lambda s: {**s, "geometry": "{not json"},
        "y_nan": lambda s: {**s, "y": s["y"].index_fill(2, torch.tensor([1]), float("nan"))},
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
          setup=lambda d, change=change: (copy_m(d), variant("model.pt", "bad.pt", change)(d)), outputs=("x.npy", "x.json"))
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
    for ext, kind, make in [(".npy", "empty", lambda p: p.write_bytes(b"")), (".npy", "2d", lambda p: np_save(p, 2)),
                            (".h5", "garbage", lambda p: p.write_bytes(os.urandom(99))),
                            (".tif", "truncated_header", lambda p: p.write_bytes(b"II*\x00xx")),
                            (".pt", "pickle", lambda p: write_pickle(p)), (".xyz", "unknown_ending", lambda p: np_save(p, 3))]:
        C(f"simulate.volume{ext}.{kind}", 4, "error", f"vol{ext}",
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
    return c.cases
