r"""Domain partitioning: reconstruct a volume patch by patch with the data step intact.

``x = S^T x_patch + Sbar^T x_ctx``: a patch sees the measurements with the context removed,
``y_p = y - A Sbar^T x_ctx``, and the operator ``A S^T``. Computed as
``y_p = (y - A x_ctx) + A_p x_ctx[p]``: one full projection per sweep (the residual) and one
patch projection per patch, whose cost grows with the patch, not the volume.

With a :class:`~unrolled3d.normal.DiagCirculantWrapper` (or ``fourier_filter``/``spatial_mask``)
the patch's data step uses the restricted ``H`` instead: the patch problem becomes the normal
equation ``H_p x_p = S A^T y_p``, with ``S A^T y_p = S A^T (y - A x_ctx) + H_p x_ctx[p]`` (one full
backprojection per sweep, none per patch).

Inference sweeps a grid of overlapping patches (stride half the patch by default) and blends
them with a smooth window (``sum w x / sum w``) through the fused scatter kernel; each sweep uses
the previous one as context (the first uses ``x_init`` or ``A_dagger(y)``). Training draws random
patch positions with the ground truth as context (:meth:`PartitionedReconstructor.training_loss`).
Patches can be spread over ``torch.distributed`` ranks (each rank blends its share; the sums are
all-reduced).
"""
from __future__ import annotations

import inspect
import math
from typing import Sequence

import torch
import torch.distributed as dist
from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics
from tqdm.auto import tqdm

from ._distributed import rank_and_world
from ._validation import boolean, check_nonempty, choice, int_triple, integer
from .normal import DiagCirculantWrapper
from .ops import masked_scatter_add, masked_scatter_add_
from .physics.patch import crop, patch_start, restrict

__all__ = ["PartitionedReconstructor", "patch_grid", "blend_window", "patch_measurement"]


def patch_grid(img_shape: Sequence[int], patch_shape: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int, int]]:
    """Start offsets of a grid of patches covering the volume (the last patch on each axis is
    flush with the volume's end, so strides that do not divide the volume still cover it)."""
    axes = []
    for n, p, s in zip(img_shape, patch_shape, stride):
        starts = list(range(0, n - p + 1, s))
        if starts[-1] + p < n:
            starts.append(n - p)
        axes.append(starts)
    return [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]


