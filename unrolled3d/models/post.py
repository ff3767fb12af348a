"""The post-processing baseline: a network applied once to the filtered backprojection.

The paper compares its unrolled networks with a DRUNet-3D trained to clean the FDK
reconstruction. :class:`PostProcessing` is that baseline on any denoising network, built so that
:func:`unrolled3d.training.train` trains it exactly as it trains the unrolled models (same data and
noise draws, optimiser, schedule, checkpoints and exact resumption): only the loss differs, the
MSE of the whole reconstructed volume to the truth.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from deepinv.models import Reconstructor

from ..partition.grid import random_patch_offset


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
    patch : int or None
        Edge (voxels) of the cubic block :meth:`training_loss` trains on: the pseudo-inverse of the
        whole volume (it has no weights), then the network on one random ``patch^3`` block of it,
        scored against the same block of the truth, so a step's memory and time do not grow with
        the volume, as for the partitioned unrolled network. ``None`` (default): the whole volume.
        Inference always runs on the whole volume.

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

    def __init__(self, net: torch.nn.Module, window: str | None = "hann", patch: int | None = None) -> None:
        super().__init__()
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if window is not None and not isinstance(window, str):
            raise TypeError(f"window must be a string (an FDK window such as 'hann') or None, got {window!r}")
        if patch is not None and (isinstance(patch, bool) or not isinstance(patch, int)):
            raise TypeError(f"patch must be an int (the training block's edge in voxels) or None, got {patch!r}")
        if patch is not None and patch < 1:
            raise ValueError(f"patch must be at least 1 voxel, got {patch}")
        self.net = net
        self.window = window
        self.patch = patch

    def pseudo_inverse(self, y: torch.Tensor, physics: Any) -> torch.Tensor:
        """The network's input: ``physics.A_dagger(y)`` with this model's window."""
        if self.window is None:
            return physics.A_dagger(y)
        return physics.A_dagger(y, window=self.window)

    def forward(self, y: torch.Tensor, physics: Any, **kwargs: Any) -> torch.Tensor:
        return self.net(self.pseudo_inverse(y, physics))

    def training_loss(self, y: torch.Tensor, physics: Any, x_true: torch.Tensor,
                      generator: torch.Generator | None = None, **kwargs: Any) -> torch.Tensor:
        """Mean squared error of the reconstruction to ``x_true``: over the whole volume, or over one
        random ``patch^3`` block (its position drawn from ``generator``) when ``patch`` is set.
        """
        if self.patch is None:
            x_hat = self(y, physics)
            if x_hat.shape != x_true.shape:
                raise ValueError(f"the network gives {tuple(x_hat.shape)} but x_true is {tuple(x_true.shape)}")
            return torch.nn.functional.mse_loss(x_hat, x_true)
        start = self.pseudo_inverse(y, physics)
        if start.shape != x_true.shape:
            raise ValueError(f"the pseudo-inverse gives {tuple(start.shape)} but x_true is {tuple(x_true.shape)}")
        z, r, c = self.random_offset(x_true.shape[-3:], generator)
        p = self.patch
        block = (..., slice(z, z + p), slice(r, r + p), slice(c, c + p))
        return torch.nn.functional.mse_loss(self.net(start[block]), x_true[block])

    def random_offset(self, shape: Sequence[int], generator: torch.Generator | None = None) -> tuple[int, ...]:
        """A uniformly random corner of a ``patch^3`` block inside a volume of spatial ``shape``."""
        if self.patch is None or any(self.patch > n for n in shape):
            raise ValueError(f"patch {self.patch} does not fit a volume of shape {tuple(shape)}")
        return random_patch_offset(shape, (self.patch,) * len(shape), generator)
