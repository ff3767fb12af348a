"""The post-processing baseline: a network applied once to the filtered backprojection.

The paper compares its unrolled networks with a DRUNet-3D trained to clean the FDK
reconstruction. :class:`PostProcessing` is that baseline on any denoising network, built so that
:func:`unrolled3d.training.train` trains it exactly as it trains the unrolled models (same data and
noise draws, optimiser, schedule, checkpoints and exact resumption): only the loss differs, the
MSE of the whole reconstructed volume to the truth.
"""
from __future__ import annotations

from typing import Any

import torch
from deepinv.models import Reconstructor


class PostProcessing(Reconstructor):
    r"""``x_hat = net(A^dagger y)``: one network pass on the pseudo-inverse (FDK for cone-beam CT).

    A deepinv ``Reconstructor`` (``rec(y, physics)``) and a
    :class:`~unrolled3d.protocols.PatchTrainable` (its ``training_loss`` is the whole-volume MSE),
    so ``unrolled3d.training.train`` takes it as it takes a ``PartitionedReconstructor``.

    Parameters
    ----------
    net : torch.nn.Module
        maps ``[B, C, D, H, W]`` to the same shape, e.g. ``UNet3D(residual=True)`` (learns the
        correction of the FDK's streaks and noise) or deepinv's ``DRUNet(dim=3)``.
    window : str or None
        FDK window passed as ``physics.A_dagger(y, window=window)`` (``"hann"`` as in the paper's
        baseline, ``"ram-lak"``); ``None`` calls ``physics.A_dagger(y)`` (any deepinv physics).

    Shapes: ``y`` as ``physics.A`` gives it; the output is ``[B, C, D, H, W]`` like ``x``.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.models import PostProcessing, UNet3D
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 6), normalize=True)
    >>> rec = PostProcessing(UNet3D(base=2, depth=1))
    >>> x = torch.rand(1, 1, 8, 8, 8)
    >>> rec(physics.A(x), physics).shape
    torch.Size([1, 1, 8, 8, 8])
    >>> rec.training_loss(physics.A(x), physics, x).ndim
    0
    """

    def __init__(self, net: torch.nn.Module, window: str | None = "hann") -> None:
        super().__init__()
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if window is not None and not isinstance(window, str):
            raise TypeError(f"window must be a string (an FDK window such as 'hann') or None, got {window!r}")
        self.net = net
        self.window = window

    def pseudo_inverse(self, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """The network's input: ``physics.A_dagger(y)`` with this model's window."""
        if self.window is None:
            return physics.A_dagger(y)
        return physics.A_dagger(y, window=self.window)

    def forward(self, y: torch.Tensor, physics: Any, **kwargs: Any) -> torch.Tensor:
        return self.net(self.pseudo_inverse(y, physics))

    def training_loss(self, y: torch.Tensor, physics: Any, x_true: torch.Tensor,
                      generator: torch.Generator | None = None, **kwargs: Any) -> torch.Tensor:
        """Mean squared error of ``self(y, physics)`` to ``x_true`` over the whole volume.

        ``generator`` is accepted for the training loop's sake and unused (no random patch).
        """
        x_hat = self(y, physics)
        if x_hat.shape != x_true.shape:
            raise ValueError(f"the network gives {tuple(x_hat.shape)} but x_true is {tuple(x_true.shape)}")
        return torch.nn.functional.mse_loss(x_hat, x_true)
