r"""Training loop of a :class:`~unrolled3d.partition.PartitionedReconstructor` with ``L_PART``.

Each step draws ``batch_size`` volumes from the dataset, simulates ``y = A x + noise`` and
minimises the patch loss with ground-truth context
(:meth:`~unrolled3d.partition.PartitionedReconstructor.training_loss`, a random patch per volume).
All randomness of the loop (volume index, noise, patch position) comes from one CPU
``torch.Generator`` seeded by ``TrainConfig.seed``; the global torch RNG (used e.g. by dropout)
is seeded too. Checkpoints are written atomically and durably (synced before and after the
rename; older ones pruned only then) and hold every state needed to continue bit-for-bit: after
``resume=True`` the next step's loss is identical to the uninterrupted run's (on the same
hardware, thread count and library versions).

A run owns its checkpoint folder: every checkpoint records the run's fingerprint
(:func:`run_description`: physics, data, model architecture, training settings); a new run
refuses a folder holding checkpoints (``overwrite=True`` archives them), ``resume=True`` refuses
a checkpoint of another configuration and falls back past unreadable ones, and pruning deletes
only the run's own checkpoints.

Data parallel: when ``torch.distributed`` is initialised (e.g. under ``torchrun``), every rank
draws its own volumes, noise and patches (generator seeded with ``seed + rank``), starts from rank
0's weights, and averages gradients over ranks after each step (the effective batch is ``world *
batch_size``); rank 0 writes the checkpoints, which hold every rank's RNG state so that a resumed
run with the same number of ranks continues identically.

Examples
--------
Two steps on 8^3 phantoms with 4^3 patches (a real run: ``steps=2000, out_dir="runs/a",
checkpoint_every=100`` and ``resume=True`` after an interruption):

>>> from unrolled3d.data import PhantomDataset
>>> from unrolled3d.models import UNet3D, UnrolledPGD
>>> from unrolled3d.partition import PartitionedReconstructor
>>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
>>> from unrolled3d.train import TrainConfig, train
>>> physics = ConeBeamCT(standard_cone_beam(8, 6), normalize=True)
>>> rec = PartitionedReconstructor(UnrolledPGD(UNet3D(base=4, depth=1), n_iter=2), (8, 8, 8), (4, 4, 4))
>>> history = train(rec, physics, PhantomDataset(4, 8), TrainConfig(steps=2, lr=1e-3, progress=False))
>>> len(history["losses"]), history["step"]
(2, 2)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ._distributed import rank_and_world
from ._validation import boolean, choice, integer, real
from .errors import FileFormatError, first_line
from .io.atomic import atomic_path, remove_stale_temporaries
from .metrics import psnr
from .protocols import Fingerprinted, PatchTrainable

__all__ = ["TrainConfig", "train", "evaluate", "latest_checkpoint", "load_checkpoint", "checkpoints",
           "run_description", "CHECKPOINT_FORMAT", "ARCHIVE_FOLDER"]

CHECKPOINT_FORMAT = 1
_CKPT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
_CKPT_NAME_PATTERN = r"checkpoint_\d+\.pt"  # for the temporary files of atomic_path
#: where ``overwrite=True`` moves a previous run's checkpoints (inside ``out_dir``)
ARCHIVE_FOLDER = "archived"
# fields whose change between a run and its resumption breaks the "identical continuation"
_RESUME_FIELDS = ("steps", "lr", "min_lr", "batch_size", "lr_schedule", "weight_decay", "grad_clip", "seed",
                  "noise_std")
# TrainConfig fields that are not part of a run's identity: how long it runs, how often it saves
# and validates, where and how it reports. Everything else is (with the physics, data and model).
_NOT_IDENTITY = ("steps", "checkpoint_every", "keep_checkpoints", "val_every", "out_dir", "progress")


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Parameters
    ----------
    steps : int
        optimiser steps in total (a resumed run continues up to this).
    lr : float
        Adam learning rate (peak of the schedule).
    batch_size : int
        volumes per step (gradients accumulated one volume at a time, each
        with its own random patch; the loss is their mean).
    lr_schedule : str
        ``"cosine"`` (cosine annealing from ``lr`` to ``min_lr`` over
        ``steps``) or ``"constant"``.
    min_lr : float
        final learning rate of the cosine schedule.
    weight_decay : float
        Adam's L2 weight decay.
    grad_clip : float
        clip the gradient norm to this (``None``: no clipping).
    seed : int
        seed of the data generator and of the global torch RNG.
    noise_std : float
        standard deviation of the Gaussian noise added to ``A x`` (absolute,
        in the units of ``physics.A``; ``physics``' own noise model is not used).
    checkpoint_every : int
        write a checkpoint every this many steps (0: only at the end).
    keep_checkpoints : int
        how many recent checkpoints to keep (>= 1).
    val_every : int
        validate every this many steps (0: never).
    out_dir : str
        checkpoint directory (``None``: no checkpoints, no resumption).
    progress : bool
        show a tqdm progress bar with the loss.

    Examples
    --------
    >>> from unrolled3d.train import TrainConfig
    >>> TrainConfig(steps=100, lr=1e-3).to_dict()["lr_schedule"]
    'cosine'
    >>> TrainConfig(steps=0)
    Traceback (most recent call last):
        ...
    ValueError: TrainConfig.steps must be a positive integer, got 0
    """

    steps: int = 1000
    lr: float = 1e-4
    batch_size: int = 1
    lr_schedule: str = "cosine"
    min_lr: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    noise_std: float = 0.0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    val_every: int = 0
    out_dir: str | os.PathLike | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name, minimum in (("steps", 1), ("batch_size", 1), ("seed", 0), ("checkpoint_every", 0),
                              ("keep_checkpoints", 1), ("val_every", 0)):
            integer(f"TrainConfig.{name}", getattr(self, name), minimum)
        real("TrainConfig.lr", self.lr, positive=True)
        for name in ("min_lr", "weight_decay", "noise_std"):
            real(f"TrainConfig.{name}", getattr(self, name), nonnegative=True)
        if self.grad_clip is not None:
            real("TrainConfig.grad_clip", self.grad_clip, positive=True)
        choice("TrainConfig.lr_schedule", self.lr_schedule, ("cosine", "constant"))
        boolean("TrainConfig.progress", self.progress)
        if self.out_dir is not None and not isinstance(self.out_dir, (str, os.PathLike)):
            raise TypeError(f"TrainConfig.out_dir must be a folder name (str or path) or None, got {self.out_dir!r}")

    def to_dict(self) -> dict[str, Any]:
        """Primitive values only (``out_dir`` as a string), as stored in checkpoints."""
        d = dataclasses.asdict(self)
        d["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        return d


# ---------------------------------------------------------------------------------- helpers
def _as_batch(x: torch.Tensor) -> torch.Tensor:
    """A dataset item ``(C, D, H, W)`` (or ``(D, H, W)``) -> ``[1, C, D, H, W]`` (``C = 1`` for CT,
    ``C = 2`` for complex MRI images as real, imaginary channels)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"dataset items must be tensors, got {type(x).__name__}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5:
        raise ValueError(f"expected a volume (C, D, H, W) or [B, C, D, H, W], got shape {tuple(x.shape)}")
    return x


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint_<step>.pt`` in ``out_dir``, oldest first."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name)))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint of the highest step in ``out_dir`` (``None`` when there is none)."""
    found = checkpoints(out_dir)
    return found[-1][1] if found else None


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """Load a training checkpoint safely (``torch.load(..., weights_only=True)``) on the CPU.

    ``mmap=True`` maps the tensors instead of reading them (cheap: to look at the step or the
    run's fingerprint). Raises :class:`~unrolled3d.errors.FileFormatError` naming the file for
    anything that is not a complete checkpoint (truncated by a crash, empty, another file).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # a truncated zip, EOFError, UnpicklingError ...
        raise FileFormatError(p, f"not a readable checkpoint ({first_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise FileFormatError(p, f"not an unrolled3d training checkpoint (format {CHECKPOINT_FORMAT})")
    missing = {"step", "model", "optimizer", "scheduler", "rng", "losses", "val"} - set(state)
    if missing:
        raise FileFormatError(p, f"incomplete checkpoint: no {sorted(missing)}")
    return state


# ---------------------------------------------------------------------------------- run identity
def _describe_model(rec: torch.nn.Module) -> dict[str, Any]:
    """The architecture (not the weights): classes, patch layout, parameter and buffer shapes."""
    out: dict[str, Any] = {"type": type(rec).__name__}
    for attr in ("img_shape", "patch_shape", "stride", "n_sweeps", "sweep_start"):
        if hasattr(rec, attr):
            value = getattr(rec, attr)
            out[attr] = list(value) if isinstance(value, tuple) else value
    base = getattr(rec, "base", None)
    if isinstance(base, torch.nn.Module):
        out["base"] = type(base).__name__
    out["tensors"] = {k: list(v.shape) for k, v in rec.state_dict().items()}
    return out


def _describe_physics(physics) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(physics).__name__}
    if isinstance(physics, Fingerprinted):
        out["fingerprint"] = physics.fingerprint()
    for attr in ("normalize", "layout", "fdk_window"):
        value = getattr(physics, attr, None)
        if isinstance(value, (bool, str, int, float)):
            out[attr] = value
    return out


def _describe_data(dataset) -> dict[str, Any]:
    describe = getattr(dataset, "describe", None)
    if callable(describe):
        return dict(describe())
    return {"type": type(dataset).__name__, "length": len(dataset)}


def run_description(rec: torch.nn.Module, physics, dataset, config: "TrainConfig",
                    extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``(fingerprint, description)`` of a training run: everything that makes two runs the same.

    The description holds the acquisition (the physics' :meth:`fingerprint`, e.g. the geometry),
    the data (the dataset's ``describe()``), the model's architecture (classes, patch layout,
    tensor shapes, not their values) and the training settings, except those that only say how
    long the run goes and how it reports (steps, checkpoint and validation intervals, folder,
    progress bar); ``extra`` (e.g. the command line's whole configuration file) is added as is.
    The fingerprint is a hash of it. Every checkpoint stores both, and ``resume=True`` refuses a
    checkpoint whose fingerprint differs, naming what changed.

    Examples
    --------
    >>> from unrolled3d.data import PhantomDataset
    >>> from unrolled3d.models import UNet3D, UnrolledPGD
    >>> from unrolled3d.partition import PartitionedReconstructor
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> from unrolled3d.train import TrainConfig, run_description
    >>> rec = PartitionedReconstructor(UnrolledPGD(UNet3D(base=4, depth=1), n_iter=2), (8, 8, 8), (4, 4, 4))
    >>> physics = ConeBeamCT(standard_cone_beam(8, 6))
    >>> a, _ = run_description(rec, physics, PhantomDataset(4, 8), TrainConfig(lr=1e-3))
    >>> b, _ = run_description(rec, physics, PhantomDataset(4, 8), TrainConfig(lr=2e-3))
    >>> a == b, len(a)
    (False, 16)
    """
    train_part = {k: v for k, v in config.to_dict().items() if k not in _NOT_IDENTITY}
    description = {"geometry": _describe_physics(physics), "data": _describe_data(dataset),
                   "model": _describe_model(rec), "train": train_part, "extra": extra or {}}
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], json.loads(text)


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted names of the entries that differ between two descriptions."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if old == new else [where or "(everything)"]


