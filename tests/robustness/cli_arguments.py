"""Command line, arguments: NaN, inf and negative numbers, non-integers, huge sizes, wrong endings,
conflicting options, bad Walnut scans and bad training configurations; valid edge cases work."""
from __future__ import annotations

import json
import os
import shutil

from .catalogue import Case, Catalogue, toml
from .inputs import copy_all, copy_m, cp, fx, nan_geometry_row, vol_ok, write_pickle


def cases() -> list[Case]:  # noqa: C901 - a catalogue
    c = Catalogue()
    C = c.cli
    M, W, H = "{d}/m.pt", "{d}/model.pt", "{d}/h.pt"

    # ------------------------------------------------------------------ 5. NaN / inf in arguments
    for v in ["nan", "inf", "-0.1"]:
        C(f"simulate.noise={v}", 5, "error", "--noise", ["simulate", "--size", "8", "--views", "4", "--noise", v, "--out",
                                                        "{d}/o.pt"], outputs=("o.pt",))
    C("simulate.noise=0", 5, "ok", "", ["simulate", "--size", "8", "--views", "4", "--noise", "0", "--out", "{d}/o.pt", "--quiet"],
      outputs=("o.pt",), check=lambda d, rc, o, e: (d / "o.pt").exists())
    for v in ["1e30", "nan", "0"]:
        C(f"fit_normal.lr={v}", 5, "error", "lr", ["fit-normal", M, "--iters", "3", "--lr", v, "--out", "{d}/o.pt"], setup=copy_m,
          outputs=("o.pt",))
    for v in ["0", "2.5"]:
        C(f"fit_normal.iters={v}", 8, "error", "--iters", ["fit-normal", M, "--iters", v, "--out", "{d}/o.pt"], setup=copy_m,
          outputs=("o.pt",))
    C("fit_normal.kernel_radius=-1", 8, "error", "kernel", ["fit-normal", M, "--iters", "1", "--kernel-radius", "-1", "--out",
                                                          "{d}/o.pt"], setup=copy_m, outputs=("o.pt",))
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
                                                                      "{d}/x.npy"], setup=copy_m)
    C("reconstruct.unrolled_without_weights", 8, "error", "--weights", ["reconstruct", M, "--method", "unrolled", "--output",
                                                                        "{d}/x.npy"], setup=copy_m)
    C("reconstruct.method_bad", 8, "error", "--method", ["reconstruct", M, "--method", "sirt", "--output", "{d}/x.npy"], setup=copy_m)
    for out in ["x.xyz", "x.txt", "x"]:
        C(f"reconstruct.output={out}", 8, "error", out, ["reconstruct", M, "--output", f"{{d}}/{out}"], setup=copy_m,
          outputs=(out,))
    for out in ["x.npy", "x.nii.gz", "x.h5", "x.tif", "x.pt"]:
        C(f"reconstruct.output={out}.roundtrip", 8, "ok", "", ["reconstruct", M, "--output", f"{{d}}/{out}", "--quiet"],
          setup=copy_m, outputs=(out, "x.json"), check=lambda d, rc, o, e, out=out: vol_ok(d / out))
    C("reconstruct.unrolled_ok", 7, "ok", "", ["reconstruct", M, "--method", "unrolled", "--weights", W, "--output", "{d}/x.npy"],
      setup=lambda d: cp(d, "m.pt", "model.pt"), outputs=("x.npy", "x.json"),
      check=lambda d, rc, o, e: "sweep" in e and "patches" in e and vol_ok(d / "x.npy"))
    C("reconstruct.unrolled_normal_ok", 7, "ok", "",
      ["reconstruct", M, "--method", "unrolled", "--weights", W, "--normal", H, "--output", "{d}/x.npy", "--json"],
      setup=copy_all, outputs=("x.npy", "x.json"), check=lambda d, rc, o, e: json.loads(o)["method"] == "unrolled" and e == "")
    C("reconstruct.unrolled_memory_budget_ok", 8, "ok", "",
      ["reconstruct", M, "--method", "unrolled", "--weights", W, "--memory-budget", "2G", "--output", "{d}/x.npy", "--json"],
      setup=lambda d: cp(d, "m.pt", "model.pt"), outputs=("x.npy", "x.json"), check=lambda d, rc, o, e: "patch" in json.loads(o))
    C("reconstruct.fdk_progress", 7, "ok", "", ["reconstruct", M, "--output", "{d}/x.npy"], setup=copy_m, outputs=("x.npy", "x.json"),
      check=lambda d, rc, o, e: "FDK" in e)
    C("reconstruct.quiet_is_silent", 7, "ok", "", ["reconstruct", M, "--method", "unrolled", "--weights", W, "--output",
                                                   "{d}/x.npy", "--quiet"],
      setup=lambda d: cp(d, "m.pt", "model.pt"), outputs=("x.npy", "x.json"), check=lambda d, rc, o, e: o == "" and e == "")
    C("fit_normal.progress", 7, "ok", "", ["fit-normal", M, "--iters", "2", "--out", "{d}/o.pt"], setup=copy_m, outputs=("o.pt",),
      check=lambda d, rc, o, e: "||A||" in e and "fitting" in e)
    C("fit_normal.json_only_json", 7, "ok", "", ["fit-normal", M, "--iters", "2", "--out", "{d}/o.pt", "--json"], setup=copy_m,
      outputs=("o.pt",), check=lambda d, rc, o, e: isinstance(json.loads(o)["relative_error"], float) and e == "")
    for out in ["o.npy"]:
        C(f"fit_normal.out={out}", 8, "error", ".pt", ["fit-normal", M, "--iters", "1", "--out", f"{{d}}/{out}"], setup=copy_m,
          outputs=(out,))
    C("demo.out_txt", 8, "error", ".png", ["demo", "--quick", "--out", "{d}/d.txt"], outputs=("d.txt",))
    C("demo.size_4.7", 8, "error", "--size", ["demo", "--size", "4.7", "--out", "{d}/d.png"])
    C("demo.volumes_0", 8, "error", "volumes", ["demo", "--volumes", "0", "--out", "{d}/d.png"], outputs=("d.png",))
    C("demo.seed_-1", 8, "error", "--seed", ["demo", "--quick", "--seed", "-1", "--out", "{d}/d.png"], outputs=("d.png",))
    C("demo.weights_pickle", 4, "error", "bad.pt", ["demo", "--quick", "--weights", "{d}/bad.pt", "--out", "{d}/d.png"],
      setup=lambda d: write_pickle(d / "bad.pt"), outputs=("d.png",))
    C("demo.weights_is_png_target", 2, "error", "", ["demo", "--quick", "--weights", "{d}/w.png", "--out", "{d}/w.png"],
      setup=lambda d: shutil.copy(fx("model.pt"), d / "w.png"))

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
    return c.cases
