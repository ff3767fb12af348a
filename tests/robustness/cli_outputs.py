"""Command line, outputs: never over an input (by name, link, hard link or spelling) or another
file's sidecar; read-only outputs refused unless forced (and kept read-only), modes and links kept."""
from __future__ import annotations

import json
import os
import shutil
import stat

from .catalogue import Case, Catalogue, toml
from .inputs import copy_all, copy_m, cp, fx


def cases() -> list[Case]:  # noqa: C901 - a catalogue
    c = Catalogue()
    C = c.cli
    M, W, H = "{d}/m.pt", "{d}/model.pt", "{d}/h.pt"

    # ------------------------------------------------------------------ 2. outputs over inputs
    C("reconstruct.output_is_input", 2, "error", "input", ["reconstruct", M, "--output", M], setup=copy_m)
    C("reconstruct.output_symlink_to_input", 2, "error", "input", ["reconstruct", M, "--output", "{d}/l.pt"],
      setup=lambda d: (copy_m(d), (d / "l.pt").symlink_to(d / "m.pt")))
    C("reconstruct.output_hardlink_of_input", 2, "error", "input", ["reconstruct", M, "--output", "{d}/hl.pt"],
      setup=lambda d: (copy_m(d), os.link(d / "m.pt", d / "hl.pt")))
    C("reconstruct.output_relative_spelling", 2, "error", "input", ["reconstruct", "m.pt", "--output", "./sub/../m.pt"],
      setup=lambda d: (copy_m(d), (d / "sub").mkdir()))
    C("reconstruct.output_is_weights", 2, "error", "input",
      ["reconstruct", M, "--method", "unrolled", "--weights", W, "--output", W], setup=copy_all)
    C("reconstruct.output_is_normal", 2, "error", "input",
      ["reconstruct", M, "--method", "unrolled", "--weights", W, "--normal", H, "--output", H], setup=copy_all)
    C("reconstruct.npy_sidecar_is_input", 2, "error", "m.json", ["reconstruct", "{d}/m.json", "--output", "{d}/m.npy"],
      setup=lambda d: shutil.copy(fx("m.pt"), d / "m.json"))
    C("fit_normal.out_is_input", 2, "error", "input", ["fit-normal", M, "--iters", "1", "--out", M], setup=copy_m)
    C("fit_normal.out_symlink_to_input", 2, "error", "input", ["fit-normal", M, "--iters", "1", "--out", "{d}/l.pt"],
      setup=lambda d: (copy_m(d), (d / "l.pt").symlink_to(d / "m.pt")))
    C("simulate.output_is_volume", 2, "error", "input", ["simulate", "--volume", "{d}/v.pt", "--views", "4", "--output",
                                                         "{d}/v.pt"], setup=lambda d: cp(d, "v.pt"))
    C("simulate.output_symlink_to_volume", 2, "error", "input",
      ["simulate", "--volume", "{d}/v.pt", "--views", "4", "--output", "{d}/l.pt"],
      setup=lambda d: (cp(d, "v.pt"), (d / "l.pt").symlink_to(d / "v.pt")))
    C("import_walnut.out_is_geometry_file", 2, "error", "",
      ["import-walnut", "{d}/walnut", "--geometry-file", "g.pt", "--out", "{d}/walnut/g.pt", "--vol-shape", "8", "8", "8"],
      setup=lambda d: (cp(d, "walnut"), shutil.copy(d / "walnut" / "scan_geom_corrected.geom", d / "walnut" / "g.pt")))
    C("reconstruct.npy_unrelated_json", 2, "error", "X.json", ["reconstruct", M, "--output", "{d}/X.npy"],
      setup=lambda d: (copy_m(d), (d / "X.json").write_text('{"my": "notes"}')), outputs=("X.npy",))
    C("reconstruct.npy_unrelated_json_forced", 2, "ok", "", ["reconstruct", M, "--output", "{d}/X.npy", "--force", "--quiet"],
      setup=lambda d: (copy_m(d), (d / "X.json").write_text('{"my": "notes"}')), outputs=("X.npy", "X.json"),
      check=lambda d, rc, o, e: "voxel_size_zyx_mm" in (d / "X.json").read_text())
    C("reconstruct.npy_own_sidecar_replaced", 2, "ok", "", ["reconstruct", M, "--output", "{d}/x.npy", "--quiet"],
      setup=lambda d: (copy_m(d), shutil.copy(fx("v.npy"), d / "x.npy"), shutil.copy(fx("v.json"), d / "x.json")),
      outputs=("x.npy", "x.json"), check=lambda d, rc, o, e: json.loads((d / "x.json").read_text())["voxel_size_zyx_mm"]
      != [0.5, 0.5, 0.5])
    C("train.model_pt_read_only", 6, "error", ("read-only", "model.pt"), ["train", "{d}/c.toml", "--out-dir", "{d}/run",
                                                                           "--overwrite"],
      setup=lambda d: ((d / "c.toml").write_text(toml(steps=1)), (d / "run").mkdir(), shutil.copy(fx("model.pt"), d / "run" / "model.pt"),
                       os.chmod(d / "run" / "model.pt", 0o444)))

    # ------------------------------------------------------------------ 6. permissions and links
    for cmd, argv, out in [
        ("reconstruct", ["reconstruct", M, "--output", "{d}/x.h5"], "x.h5"),
        ("fit_normal", ["fit-normal", M, "--iters", "1", "--out", "{d}/o.pt"], "o.pt"),
        ("simulate", ["simulate", "--size", "8", "--views", "4", "--out", "{d}/o.pt"], "o.pt"),
    ]:
        def ro_setup(d, out=out):
            copy_m(d)
            shutil.copy(fx("v.h5" if out.endswith(".h5") else "h.pt"), d / out)
            os.chmod(d / out, 0o444)
        C(f"{cmd}.read_only_output_refused", 6, "error", ("read-only", out), argv, setup=ro_setup)
        if cmd != "reconstruct":
            continue  # the other commands write through the same atomic_path; one case each above
        C(f"{cmd}.read_only_output_forced", 6, "ok", "", [*argv, "--force", "--quiet"], setup=ro_setup, outputs=(out,),
          check=lambda d, rc, o, e, out=out: stat.S_IMODE((d / out).stat().st_mode) == 0o444
          and (d / out).read_bytes() != (fx("v.h5" if out.endswith(".h5") else "h.pt")).read_bytes())

        def mode_setup(d, out=out):
            copy_m(d)
            shutil.copy(fx("v.h5" if out.endswith(".h5") else "h.pt"), d / out)
            os.chmod(d / out, 0o600)
        C(f"{cmd}.keeps_mode_0600", 6, "ok", "", [*argv, "--quiet"], setup=mode_setup, outputs=(out,),
          check=lambda d, rc, o, e, out=out: stat.S_IMODE((d / out).stat().st_mode) == 0o600)

        def link_setup(d, out=out):
            copy_m(d)
            (d / "data").mkdir()
            shutil.copy(fx("v.h5" if out.endswith(".h5") else "h.pt"), d / "data" / out)
            (d / out).symlink_to(d / "data" / out)
        C(f"{cmd}.writes_through_symlink", 6, "ok", "", [*argv, "--quiet"], setup=link_setup, outputs=(out, f"data/{out}"),
          check=lambda d, rc, o, e, out=out: (d / out).is_symlink() and (d / "data" / out).read_bytes()
          != (fx("v.h5" if out.endswith(".h5") else "h.pt")).read_bytes())
    C("reconstruct.output_folder_missing", 6, "either", "", ["reconstruct", M, "--output", "{d}/no/such/x.h5", "--quiet"],
      setup=copy_m, check=lambda d, rc, o, e: (d / "no" / "such" / "x.h5").exists())
    C("reconstruct.output_is_a_folder", 6, "error", "x.h5", ["reconstruct", M, "--output", "{d}/x.h5"],
      setup=lambda d: (copy_m(d), (d / "x.h5").mkdir()))
    C("train.out_dir_is_a_file", 6, "error", "run", ["train", "{d}/c.toml", "--out-dir", "{d}/run"],
      setup=lambda d: ((d / "c.toml").write_text(toml()), (d / "run").write_text("x")))
    return c.cases
