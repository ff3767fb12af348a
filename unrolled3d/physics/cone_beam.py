"""``ConeBeamCT``: the cone-beam projector pair as a ``deepinv.physics.LinearPhysics``."""
from __future__ import annotations

from typing import Sequence

import torch
from deepinv.physics import LinearPhysics
from deepinv.physics.noise import NoiseModel, ZeroNoise

from ..ops.projector import cone_backproject, cone_project
from .fdk import fdk
from ..geometry import ConeBeamGeometry

__all__ = ["ConeBeamCT", "to_astra_layout", "from_astra_layout"]


class ConeBeamCT(LinearPhysics):
    r"""Cone-beam X-ray transform ``y = N(A x)`` with an exactly matched adjoint.

    ``A`` is the C++/CUDA Joseph projector (:func:`unrolled3d.ops.cone_project`), ``A^T`` its
    exact transpose, ``A_dagger`` FDK (or deepinv's least-squares solver with ``fdk=False``).

    :param ConeBeamGeometry geometry: acquisition and volume geometry.
    :param deepinv.physics.NoiseModel noise_model: noise on the measurements (default none).
    :param bool normalize: if ``True``, divide ``A`` by its spectral norm ``||A||`` (estimated
        once by power iteration and stored in the ``operator_norm`` buffer) so that
        ``||A^T A|| = 1``; ``A_dagger`` compensates.
    :param str fdk_window: ramp filter window of ``A_dagger`` (see :func:`unrolled3d.physics.fdk`).
    :param torch.device, str device: device of the buffers.

    Shapes: ``x`` is ``[B, C, D, H, W]``, ``y`` is ``[B, C, n_views, rows, cols]``.
    """

    def __init__(
        self,
        geometry: ConeBeamGeometry,
        noise_model: NoiseModel | None = None,
        normalize: bool = False,
        fdk_window: str = "ram-lak",
        device: torch.device | str = "cpu",
        **kwargs,
    ) -> None:
        if not isinstance(geometry, ConeBeamGeometry):
            raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}")
        super().__init__(
            img_size=(1, *geometry.vol_shape),
            noise_model=noise_model if noise_model is not None else ZeroNoise(),
            device=device,
            **kwargs,
        )
        self.geometry = geometry
        self.fdk_window = fdk_window
        self.normalize = bool(normalize)
        self.register_buffer("operator_norm", torch.tensor(1.0, dtype=torch.float64, device=device))
        if self.normalize:
            generator = torch.Generator(device="cpu").manual_seed(0)
            x0 = torch.randn((1, *self.img_size), generator=generator, dtype=torch.float32).to(device)
            self.normalize = False  # estimate the norm of the raw operator
            sqnorm = self.compute_sqnorm(x0, max_iter=100, tol=1e-4, verbose=False)
            self.normalize = True
            self.operator_norm.fill_(float(sqnorm) ** 0.5)

    @property
    def img_shape(self) -> tuple[int, int, int]:
        """Spatial volume shape ``(D, H, W)``."""
        return self.geometry.vol_shape

    def _scale(self, t: torch.Tensor, power: int) -> torch.Tensor:
        if not self.normalize:
            return t
        return t * float(self.operator_norm) ** power

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Projection ``[B, C, D, H, W] -> [B, C, n_views, rows, cols]``."""
        return self._scale(cone_project(x, self.geometry), -1)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Exact adjoint (backprojection) ``[B, C, n_views, rows, cols] -> [B, C, D, H, W]``."""
        return self._scale(cone_backproject(y, self.geometry), -1)

    def A_dagger(self, y: torch.Tensor, fdk: bool = True, **kwargs) -> torch.Tensor:
        """FDK reconstruction (default) or, with ``fdk=False``, deepinv's least-squares solve."""
        if not fdk:
            return super().A_dagger(y, **kwargs)
        return self._scale(_fdk(y, self.geometry, window=kwargs.get("window", self.fdk_window)), 1)

    def restrict(self, offset: Sequence[int], shape: Sequence[int]) -> "ConeBeamCT":
        """The patch operator ``A S^T``: the same scan seen by the sub-volume at ``offset``.

        Shares the normalisation (``operator_norm``) of this operator, has no noise model.
        """
        patch = ConeBeamCT(self.geometry.restrict(offset, shape), fdk_window=self.fdk_window,
                           device=self.operator_norm.device)
        patch.normalize = self.normalize
        patch.operator_norm.copy_(self.operator_norm)
        return patch


_fdk = fdk  # the method argument `fdk` shadows the function inside A_dagger


def to_astra_layout(y: torch.Tensor) -> torch.Tensor:
    """``[B, C, n_views, rows, cols]`` -> deepinv/ASTRA's ``[B, C, rows, n_views, cols]``."""
    if y.ndim != 5:
        raise ValueError(f"y must be 5-D [B, C, n_views, rows, cols], got shape {tuple(y.shape)}")
    return y.transpose(2, 3)


def from_astra_layout(y: torch.Tensor) -> torch.Tensor:
    """deepinv/ASTRA's ``[B, C, rows, n_views, cols]`` -> ``[B, C, n_views, rows, cols]``."""
    if y.ndim != 5:
        raise ValueError(f"y must be 5-D [B, C, rows, n_views, cols], got shape {tuple(y.shape)}")
    return y.transpose(2, 3)
