"""Python API, outputs: never an input or another file's sidecar; modes, read-only files and
symbolic links kept; atomic writes (an interrupted write leaves the old file and no temporary)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import torch

from unrolled3d.io import atomic_path, check_not_input, read_volume, write_volume

from .catalogue import Case, Catalogue
from .inputs import cp, volume


def cases() -> list[Case]:  # noqa: C901 - a catalogue
    c = Catalogue()
    A = c.api
    vol = volume()

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
    return c.cases
