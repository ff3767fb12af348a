r"""The training loop: a :class:`~unrolled3d.training.Trainer` stepped inside a
:class:`~unrolled3d.training.RunFolder`.

Examples
--------
Two steps on 8^3 phantoms with 4^3 patches (a real run: ``steps=2000, out_dir="runs/a",
checkpoint_every=100`` and ``resume=True`` after an interruption):

>>> from unrolled3d.data import PhantomDataset
>>> from unrolled3d.models import UNet3D, UnrolledPGD
>>> from unrolled3d.partition import PartitionedReconstructor
>>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
>>> from unrolled3d.training import TrainConfig, train
>>> physics = ConeBeamCT(standard_cone_beam(8, 6), normalize=True)
>>> rec = PartitionedReconstructor(UnrolledPGD(UNet3D(base=4, depth=1), n_iter=2), (8, 8, 8), (4, 4, 4))
>>> history = train(rec, physics, PhantomDataset(4, 8), TrainConfig(steps=2, lr=1e-3, progress=False))
>>> len(history["losses"]), history["step"]
(2, 2)
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from .._validation import boolean
from ..protocols import PatchTrainable
from .config import TrainConfig
from .identity import run_description
from .run_folder import RunFolder
from .trainer import Trainer, ValData

__all__ = ["train"]


def train(rec: torch.nn.Module, physics: Any, dataset: Any, config: TrainConfig | None = None, resume: bool = False,
          val_data: ValData | None = None, callback: Callable[[int, float], None] | None = None,
          loss_kwargs: dict[str, Any] | None = None, val_metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
          overwrite: bool = False, run_info: dict[str, Any] | None = None, folder: RunFolder | None = None
          ) -> dict[str, Any]:
    r"""Train ``rec`` (a :class:`~unrolled3d.partition.PartitionedReconstructor`) with ``L_PART``.

    ``physics`` is the full-volume operator, ``dataset`` indexable volumes ``(C, D, H, W)``,
    ``config`` a :class:`TrainConfig` (default ``TrainConfig()``). With ``config.out_dir`` (or a
    claimed ``folder``) the run owns that folder and writes checkpoints there: ``resume=True``
    continues from the newest readable checkpoint of the same run (an identical continuation),
    ``overwrite=True`` archives another run's files first (the rules: :mod:`.run_folder`).
    ``val_data`` (``(x, y)`` pairs) is scored by ``val_metric`` every ``config.val_every``
    steps; ``callback(step, loss)`` runs after each step and its checkpoint (raising from it
    stops training); ``loss_kwargs`` go to ``training_loss``; ``run_info`` adds to the run's
    fingerprint (:func:`run_description`). Data parallel under ``torch.distributed``: see
    :mod:`.trainer`.

    Returns ``{"losses", "val", "step", "checkpoint", "resumed_from", "resumed_checkpoint",
    "skipped_checkpoints", "archived_to", "removed_temporaries", "fingerprint", "time_s"}``
    (paths as strings, ``None`` where there is none).
    """
    cfg = _checked(rec, physics, dataset, config, resume, overwrite, val_data, folder)
    t0 = time.perf_counter()
    trainer = Trainer(rec, physics, dataset, cfg, loss_kwargs=loss_kwargs, val_data=val_data, val_metric=val_metric)
    fingerprint, description = run_description(rec, physics, dataset, cfg, run_info)
    run = folder if folder is not None or cfg.out_dir is None else RunFolder(cfg.out_dir)
    with run.claim() if run is not None and folder is None else contextlib.nullcontext():
        state = None
        if run is not None:
            run.prepare(resume=resume, overwrite=overwrite)
            state = run.resume(fingerprint, description, cfg) if resume else None
        trainer.start(state, where=str(run.resumed_checkpoint) if run is not None else "")
        del state
        _loop(trainer, run, callback, fingerprint, description)
    return _summary(trainer, run, fingerprint, time.perf_counter() - t0)


def _checked(rec: Any, physics: Any, dataset: Any, config: Any, resume: Any, overwrite: Any, val_data: Any,
             folder: Any) -> TrainConfig:
    """The arguments of :func:`train`, checked before any folder is touched; the configuration."""
    cfg = TrainConfig() if config is None else config
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    if isinstance(rec, torch.nn.parallel.DistributedDataParallel):
        raise TypeError("rec is wrapped in DistributedDataParallel: pass the model itself (train averages the "
                        "gradients over the ranks, a wrapper would average them twice)")
    if not isinstance(rec, PatchTrainable):
        raise TypeError(f"rec must provide training_loss (a PartitionedReconstructor), got {type(rec).__name__}")
    if not callable(getattr(physics, "A", None)):
        raise TypeError(f"physics must be a deepinv physics (with an operator A), got {type(physics).__name__}")
    RunFolder.check_start(boolean("resume", resume), boolean("overwrite", overwrite))
    if len(dataset) < 1:
        raise ValueError("the dataset is empty")
    if folder is not None and not isinstance(folder, RunFolder):
        raise TypeError(f"folder must be a RunFolder, got {type(folder).__name__}")
    if resume and cfg.out_dir is None and folder is None:
        raise ValueError("resume=True needs config.out_dir (where the checkpoints are)")
    if cfg.val_every and not val_data:
        raise ValueError("config.val_every > 0 needs val_data")
    return cfg


def _summary(trainer: Trainer, run: RunFolder | None, fingerprint: str, seconds: float) -> dict[str, Any]:
    """What :func:`train` returns (paths as strings)."""
    def path(p: Any) -> str | None:
        return None if p is None else str(p)

    out = {"losses": trainer.losses, "val": trainer.val, "step": len(trainer.losses), "checkpoint": None,
           "resumed_from": trainer.resumed_from, "resumed_checkpoint": None, "skipped_checkpoints": [],
           "archived_to": None, "removed_temporaries": [], "fingerprint": fingerprint, "time_s": seconds}
    if run is not None:
        out.update(checkpoint=path(run.last_checkpoint), resumed_checkpoint=path(run.resumed_checkpoint),
                   skipped_checkpoints=[str(p) for p in run.skipped_checkpoints], archived_to=path(run.archived_to),
                   removed_temporaries=[str(p) for p in run.removed_temporaries])
    return out


def _loop(trainer: Trainer, run: RunFolder | None, callback: Callable[[int, float], None] | None,
          fingerprint: str, description: dict[str, Any]) -> None:
    """Step up to ``config.steps``: validate, checkpoint and call back on schedule."""
    cfg = trainer.config
    show = cfg.progress and trainer.rank == 0
    with tqdm(total=cfg.steps, initial=trainer.step_count, desc="train", disable=not show, dynamic_ncols=True,
              file=sys.stderr) as bar:
        while trainer.step_count < cfg.steps:
            try:
                loss = trainer.step()
            except FloatingPointError as exc:
                if run is None or run.last_checkpoint is None:
                    raise
                raise FloatingPointError(f"{exc}; the last checkpoint is {run.last_checkpoint}") from None
            step = trainer.step_count
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3e}", lr=f"{trainer.learning_rate():.2e}")
            if cfg.val_every and step % cfg.val_every == 0:
                metrics = trainer.evaluate()
                if show:  # stderr, with the bar: stdout is the caller's (e.g. one JSON object)
                    bar.write(f"step {step}: val PSNR {metrics['psnr']:.2f} dB", file=sys.stderr)
            if run is not None and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps):
                run.save(step, trainer.state_dict(), cfg.keep_checkpoints, fingerprint, description)
            if callback is not None:
                callback(step, loss)