def blend_window(patch_shape: Sequence[int], stride: Sequence[int], dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Separable blending window ``(pd, ph, pw)``: flat, with a sin^2 taper over the overlap
    ``p - s`` at both ends of each axis; positive everywhere so that ``sum w`` never vanishes."""
    ws = []
    for p, s in zip(patch_shape, stride):
        w = torch.ones(p, dtype=torch.float64)
        ov = p - s
        if ov > 0:
            i = torch.arange(ov, dtype=torch.float64)
            ramp = torch.sin(0.5 * math.pi * (i + 0.5) / ov) ** 2
            w[:ov] = torch.minimum(w[:ov], ramp)
            w[p - ov:] = torch.minimum(w[p - ov:], ramp.flip(0))
        ws.append(w)
    return (ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]).to(dtype=dtype, device=device)


def _unwrap(physics: LinearPhysics) -> LinearPhysics:
    """The exact operator behind a ``DiagCirculantWrapper`` (any other physics: itself)."""
    return physics.physics if isinstance(physics, DiagCirculantWrapper) else physics


def patch_measurement(residual: torch.Tensor, patch_physics: LinearPhysics, x_ctx_patch: torch.Tensor) -> torch.Tensor:
    """``y_p = y - A Sbar^T x_ctx = (y - A x_ctx) + A_p x_ctx[p]`` from the sweep's residual."""
    return residual + patch_physics.A(x_ctx_patch)


class PartitionedReconstructor(Reconstructor):
    r"""Reconstruct a volume patch by patch with any patch-level ``deepinv`` reconstructor.

    Parameters
    ----------
    base_reconstructor : deepinv.models.Reconstructor
        solves a patch problem
        ``base(y_p, physics_p)`` (e.g. :class:`unrolled3d.models.UnrolledPGD`); if its ``forward``
        accepts ``x_init``, it receives the context patch as a start point.
    img_size : tuple
        volume shape ``(D, H, W)`` (or ``(C, D, H, W)``).
    patch_size : tuple
        patch shape, each at most the volume's.
    stride : tuple
        grid step, ``1 <= stride <= patch`` (default: half the patch).
    n_sweeps : int
        sweeps at inference (each uses the previous as context; default 2).
    sweep_start : str
        where each patch's base starts in later sweeps: ``"initial"``
        (default) the first sweep's context (``x_init`` or ``A_dagger(y)``), as in training
        (``training_loss`` starts from ``A_dagger(y)``), so that later sweeps only refresh the
        context; ``"current"`` the latest estimate (for iterative bases that refine it).
    progress : bool
        show a progress bar over patches.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.models import UNet3D, UnrolledPGD
    >>> from unrolled3d.partition import PartitionedReconstructor
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 6), normalize=True)
    >>> rec = PartitionedReconstructor(UnrolledPGD(UNet3D(base=4, depth=1), n_iter=1), (8, 8, 8), (4, 4, 4))
    >>> len(rec.patches()), rec.stride                  # half-overlapping grid
    (27, (2, 2, 2))
    >>> with torch.no_grad():
    ...     x_hat = rec(physics.A(torch.rand(1, 1, 8, 8, 8)), physics)
    >>> x_hat.shape
    torch.Size([1, 1, 8, 8, 8])
    """

    def __init__(self, base_reconstructor: torch.nn.Module, img_size: Sequence[int], patch_size: Sequence[int],
                 stride: Sequence[int] | None = None, n_sweeps: int = 2, progress: bool = False,
                 sweep_start: str = "initial") -> None:
        super().__init__()
        if not isinstance(base_reconstructor, torch.nn.Module):
            raise TypeError(f"base_reconstructor must be a torch.nn.Module (a deepinv Reconstructor), "
                            f"got {type(base_reconstructor).__name__}")
        size = img_size
        if not isinstance(size, (str, bytes)) and hasattr(size, "__len__") and len(size) == 4:
            size = tuple(size)[1:]  # (C, D, H, W): the channels are the base's business
        self.img_shape = int_triple("img_size", size, allow_scalar=True)
        self.patch_shape = int_triple("patch_size", patch_size, allow_scalar=True)
        for n, p, axis in zip(self.img_shape, self.patch_shape, "DHW"):
            if p > n:
                raise ValueError(f"patch_size {self.patch_shape} is larger than the volume {self.img_shape} along {axis}")
        self._default_stride = stride is None
        if stride is None:
            stride = tuple(max(1, p // 2) for p in self.patch_shape)
        self.stride = int_triple("stride", stride, allow_scalar=True)
        for s, p in zip(self.stride, self.patch_shape):
            if s > p:
                raise ValueError(f"stride {self.stride} must not exceed patch_size {self.patch_shape} (gaps)")
        self.base = base_reconstructor
        self.n_sweeps = integer("n_sweeps", n_sweeps, 1)
        self.sweep_start = choice("sweep_start", sweep_start, ("initial", "current"))
        self.progress = boolean("progress", progress)
        self._base_takes_x_init = "x_init" in inspect.signature(base_reconstructor.forward).parameters

    # ----------------------------------------------------------------- helpers
    def with_patch_size(self, patch_size: Sequence[int] | int) -> "PartitionedReconstructor":
        """The same reconstructor (base shared, not copied) on patches of ``patch_size``: the
        default stride follows the new patch, an explicit stride is kept; sweeps, start rule and
        progress are kept."""
        return PartitionedReconstructor(self.base, self.img_shape, patch_size,
                                        None if self._default_stride else self.stride, n_sweeps=self.n_sweeps,
                                        progress=self.progress, sweep_start=self.sweep_start)

    def patches(self) -> list[tuple[int, int, int]]:
        """The inference grid of patch offsets."""
        return patch_grid(self.img_shape, self.patch_shape, self.stride)

    def _check(self, y: torch.Tensor, physics: LinearPhysics) -> None:
        if not isinstance(physics, LinearPhysics):
            raise TypeError(f"physics must be a deepinv LinearPhysics, got {type(physics).__name__}")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        check_nonempty(y, "y")
        size = getattr(physics, "img_size", None)
        if size is not None and tuple(size)[-3:] != self.img_shape:
            raise ValueError(f"physics acts on volumes of {tuple(size)[-3:]}, the reconstructor on {self.img_shape}")

    def _normal_operator(self, physics, fourier_filter, spatial_mask) -> DiagCirculantWrapper | None:
        """The ``H`` of this call: ``physics`` itself if it is a :class:`DiagCirculantWrapper`, with
        the call's ``fourier_filter``/``spatial_mask`` if given (the paper's API; the caller's
        wrapper is not changed); ``None`` (exact patch operators) for any other physics."""
        if not isinstance(physics, DiagCirculantWrapper):
            if fourier_filter is not None or spatial_mask is not None:
                raise TypeError("fourier_filter and spatial_mask are the parameters of a normal-operator "
                                "approximation: wrap the physics in unrolled3d.normal.DiagCirculantWrapper and pass "
                                f"that (got {type(physics).__name__})")
            return None
        if fourier_filter is None and spatial_mask is None:
            return physics
        return physics.with_parameters(spatial_mask=spatial_mask, fourier_filter=fourier_filter)

    def _solve_patch(self, y_p, physics_p, x_start):
        if self._base_takes_x_init:
            return self.base(y_p, physics_p, x_init=x_start)
        return self.base(y_p, physics_p)

    def reconstruct_patch(self, y: torch.Tensor, physics: LinearPhysics, x_ctx: torch.Tensor,
                          offset: Sequence[int], residual: torch.Tensor | None = None,
                          normal: DiagCirculantWrapper | None = None,
                          x_start: torch.Tensor | None = None) -> torch.Tensor:
        """Solve one patch at ``offset`` given the context ``x_ctx`` (full volume).

        ``residual`` is ``y - A x_ctx`` (exact mode) or ``A^T (y - A x_ctx)`` (``H`` mode); it is
        computed when not given (callers sweeping many patches compute it once). ``x_start`` is
        the base's start point on the patch (default: the context's patch, the current estimate).
        """
        shape = self.patch_shape
        ctx_p = crop(x_ctx, offset, shape)
        start = ctx_p if x_start is None else x_start
        if normal is None:
            if residual is None:
                residual = y - physics.A(x_ctx)
            physics_p = restrict(_unwrap(physics), self.img_shape, offset, shape)
            return self._solve_patch(patch_measurement(residual, physics_p, ctx_p), physics_p, start)
        if residual is None:
            residual = normal.A_adjoint(y - normal.A(x_ctx))
        return self._solve_normal_patch(crop(residual, offset, shape), normal, offset, ctx_p, start)

    def _solve_normal_patch(self, residual_p: torch.Tensor, normal: DiagCirculantWrapper, offset, ctx_p, start):
        """H mode: solve ``H_p x_p = S A^T y_p`` with ``S A^T y_p = S A^T (y - A x_ctx) + H_p x_ctx[p]``."""
        h_p = normal.restrict(offset, self.patch_shape).with_start(start)
        b = residual_p + h_p.A_adjoint_A(ctx_p)
        return self._solve_patch(b, h_p, start)

    # ----------------------------------------------------------------- inference
    def forward(self, y: torch.Tensor, physics: LinearPhysics, fourier_filter: torch.Tensor | None = None,
                spatial_mask: torch.Tensor | None = None, x_init: torch.Tensor | None = None,
                n_sweeps: int | None = None, **kwargs) -> torch.Tensor:
        r"""Partitioned reconstruction ``[B, C, D, H, W]`` of the measurements ``y``.

        Parameters
        ----------
        y : torch.Tensor
            measurements of ``physics``.
        physics : deepinv.physics.LinearPhysics
            the full operator (or a ``DiagCirculantWrapper``).
        fourier_filter : torch.Tensor
            ``lam`` of a fitted diagonal-circulant ``H`` (optional).
        spatial_mask : torch.Tensor
            ``m`` of a fitted ``H`` (optional).
        x_init : torch.Tensor
            context of the first sweep (default ``physics.A_dagger(y)``).
        n_sweeps : int
            override the number of sweeps.
        """
        self._check(y, physics)
        normal = self._normal_operator(physics, fourier_filter, spatial_mask)
        if n_sweeps is not None:
            n_sweeps = integer("n_sweeps", n_sweeps, 1)
        x = physics.A_dagger(y) if x_init is None else x_init
        if tuple(x.shape[-3:]) != self.img_shape:
            raise ValueError(f"x_init has spatial shape {tuple(x.shape[-3:])}, expected {self.img_shape}")
        rank, world = rank_and_world()
        window = blend_window(self.patch_shape, self.stride, dtype=x.dtype, device=x.device)
        offsets = self.patches()[rank::world]
        first = x  # start point of every patch when sweep_start == "initial" (as in training)
        for sweep in range(n_sweeps or self.n_sweeps):
            residual = y - physics.A(x)
            if normal is not None:
                residual = normal.A_adjoint(residual)
            out = torch.zeros_like(x)
            weight = torch.zeros(self.img_shape, dtype=x.dtype, device=x.device)
            bar = tqdm(offsets, desc=f"sweep {sweep + 1}", disable=not self.progress or rank != 0, leave=False)
            for offset in bar:
                start = None if self.sweep_start == "current" else crop(first, offset, self.patch_shape)
                x_p = self.reconstruct_patch(y, physics, x, offset, residual, normal, x_start=start)
                if torch.is_grad_enabled() and x_p.requires_grad:
                    out, weight = masked_scatter_add(out, x_p, offset, self.patch_shape, window=window, weight=weight)
                else:
                    masked_scatter_add_(out, x_p.detach(), offset, self.patch_shape, window=window, weight=weight)
            if world > 1:
                dist.all_reduce(out)
                dist.all_reduce(weight)
            x = out / weight
        return x

    # ----------------------------------------------------------------- training
    def random_offset(self, generator: torch.Generator | None = None) -> tuple[int, int, int]:
        """A uniformly random patch position inside the volume."""
        return tuple(int(torch.randint(0, n - p + 1, (1,), generator=generator))
                     for n, p in zip(self.img_shape, self.patch_shape))

    def training_loss(self, y: torch.Tensor, physics: LinearPhysics, x_true: torch.Tensor,
                      generator: torch.Generator | None = None, offset: Sequence[int] | None = None,
                      fourier_filter: torch.Tensor | None = None, spatial_mask: torch.Tensor | None = None,
                      x_start: torch.Tensor | None = None) -> torch.Tensor:
        r"""``L_PART``: MSE between the patch reconstruction with ground-truth context and ``S x*``.

        The patch position is drawn at random (``generator``) unless ``offset`` is given. The
        context (outside the patch) is the ground truth, but the base starts from
        ``x_start[p]`` (default ``physics.A_dagger(y)``, FDK), as the first inference sweep does:
        starting from the true patch would hand the network the answer.
        """
        self._check(y, physics)
        if x_true.shape[-3:] != self.img_shape:
            raise ValueError(f"x_true has spatial shape {tuple(x_true.shape[-3:])}, expected {self.img_shape}")
        offset = tuple(offset) if offset is not None else self.random_offset(generator)
        shape = self.patch_shape
        normal = self._normal_operator(physics, fourier_filter, spatial_mask)
        inner = _unwrap(physics)
        # Only the patch is reconstructed, so only patch-sized images are formed: the start point
        # and (H mode) the backprojected residual are computed on the patch alone where the
        # physics allows it, which keeps the step's memory flat in the volume size.
        with torch.no_grad():
            residual = y - physics.A(x_true)
            start = crop(x_start, offset, shape) if x_start is not None else patch_start(inner, y, offset, shape)
            if normal is not None:  # S A^T r = (A S^T)^T r
                residual_p = restrict(inner, self.img_shape, offset, shape).A_adjoint(residual)
        if normal is None:
            x_p = self.reconstruct_patch(y, physics, x_true, offset, residual, None, x_start=start)
        else:
            x_p = self._solve_normal_patch(residual_p, normal, offset, crop(x_true, offset, shape), start)
        return torch.nn.functional.mse_loss(x_p, crop(x_true, offset, shape))