def _read_run(path: Path) -> tuple[str | None, dict | None] | None:
    """A checkpoint's ``(fingerprint, description)`` (``(None, None)`` when written before runs
    had fingerprints), or ``None`` when the file cannot be read."""
    try:
        state = load_checkpoint(path, mmap=True)
    except (FileFormatError, OSError):
        return None
    run = state.get("run") or {}
    return run.get("fingerprint"), run.get("description")


def _archive(out_dir: Path, found: list[tuple[int, Path]]) -> Path:
    """Move a previous run's checkpoints into ``out_dir/archived/<time>/`` (kept, not deleted)."""
    dest = out_dir / ARCHIVE_FOLDER / time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
    dest.mkdir(parents=True)
    for _, p in found:
        os.replace(p, dest / p.name)
    return dest


def _average_over_ranks(params: Sequence[torch.nn.Parameter]) -> None:
    """All-reduce the gradients (one flat buffer) and divide by the number of ranks."""
    world = dist.get_world_size()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return {"data": gen.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    gen.set_state(state["data"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def evaluate(rec: torch.nn.Module, physics, val_data: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
             metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None) -> dict[str, float]:
    """Full (partitioned) reconstructions of ``val_data``: mean PSNR (dB) and MSE.

    ``val_data`` is a list of ``(x, y)``: ``x`` ``[1, C, D, H, W]`` (or ``(C, D, H, W)``) and its
    measurements ``y`` (``None``: ``physics.A(x)``). ``metric(x_hat, x)`` replaces the PSNR over
    all channels (:func:`unrolled3d.metrics.psnr`), e.g. :func:`unrolled3d.metrics.magnitude_psnr`
    for complex MRI images; the MSE is over all channels.
    """
    if not val_data:
        raise ValueError("val_data is empty")
    was_training = rec.training
    rec.eval()
    device = _model_device(rec)
    psnrs, mses = [], []
    try:
        for x, y in val_data:
            x = _as_batch(x).to(device)
            y = physics.A(x) if y is None else y.to(device)
            x_hat = rec(y, physics)
            psnrs.append(psnr(x_hat, x) if metric is None else float(metric(x_hat, x)))
            mses.append(float((x_hat.double() - x.double()).square().mean()))
    finally:
        rec.train(was_training)
    return {"psnr": sum(psnrs) / len(psnrs), "mse": sum(mses) / len(mses)}


# ---------------------------------------------------------------------------------- train
def train(rec: torch.nn.Module, physics, dataset, config: TrainConfig | None = None, resume: bool = False,
          val_data: Sequence[tuple[torch.Tensor, torch.Tensor | None]] | None = None,
          callback: Callable[[int, float], None] | None = None,
          loss_kwargs: dict[str, Any] | None = None,
          val_metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
          overwrite: bool = False, run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    r"""Train ``rec`` (a :class:`~unrolled3d.partition.PartitionedReconstructor`) with ``L_PART``.

    Parameters
    ----------
    rec
        the model; trained in place, on the device of its parameters.
    physics
        the full-volume operator (a deepinv ``LinearPhysics``, e.g. ``ConeBeamCT``).
    dataset
        indexable volumes ``(1, D, H, W)`` (e.g.
        :class:`~unrolled3d.data.datasets.PhantomDataset`).
    config : TrainConfig
        hyper-parameters (default ``TrainConfig()``).
    resume : bool
        continue from the newest readable checkpoint in ``config.out_dir`` (starts afresh when
        there is none; an unreadable newer one, e.g. cut short by a power cut, is renamed
        ``*.unreadable`` and named in a warning). The checkpoint must belong to this run: the
        same :func:`run_description` fingerprint (physics, data, model architecture, training
        settings), else a ``ValueError`` lists what changed. The continuation is identical to an
        uninterrupted run.
    val_data
        list of ``(x, y)`` for validation every ``config.val_every`` steps.
    callback
        ``callback(step, loss)`` after each step (and its checkpoint); raising
        from it stops training (the checkpoints written so far remain valid).
    loss_kwargs : dict
        extra arguments of ``training_loss`` (e.g. ``fourier_filter``).
    val_metric
        ``metric(x_hat, x)`` of the validation (default: PSNR over all channels;
        :func:`unrolled3d.metrics.magnitude_psnr` for complex MRI images).
    overwrite : bool
        a run owns its folder: without ``resume``, checkpoints already in ``config.out_dir``
        are another run's, and training refuses to start (``ValueError``) rather than mix the
        two (pruning and resuming would take the other run's files). ``overwrite=True`` moves
        them to ``out_dir/archived/<time>/`` first.
    run_info : dict
        more of the run's identity to record in its fingerprint (JSON values; the command
        line passes its whole configuration file).

    Returns
    -------
    dict
        ``{"losses": [...] (one per step, all steps so far), "val": [{"step", "psnr", "mse"}, ...],
        "step": last step, "checkpoint": last checkpoint path or None, "resumed_from": step or None,
        "resumed_checkpoint": its path or None, "skipped_checkpoints": unreadable ones set aside,
        "archived_to": folder or None, "removed_temporaries": stale temporary files removed,
        "fingerprint": the run's, "time_s": wall time of this call}``.
    """
    cfg = TrainConfig() if config is None else config
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    if not isinstance(rec, PatchTrainable):
        raise TypeError(f"rec must provide training_loss (a PartitionedReconstructor), got {type(rec).__name__}")
    if not callable(getattr(physics, "A", None)):  # checked before any folder is touched, not at the first step
        raise TypeError(f"physics must be a deepinv physics (with an operator A), got {type(physics).__name__}")
    resume, overwrite = boolean("resume", resume), boolean("overwrite", overwrite)
    if len(dataset) < 1:
        raise ValueError("the dataset is empty")
    if resume and cfg.out_dir is None:
        raise ValueError("resume=True needs config.out_dir (where the checkpoints are)")
    if resume and overwrite:
        raise ValueError("resume=True continues the run in config.out_dir, overwrite=True archives it: choose one")
    if cfg.val_every and not val_data:
        raise ValueError("config.val_every > 0 needs val_data")
    out_dir = None if cfg.out_dir is None else Path(cfg.out_dir)
    loss_kwargs = dict(loss_kwargs or {})
    t0 = time.perf_counter()
    device = _model_device(rec)
    fingerprint, description = run_description(rec, physics, dataset, cfg, run_info)

    params = [p for p in rec.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.min_lr)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    # Data parallel (torch.distributed initialised, e.g. under torchrun): every rank draws its own
    # volumes, noise and patches (seed + rank), gradients are averaged over ranks after each step
    # (the effective batch is world * batch_size), rank 0 writes the checkpoints.
    rank, world = rank_and_world()
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + rank)
    if world > 1:
        for t in rec.state_dict().values():
            dist.broadcast(t, src=0)  # identical start on every rank

    # ---- the folder: owned by one run. Every rank reads it (the same answer everywhere); only
    # rank 0 changes it (archive, stale temporaries, unreadable checkpoints set aside).
    archived_to, removed_tmp, skipped = None, [], []
    found = checkpoints(out_dir) if out_dir is not None else []
    if found and not resume:
        if not overwrite:
            raise ValueError(
                f"{out_dir} holds the checkpoints of another run ({len(found)}, up to {found[-1][1].name}): "
                f"resume it (resume=True, --resume), choose another folder, or archive them first "
                f"(overwrite=True, --overwrite)")
    if out_dir is not None and rank == 0:
        if found and overwrite:
            archived_to = _archive(out_dir, found)
            found = []
        # a kill between the write and the rename of a checkpoint left its temporary file
        removed_tmp = remove_stale_temporaries(out_dir, _CKPT_NAME_PATTERN)
    if world > 1 and out_dir is not None:
        dist.barrier()
        found = checkpoints(out_dir)

    start, losses, val_hist, resumed_from, last_ckpt, resumed_ckpt = 0, [], [], None, None, None
    mine: list[tuple[int, Path]] = []  # this run's checkpoints: the only ones pruning may delete
    state = None
    if resume:
        for step_i, path in reversed(found):  # the newest readable checkpoint
            try:
                state = load_checkpoint(path)
            except FileFormatError as exc:
                skipped.append(path)
                warnings.warn(f"skipping {exc}", RuntimeWarning, stacklevel=2)
                continue
            resumed_ckpt = path
            break
        if state is not None:
            run = state.get("run") or {}
            if run.get("fingerprint") is None:  # written before runs had fingerprints
                saved = state.get("config", {})
                changed = [k for k in _RESUME_FIELDS if k in saved and saved[k] != getattr(cfg, k)]
                warnings.warn(f"{resumed_ckpt} records no run fingerprint (an older checkpoint): only the training "
                              f"settings were compared" + (f"; changed: {changed}" if changed else ""), stacklevel=2)
            elif run["fingerprint"] != fingerprint:
                changed = _differences(run.get("description") or {}, description)
                raise ValueError(
                    f"{resumed_ckpt} belongs to another run: its configuration differs in {', '.join(changed[:8])}"
                    f"{', ...' if len(changed) > 8 else ''}. Resume with the same configuration, or start afresh in "
                    f"another folder (or with overwrite=True / --overwrite)")
            saved_steps = state.get("config", {}).get("steps")
            if saved_steps is not None and saved_steps != cfg.steps:
                warnings.warn(f"resuming {resumed_ckpt} with steps={cfg.steps} (was {saved_steps}): the learning-rate "
                              f"schedule changes, the run will not be identical to an uninterrupted one", stacklevel=2)
        if rank == 0:
            for path in skipped:  # kept for inspection, out of the way of latest_checkpoint()
                os.replace(path, path.with_name(path.name + ".unreadable"))
    if state is not None:
        rec.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng = state["rng"]
        if isinstance(rng, list):  # one state per rank (written by a data-parallel run)
            if len(rng) != world:
                raise ValueError(f"{resumed_ckpt} was written by {len(rng)} ranks, this run has {world}")
            rng = rng[rank]
        _set_rng_state(gen, rng)
        start = resumed_from = int(state["step"])
        losses = [float(v) for v in state["losses"]]
        val_hist = [dict(v) for v in state["val"]]
        last_ckpt = resumed_ckpt
        # the older checkpoints of the same run may be pruned; another run's never
        mine = [(s_, p) for s_, p in found if s_ <= start and p not in skipped
                and (p == resumed_ckpt or (_read_run(p) or (None,))[0] == fingerprint)]
        del state
    else:
        torch.manual_seed(cfg.seed)

    def save(step: int) -> Path:
        rng: Any = _rng_state(gen)
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rng)
            rng = gathered
        path = out_dir / f"checkpoint_{step:08d}.pt"
        if rank != 0:
            return path
        ckpt = {
            "format": CHECKPOINT_FORMAT, "step": step, "model": rec.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": rng, "losses": list(losses),
            "val": [dict(v) for v in val_hist], "config": cfg.to_dict(),
            "run": {"fingerprint": fingerprint, "description": description},
        }
        with atomic_path(path) as tmp:  # durable when it returns: fsync of the file and the folder
            torch.save(ckpt, tmp)
        # Only now, with the new checkpoint on disk, may older ones go; and only this run's.
        mine[:] = [(s_, p) for s_, p in mine if p != path] + [(step, path)]
        mine.sort()
        for _, old in mine[:-cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)
        del mine[:-cfg.keep_checkpoints]
        return path

    rec.train()
    with tqdm(total=cfg.steps, initial=start, desc="train", disable=not cfg.progress or rank != 0,
              dynamic_ncols=True) as bar:
        for step in range(start + 1, cfg.steps + 1):
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(cfg.batch_size):
                i = int(torch.randint(len(dataset), (1,), generator=gen))
                x = _as_batch(dataset[i]).to(device=device, dtype=torch.float32)
                with torch.no_grad():
                    y = physics.A(x)
                    if cfg.noise_std > 0:
                        y = y + cfg.noise_std * torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
                loss = rec.training_loss(y, physics, x, generator=gen, **loss_kwargs)
                (loss / cfg.batch_size).backward()
                total += float(loss.detach())
            loss_value = total / cfg.batch_size
            if world > 1:
                _average_over_ranks(params)
                mean = torch.tensor([loss_value], dtype=torch.float64)
                dist.all_reduce(mean)
                loss_value = float(mean) / world
            if not math.isfinite(loss_value):
                where = f"; the last checkpoint is {last_ckpt}" if last_ckpt is not None else ""
                raise FloatingPointError(f"training diverged: non-finite loss {loss_value} at step {step} (learning "
                                         f"rate {opt.param_groups[0]['lr']:.3g} too large?){where}")
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss_value)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3e}", lr=f"{opt.param_groups[0]['lr']:.2e}")

            if cfg.val_every and step % cfg.val_every == 0:
                metrics = evaluate(rec, physics, val_data, metric=val_metric)
                val_hist.append({"step": step, **metrics})
                bar.write(f"step {step}: val PSNR {metrics['psnr']:.2f} dB")
            if out_dir is not None and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                                        or step == cfg.steps):
                last_ckpt = save(step)
            if callback is not None:
                callback(step, loss_value)

    return {"losses": losses, "val": val_hist, "step": len(losses),
            "checkpoint": None if last_ckpt is None else str(last_ckpt), "resumed_from": resumed_from,
            "resumed_checkpoint": None if resumed_ckpt is None else str(resumed_ckpt),
            "skipped_checkpoints": [str(p) for p in skipped],
            "archived_to": None if archived_to is None else str(archived_to),
            "removed_temporaries": [str(p) for p in removed_tmp], "fingerprint": fingerprint,
            "time_s": time.perf_counter() - t0}
