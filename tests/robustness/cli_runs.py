"""Command line, runs: a run never takes over another's folder; kill -9 then --resume gives the
uninterrupted run's model; Ctrl-C stops every long command in one line; --help answers at once."""
from __future__ import annotations

import json
import shutil
import signal

from .catalogue import Case, Catalogue, toml
from .inputs import cp, fx
from .observe import (after_seconds, help_runner, kill_inject_runner, killed_at_checkpoint, same_model_as_reference,
                      signal_runner)


def cases() -> list[Case]:  # noqa: C901 - a catalogue
    c = Catalogue()
    C = c.cli

    # ------------------------------------------------------------------ 1. runs never mix (CLI)
    def with_run(steps=2, lr="1e-3"):
        def setup(d):
            (d / "c.toml").write_text(toml(steps=steps, lr=lr))
            shutil.copytree(fx("run2"), d / "run")
        return setup
    C("train.new_run_refused", 1, "error", ("another run", "--resume", "--overwrite"),
      ["train", "{d}/c.toml", "--out-dir", "{d}/run"], setup=with_run(lr="5e-3"))
    C("train.resume_other_config", 1, "error", ("another run", "lr"),
      ["train", "{d}/c.toml", "--out-dir", "{d}/run", "--resume"], setup=with_run(lr="5e-3"))
    C("train.resume_model_without_checkpoints", 1, "error", "model.pt", ["train", "{d}/c.toml", "--out-dir", "{d}/run", "--resume"],
      setup=lambda d: ((d / "c.toml").write_text(toml()), (d / "run").mkdir(), shutil.copy(fx("model.pt"), d / "run" / "model.pt")))
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
                               killed_at_checkpoint(k), sig=signal.SIGKILL,
                               then=["train", "{d}/c.toml", "--out-dir", "{d}/run", "--resume"]),
          setup=lambda d: (d / "c.toml").write_text(toml(steps=60)), outputs=("run", "kill.py"),
          check=same_model_as_reference(60), timeout=300, slow=True)
    for where in ("before_rename", "after_rename"):
        C(f"train.kill9_{where}_then_resume", 3, "ok", "", runner=kill_inject_runner(where), outputs=("run", "kill.py", "c.toml"),
          check=same_model_as_reference(4), timeout=240, slow=True)

    # ------------------------------------------------------------------ 4/7. Ctrl-C in long commands
    C("ctrl_c.train_after_checkpoint", 4, "interrupt", ("interrupted", "--resume"),
      runner=signal_runner(["train", "{d}/c.toml", "--out-dir", "{d}/run", "--quiet"],
                           lambda d, e: (d / "run" / "checkpoints").is_dir() and any((d / "run" / "checkpoints").glob("checkpoint_*.pt"))),
      setup=lambda d: (d / "c.toml").write_text(toml(steps=100000)), outputs=("run",), timeout=180, slow=True)
    C("ctrl_c.train_before_first_step", 4, "interrupt", "interrupted",
      runner=signal_runner(["train", "{d}/c.toml", "--out-dir", "{d}/run"], lambda d, e: (d / "run").exists()),
      setup=lambda d: (d / "c.toml").write_text(toml(steps=100000)), outputs=("run",), timeout=180, slow=True)
    # each interrupted command has seconds of work left after its ready line (12 s, 3 s, 12 s measured on
    # an idle 2-core machine): a signal sent as its work ends would test the exit, not the interruption
    C("ctrl_c.reconstruct_unrolled", 4, "interrupt", "interrupted",
      runner=signal_runner(["reconstruct", "{d}/m64.pt", "--method", "unrolled", "--weights", "{d}/model.pt",
                            "--patch-size", "16", "--sweeps", "20", "--output", "{d}/x.npy"],
                           lambda d, e: "sweep 1/20" in e),
      setup=lambda d: cp(d, "m64.pt", "model.pt"), outputs=("x.npy", "x.json"), timeout=180, slow=True,
      check=lambda d, rc, o, e: not (d / "x.npy").exists())
    C("ctrl_c.reconstruct_fdk", 4, "interrupt", "interrupted",
      runner=signal_runner(["reconstruct", "{d}/m160.pt", "--output", "{d}/x.npy"], lambda d, e: "FDK backprojection" in e),
      setup=lambda d: cp(d, "m160.pt"), outputs=("x.npy", "x.json"), timeout=180, slow=True)
    C("ctrl_c.fit_normal", 4, "interrupt", "interrupted",
      runner=signal_runner(["fit-normal", "{d}/m32.pt", "--iters", "100000", "--out", "{d}/o.pt"], lambda d, e: "fitting" in e),
      setup=lambda d: cp(d, "m32.pt"), outputs=("o.pt",), timeout=180, slow=True)
    C("ctrl_c.simulate_large", 4, "interrupt", "interrupted",
      runner=signal_runner(["simulate", "--size", "200", "--views", "60", "--out", "{d}/o.pt"],
                           after_seconds(6.0)),
      outputs=("o.pt",), timeout=180, slow=True)
    C("ctrl_c.demo", 4, "interrupt", "interrupted",
      runner=signal_runner(["demo", "--out", "{d}/d.png"], lambda d, e: "sweep 1" in e),
      outputs=("d.png",), timeout=180, slow=True)

    # ------------------------------------------------------------------ 7. --help fast, info
    for sub in ["", "demo", "simulate", "fit-normal", "train", "reconstruct", "import-walnut", "bench", "info"]:
        C(f"help.{sub or 'main'}_under_1.5s", 7, "ok", "", runner=help_runner(sub),
          check=lambda d, rc, o, e: "usage" in o and float(e.split("[wall ")[1].split()[0]) < 1.5 or e.strip())
    C("info.json", 7, "ok", "", ["info", "--json"], check=lambda d, rc, o, e: "version" in json.loads(o))
    C("bench.unknown_suite", 8, "error", "nope", ["bench", "--suite", "nope", "--results", "{d}/r"])
    C("no_command", 8, "error", "", [])
    C("unknown_command", 8, "error", "", ["frobnicate"])
    return c.cases
