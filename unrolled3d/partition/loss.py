"""``L_PART`` for ``deepinv.Trainer``: one random patch per volume, memory flat in the volume size.

``deepinv.Trainer`` calls ``x_net = model(y, physics)`` and then each loss with ``x``, ``x_net``,
``y``, ``physics`` and ``model``. ``L_PART`` needs the ground truth as the patch's context, which
only the loss receives, so the loss does the work (:meth:`PartitionedReconstructor.training_loss`)
and the model's training-mode forward must not reconstruct the volume (a full sweep under
autograd is what made the memory grow). :meth:`PartitionedLoss.adapt_model` (deepinv's hook,
called by the Trainer) wraps the reconstructor in :class:`PatchTrainingModel`, which in training
mode returns a placeholder and in eval mode the full partitioned reconstruction.
"""
from __future__ import annotations

import torch
from deepinv.loss import Loss
from deepinv.models import Reconstructor

from .base import _unwrapped
from .reconstructor import PartitionedReconstructor

__all__ = ["PartitionedLoss", "PatchTrainingModel"]


def _reconstructor(model: torch.nn.Module) -> PartitionedReconstructor:
    inner = _unwrapped(model)
    if isinstance(inner, PatchTrainingModel):
        inner = _unwrapped(inner.model)
    if not isinstance(inner, PartitionedReconstructor):
        raise TypeError(f"PartitionedLoss trains a PartitionedReconstructor, got {type(inner).__name__}")
    return inner


class PatchTrainingModel(Reconstructor):
    """A :class:`PartitionedReconstructor` for ``deepinv.Trainer`` with :class:`PartitionedLoss`.

    Training mode (with gradients): no reconstruction; the output is an all-NaN placeholder of
    the volume's shape (a broadcast scalar: no memory), because the loss reconstructs its own
    patch with the ground truth as context. NaN, so that train metrics computed on it cannot pass
    for the model's: give the Trainer ``compute_train_metrics=False``. Eval mode, or without
    gradients: the full partitioned reconstruction (what the Trainer's eval metrics see).

    Parameters
    ----------
    model : PartitionedReconstructor
        The reconstructor, or one wrapped by ``torch.compile`` or data parallelism (shared, not
        copied: its ``state_dict`` is this module's under ``model.``).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.models import UNet3D, UnrolledPGD
    >>> from unrolled3d.partition import PartitionedReconstructor, PatchTrainingModel
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 6))
    >>> model = PatchTrainingModel(PartitionedReconstructor(UnrolledPGD(UNet3D(base=4, depth=1), n_iter=1),
    ...                                                     (8, 8, 8), (4, 4, 4)))
    >>> y = physics.A(torch.rand(1, 1, 8, 8, 8))
    >>> bool(model.train()(y, physics).isnan().all()), bool(model.eval()(y, physics).isfinite().all())
    (True, True)
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        if not isinstance(_unwrapped(model), PartitionedReconstructor):
            raise TypeError(f"model must be a PartitionedReconstructor, got {type(model).__name__}")
        self.model = model

    def forward(self, y: torch.Tensor, physics, **kwargs) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            rec = _reconstructor(self.model)
            size = getattr(physics, "img_size", None)
            channels = int(size[0]) if size is not None and len(size) == 4 else 1
            return y.new_full((), float("nan")).expand(y.shape[0], channels, *rec.img_shape)
        return self.model(y, physics, **kwargs)


class PartitionedLoss(Loss):
    r"""``L_PART`` as a deepinv ``Loss``: the patch MSE of :meth:`PartitionedReconstructor.training_loss`.

    Each call draws one patch position (``generator``) and returns the MSE of each batch item on
    it, shape ``(B,)``; the context outside the patch is the ground truth ``x``, the start point
    the physics' ``A_dagger`` on the patch. ``x_net`` is not used (see :class:`PatchTrainingModel`,
    which :meth:`adapt_model` puts around the reconstructor).

    Parameters
    ----------
    generator : torch.Generator, optional
        Source of the patch positions (default: the global generator).
    **loss_kwargs
        Passed to ``training_loss`` (e.g. ``fourier_filter``, ``spatial_mask``).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.models import UNet3D, UnrolledPGD
    >>> from unrolled3d.partition import PartitionedLoss, PartitionedReconstructor
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 6))
    >>> rec = PartitionedReconstructor(UnrolledPGD(UNet3D(base=4, depth=1), n_iter=1), (8, 8, 8), (4, 4, 4))
    >>> loss = PartitionedLoss(torch.Generator().manual_seed(0))
    >>> model = loss.adapt_model(rec)                   # what deepinv.Trainer does
    >>> x = torch.rand(2, 1, 8, 8, 8)
    >>> loss(x_net=model(physics.A(x), physics), x=x, y=physics.A(x), physics=physics, model=model).shape
    torch.Size([2])
    """

    def __init__(self, generator: torch.Generator | None = None, **loss_kwargs) -> None:
        super().__init__()
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self.loss_kwargs = loss_kwargs

    def forward(self, x_net: torch.Tensor, x: torch.Tensor, y: torch.Tensor, physics, model: torch.nn.Module,
                **kwargs) -> torch.Tensor:
        rec = _reconstructor(model)
        return rec.training_loss(y, physics, x, generator=self.generator, reduction="none", **self.loss_kwargs)

    def adapt_model(self, model: torch.nn.Module, **kwargs) -> torch.nn.Module:
        """``model`` inside a :class:`PatchTrainingModel` (unchanged if it is one already)."""
        if isinstance(_unwrapped(model), PatchTrainingModel):
            return model
        _reconstructor(model)  # refuse anything else now, not at the first step
        return PatchTrainingModel(model)
