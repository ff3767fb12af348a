r"""One training step and one validation of a partitioned reconstructor with ``L_PART``.

:class:`Trainer` holds what a run changes: the model, Adam and its learning-rate schedule, the
data generator, the losses and validations so far. :meth:`Trainer.step` draws ``batch_size``
volumes, simulates ``y = A x + noise`` and takes one optimiser step on the patch loss with
ground-truth context (:meth:`~unrolled3d.partition.PartitionedReconstructor.training_loss`, a
random patch per volume); :meth:`Trainer.evaluate` reconstructs the validation volumes whole.
A dataset item ``(x, params)`` (deepinv's convention) sets ``physics.update(**params)`` before
``x`` is measured: an acquisition drawn per item, e.g. the sampling mask of an MRI scan.
Every random draw of a step (volume index, noise, patch position) comes from one CPU
``torch.Generator`` seeded ``seed + rank``; :meth:`Trainer.state_dict` holds everything needed
to continue bit for bit.

Data parallel: when ``torch.distributed`` is initialised (e.g. under ``torchrun``), every rank
draws its own volumes, noise and patches (``seed + rank``), starts from rank 0's weights
(broadcast here) and averages the gradients over ranks after each step (the effective batch is
``world * batch_size``); the model must not be wrapped in ``DistributedDataParallel`` (it would
average the gradients a second time). A checkpoint holds every rank's generator state.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence, cast

import torch
import torch.distributed as dist

from .._distributed import rank_and_world
from ..metrics import psnr
from ..protocols import PatchTrainable

__all__ = ["Trainer", "evaluate"]

ValData = Sequence[tuple]  # (x, y) or (x, y, physics parameters), see evaluate


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


def _with_parameters(item: Any, physics: Any) -> Any:
    """The volume of a dataset item; an item ``(x, params)`` (deepinv's convention for acquisitions
    that change from item to item, e.g. an MRI mask) first sets ``physics.update(**params)``."""
    if not isinstance(item, (tuple, list)):
        return item
    if len(item) != 2 or not isinstance(item[1], dict):
        raise TypeError("dataset items must be volumes or (volume, dict of physics parameters) pairs, got a "
                        f"{type(item).__name__} of {len(item)}")
    if item[1]:
        physics.update(**item[1])
    return item[0]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer; the CPU for neither)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(rec: torch.nn.Module, physics: Any, val_data: ValData,
             metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None) -> dict[str, float]:
    """Full (partitioned) reconstructions of ``val_data``: mean PSNR (dB) and MSE.

    ``val_data`` is a list of ``(x, y)``: ``x`` ``[1, C, D, H, W]`` (or ``(C, D, H, W)``) and its
    measurements ``y`` (``None``: ``physics.A(x)``), or ``(x, y, params)`` where ``y`` was
    measured with ``physics.update(**params)`` (e.g. a validation mask), set before it is used. ``metric(x_hat, x)`` replaces the PSNR over
    all channels (:func:`unrolled3d.metrics.psnr`), e.g. :func:`unrolled3d.metrics.magnitude_psnr`
    for complex MRI images; the MSE is over all channels.
    """
    if not val_data:
        raise ValueError("val_data is empty")
    was_training = rec.training
    rec.eval()
    device = model_device(rec)
    psnrs, mses = [], []
    try:
        for x, y, *params in val_data:
            if params:  # (x, y, params): y was measured with these physics parameters
                _with_parameters((x, *params), physics)
            x = _as_batch(x).to(device)
            y = physics.A(x) if y is None else y.to(device)
            x_hat = rec(y, physics)
            psnrs.append(psnr(x_hat, x) if metric is None else float(metric(x_hat, x)))
            mses.append(float((x_hat.double() - x.double()).square().mean()))
    finally:
        rec.train(was_training)
    return {"psnr": sum(psnrs) / len(psnrs), "mse": sum(mses) / len(mses)}


class Trainer:
    """The state of a training run and its two actions, :meth:`step` and :meth:`evaluate`.

    Parameters
    ----------
    rec : PatchTrainable
        the model (a :class:`~unrolled3d.partition.PartitionedReconstructor`), trained in place
        on the device of its parameters.
    physics : deepinv.physics.LinearPhysics
        the full-volume operator.
    dataset
        indexable volumes ``(C, D, H, W)``.
    config : TrainConfig
        the hyper-parameters.
    loss_kwargs : dict, optional
        extra arguments of ``training_loss`` (e.g. ``fourier_filter``).
    val_data, val_metric
        what :meth:`evaluate` reconstructs and how it scores (see :func:`evaluate`).

    Examples
    --------
    >>> from unrolled3d.data import PhantomDataset
    >>> from unrolled3d.models import UNet3D, UnrolledPGD
    >>> from unrolled3d.partition import PartitionedReconstructor
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> from unrolled3d.training import TrainConfig, Trainer
    >>> rec = PartitionedReconstructor(UnrolledPGD(UNet3D(base=4, depth=1), n_iter=2), (8, 8, 8), (4, 4, 4))
    >>> trainer = Trainer(rec, ConeBeamCT(standard_cone_beam(8, 6), normalize=True), PhantomDataset(4, 8),
    ...                   TrainConfig(steps=2, progress=False))
    >>> trainer.start()
    >>> loss = trainer.step()
    >>> trainer.step_count, loss > 0
    (1, True)
    """

    def __init__(self, rec: torch.nn.Module, physics: Any, dataset: Any, config: Any,
                 loss_kwargs: dict[str, Any] | None = None, val_data: ValData | None = None,
                 val_metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None) -> None:
        self.rec, self.physics, self.dataset, self.config = rec, physics, dataset, config
        self.loss_kwargs, self.val_data, self.val_metric = dict(loss_kwargs or {}), val_data, val_metric
        self.device = model_device(rec)
        self.params = [p for p in rec.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, weight_decay=config.weight_decay)
        if config.lr_schedule == "cosine":
            self.scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.steps,
                                                                             eta_min=config.min_lr)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        self.rank, self.world = rank_and_world()
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed + self.rank)
        self.step_count, self.resumed_from = 0, cast("int | None", None)
        self.losses: list[float] = []
        self.val: list[dict[str, float]] = []
        if self.world > 1:
            for t in rec.state_dict().values():
                dist.broadcast(t, src=0)  # identical start on every rank

    def start(self, state: dict[str, Any] | None = None, where: str = "the checkpoint") -> None:
        """Begin afresh (the global torch RNG seeded with ``seed``) or continue from a
        :meth:`state_dict` (``where``: its file, for messages)."""
        if state is None:
            torch.manual_seed(self.config.seed)
        else:
            self.load_state_dict(state, where)
        self.rec.train()

    def step(self) -> float:
        """One optimiser step on ``batch_size`` volumes (averaged over ranks); returns the loss."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(cfg.batch_size):
            i = int(torch.randint(len(self.dataset), (1,), generator=self.generator))
            x = _as_batch(_with_parameters(self.dataset[i], self.physics)).to(device=self.device, dtype=torch.float32)
            with torch.no_grad():
                y = self.physics.A(x)
                noise = torch.zeros_like(y)
                if cfg.noise_std > 0:
                    noise = cfg.noise_std * torch.randn(y.shape, generator=self.generator, dtype=y.dtype).to(y.device)
                    y = y + noise
            # y - A x is the noise just drawn: the loss need not project the whole volume again
            # the model is a Module declaring PatchTrainable (train() checks it): the loss is its own
            loss = cast(PatchTrainable, self.rec).training_loss(y, self.physics, x, generator=self.generator,
                                                                residual=noise, **self.loss_kwargs)
            (loss / cfg.batch_size).backward()
            total += float(loss.detach())
        loss_value = total / cfg.batch_size
        if self.world > 1:
            loss_value = self._average_over_ranks(loss_value)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training diverged: non-finite loss {loss_value} at step {self.step_count + 1} "
                                     f"(learning rate {self.optimizer.param_groups[0]['lr']:.3g} too large?)")
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.losses.append(loss_value)
        self.step_count += 1
        return loss_value

    def _average_over_ranks(self, loss_value: float) -> float:
        """All-reduce the gradients (one flat buffer) and the loss, divided by the number of ranks."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(self.params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(p).clone()
            offset += g.numel()
        mean = torch.tensor([loss_value], dtype=torch.float64)
        dist.all_reduce(mean)
        return float(mean) / self.world

    def evaluate(self) -> dict[str, float]:
        """Validate on ``val_data`` (:func:`evaluate`); the result, with the step, is kept in :attr:`val`."""
        if self.val_data is None:
            raise ValueError("val_data is empty: this trainer was given no validation data")
        metrics = evaluate(self.rec, self.physics, self.val_data, metric=self.val_metric)
        self.val.append({"step": self.step_count, **metrics})
        return metrics

    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ state
    def _rng_state(self) -> dict[str, Any]:
        cuda = []
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = torch.cuda.get_rng_state_all()
        return {"data": self.generator.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit (collective under ``torch.distributed``: every
        rank's generator state is gathered)."""
        rng: Any = self._rng_state()
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, rng)
            rng = gathered
        return {"step": self.step_count, "model": self.rec.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng, "losses": list(self.losses),
                "val": [dict(v) for v in self.val], "config": self.config.to_dict()}

    def _replan_cosine(self, step: int) -> None:
        """Fit a resumed cosine schedule to this run's ``steps``.

        The scheduler's state carries its length (``T_max``); resumed with another ``steps`` it
        would keep the old one, and past it the cosine climbs back to the peak rate (a longer run
        would train its last part at full rate). Instead the schedule continues on the cosine over
        ``steps``: the rate at ``step`` is ``min_lr + (lr - min_lr) (1 + cos(pi step / steps)) / 2``,
        reaching ``min_lr`` at the new end (the run folder warns that the schedule changed).
        """
        sched = self.scheduler
        if not isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) or sched.T_max == self.config.steps:
            return
        sched.T_max = self.config.steps
        frac = min(step, self.config.steps) / self.config.steps
        rates = [sched.eta_min + (base - sched.eta_min) * (1 + math.cos(math.pi * frac)) / 2 for base in sched.base_lrs]
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate
        sched._last_lr = rates  # what get_last_lr() reports

    def load_state_dict(self, state: dict[str, Any], where: str = "the checkpoint") -> None:
        """Continue from :meth:`state_dict` (written by as many ranks as this run has)."""
        self.rec.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._replan_cosine(int(state["step"]))
        rng = state["rng"]
        if isinstance(rng, list):  # one state per rank (written by a data-parallel run)
            if len(rng) != self.world:
                raise ValueError(f"{where} was written by {len(rng)} ranks, this run has {self.world}")
            rng = rng[self.rank]
        self.generator.set_state(rng["data"])
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step_count = self.resumed_from = int(state["step"])
        self.losses = [float(v) for v in state["losses"]]
        self.val = [dict(v) for v in state["val"]]
