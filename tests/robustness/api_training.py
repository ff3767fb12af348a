"""Python API, training: settings checked, runs that never mix, resume past damaged checkpoints,
divergence said plainly; and progress shown by long work (quiet by default)."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch

from unrolled3d.data import PhantomDataset
from unrolled3d.data.walnut import read_walnut
from unrolled3d.models import UNet3D, UnrolledPGD
from unrolled3d.partition import PartitionedReconstructor
from unrolled3d.physics import ConeBeamCT, fdk, standard_cone_beam
from unrolled3d.train import TrainConfig, train

from .api_models import prec, wrapper
from .catalogue import Case, Catalogue
from .inputs import cp, g8


def cases() -> list[Case]:  # noqa: C901 - a catalogue
    c = Catalogue()
    A = c.api

    # ------------------------------------------------------------------ 1/3. training: runs, resume, fallback

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
    return c.cases
