r"""``PartitionedReconstructor``: reconstruct a volume patch by patch with the data step intact.

``x = S^T x_patch + Sbar^T x_ctx``: a patch sees the measurements with the context removed,
``y_p = y - A Sbar^T x_ctx``, and the operator ``A S^T``. Computed as
``y_p = (y - A x_ctx) + A_p x_ctx[p]``: one full projection per sweep (the residual) and one
patch projection per patch, whose cost grows with the patch, not the volume.

With an approximation ``H`` of ``A^T A`` (H mode) the patch's data step uses the restricted ``H``
instead: the patch problem becomes the normal equation ``H_p x_p = S A^T y_p``, with
``S A^T y_p = S A^T (y - A x_ctx) + H_p x_ctx[p]`` (one full backprojection per sweep, none per
patch), handed to the base as ``H``'s patch operator in normal-equation form
(:class:`~unrolled3d.protocols.NormalEquationPhysics`, e.g.
:class:`~unrolled3d.normal.DiagCirculantPatch`: any deepinv solver runs on it). ``H`` reaches the
reconstructor explicitly, ``rec(y, physics, normal=H)``, or carried by the physics
(:class:`~unrolled3d.protocols.CarriesNormal`: the paper's
``rec(y, DiagCirculantWrapper(...), fourier_filter=..., spatial_mask=...)``); nothing here names a
wrapper class (:func:`~unrolled3d.partition.plan.resolve_normal`).

A reconstruction in which nothing asks for gradients (grad mode off, or no parameter of the base,
the physics or ``H`` and neither ``y`` nor ``x_init`` requiring grad) runs under
``torch.no_grad()``: it records no autograd graph, whatever the operators do inside.

Inference sweeps a grid of overlapping patches (stride half the patch by default) and blends
them with a smooth window (``sum w x / sum w``) through the fused scatter kernel; each sweep uses
the previous one as context (the first uses ``x_init`` or ``A_dagger(y)``). ``patch_batch_size``
patches are solved together as one batch of the base. Training draws random patch positions with
the ground truth as context (:meth:`PartitionedReconstructor.training_loss`,
:class:`~unrolled3d.partition.PartitionedLoss` for ``deepinv.Trainer``). Patches can be spread over
``torch.distributed`` ranks (each rank blends its share; the sums are all-reduced).

The base model is called as ``base(y_p, physics_p, x_init=x0_p)`` (the protocol
:class:`~unrolled3d.protocols.StartPointReconstructor`; deepinv's own models are adapted, see
:mod:`unrolled3d.partition.base`). Every patch operator, group and window is built once per
physics, device and dtype, outside any traced region (:mod:`unrolled3d.partition.plan`), so
``torch.compile`` of :meth:`PartitionedReconstructor.forward` traces tensor work only.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics
from tqdm.auto import tqdm

from .._validation import boolean, check_nonempty, choice, int_triple, int_tuple, integer
from ..protocols import NormalApproximation
from ..ops import masked_scatter_add, masked_scatter_add_
from ..physics.patch import crop, patch_measurements, patch_start
from .base import as_base_reconstructor
from .grid import patch_grid, random_patch_offset
from .plan import SweepPlan, build_plan, exact_physics, group_physics, patch_operator, resolve_normal

__all__ = ["PartitionedReconstructor", "patch_measurement"]

#: plans kept per reconstructor (one per physics, device and dtype seen most recently)
_MAX_PLANS = 4


def patch_measurement(residual: torch.Tensor, patch_physics: LinearPhysics, x_ctx_patch: torch.Tensor) -> torch.Tensor:
    """``y_p = y - A Sbar^T x_ctx = (y - A x_ctx) + A_p x_ctx[p]`` from the sweep's residual (its
    part the patch operator sees: :func:`unrolled3d.physics.patch_measurements`)."""
    return patch_measurements(patch_physics, residual) + patch_physics.A(x_ctx_patch)


@torch.compiler.disable
def _start_point(physics: LinearPhysics, y: torch.Tensor) -> torch.Tensor:
    """``physics.A_dagger(y)`` outside traced code (FDK and iterative solvers hold NumPy and
    data-dependent control flow; the reconstruction around them is compiled)."""
    return physics.A_dagger(y)


@torch.compiler.disable
def _patch_start(physics: LinearPhysics, y: torch.Tensor, offset, shape) -> torch.Tensor:
    return patch_start(physics, y, offset, shape)


def _set_start(physics, start: torch.Tensor | None) -> None:
    """Make a normal-equation patch operator's ``A_dagger`` return ``start`` (``None``: forget it)."""
    physics.x_start = start


def _stack(v: torch.Tensor, offsets: Sequence[tuple[int, int, int]], shape: Sequence[int]) -> torch.Tensor:
    """The patches of ``v`` at ``offsets``, stacked patch-major along the batch axis."""
    if len(offsets) == 1:
        return crop(v, offsets[0], shape)
    return torch.cat([crop(v, o, shape) for o in offsets])


class PartitionedReconstructor(Reconstructor):
    r"""Reconstruct a volume patch by patch with any patch-level ``deepinv`` reconstructor.

    Parameters
    ----------
    base_reconstructor : torch.nn.Module
        solves a patch problem, called as ``base(y_p, physics_p, x_init=x0_p)`` (the protocol
        :class:`unrolled3d.protocols.StartPointReconstructor`, e.g.
        :class:`unrolled3d.models.UnrolledPGD`, compiled or not). deepinv's optimisers
        (``optim_builder``, ``unfolded_builder``) and ``ArtifactRemoval`` are adapted
        (:func:`unrolled3d.partition.as_base_reconstructor`); a denoiser ``D(x, sigma)`` or a
        module that cannot take ``(y, physics, x_init=...)`` is refused with a ``TypeError``.
    img_size : tuple
        volume shape ``(D, H, W)`` (or ``(C, D, H, W)``).
    patch_size : tuple
        patch shape, each at most the volume's.
    stride : tuple
        grid step, ``1 <= stride <= patch`` (default: half the patch).
    n_sweeps : int
        sweeps at inference (each uses the previous as context; default 2).
    progress : bool
        show a progress bar over patches (not inside compiled code).
    sweep_start : str
        where each patch's base starts in later sweeps: ``"initial"``
        (default) the first sweep's context (``x_init`` or ``A_dagger(y)``), as in training
        (``training_loss`` starts from ``A_dagger(y)``), so that later sweeps only refresh the
        context; ``"current"`` the latest estimate (for iterative bases that refine it).
    patch_batch_size : int
        patches of a sweep solved together as one batch of the base (default 1): the network
        runs on ``patch_batch_size * B`` patches at once, each patch's data step with its own
        operator (:class:`unrolled3d.partition.PatchBatch`). The result equals one patch at a
        time up to rounding; memory grows with it (:mod:`unrolled3d.budget`). On the CPU, 8
        patches per call ran the demo's model 3.2x faster than one (small batches leave oneDNN's
        convolutions overhead-bound; ``bench/results/README.md``).

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

    def __init__(self, base_reconstructor: torch.nn.Module, img_size: Sequence[int] | int,
                 patch_size: Sequence[int] | int, stride: Sequence[int] | int | None = None, n_sweeps: int = 2,
                 progress: bool = False, sweep_start: str = "initial", patch_batch_size: int = 1) -> None:
        super().__init__()
        base = as_base_reconstructor(base_reconstructor)
        size = img_size
        if not isinstance(size, (int, str, bytes)) and hasattr(size, "__len__") and len(size) == 4:
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
        self.base = base
        self.n_sweeps = integer("n_sweeps", n_sweeps, 1)
        self.sweep_start = choice("sweep_start", sweep_start, ("initial", "current"))
        self.progress = boolean("progress", progress)
        self.patch_batch_size = integer("patch_batch_size", patch_batch_size, 1)
        self._plans: list[SweepPlan] = []

    def __getstate__(self) -> dict:
        # plans hold the physics they were built for: not part of the model (pickle, deepcopy)
        state = self.__dict__.copy()
        state["_plans"] = []
        return state

    # ----------------------------------------------------------------- helpers
    def with_patch_size(self, patch_size: Sequence[int] | int, stride: Sequence[int] | int | None = None,
                        n_sweeps: int | None = None) -> "PartitionedReconstructor":
        """The same reconstructor (base shared, not copied) on patches of ``patch_size``: the
        stride given, else the default stride follows the new patch and an explicit one is kept;
        ``n_sweeps`` given or kept; start rule, progress and patch batch are kept."""
        return self._like(self.base, patch_size, stride, n_sweeps)

    def with_base(self, base: torch.nn.Module) -> "PartitionedReconstructor":
        """The same reconstructor (patch, stride, sweeps, start rule, progress, patch batch) with
        another base model, e.g. the same network in another precision."""
        return self._like(base, self.patch_shape)

    def _like(self, base: torch.nn.Module, patch_size: Sequence[int] | int, stride: Sequence[int] | int | None = None,
              n_sweeps: int | None = None) -> "PartitionedReconstructor":
        if stride is None and not self._default_stride:
            stride = self.stride
        return PartitionedReconstructor(base, self.img_shape, patch_size, stride,
                                        n_sweeps=self.n_sweeps if n_sweeps is None else n_sweeps,
                                        progress=self.progress, sweep_start=self.sweep_start,
                                        patch_batch_size=self.patch_batch_size)

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

    def _records_gradients(self, physics: LinearPhysics, normal: NormalApproximation | None,
                           *tensors: torch.Tensor | None) -> bool:
        """Whether a call may need an autograd graph: grad mode on and a parameter of the base, the
        physics or ``H``, or one of ``tensors``, requiring grad."""
        if not torch.is_grad_enabled():
            return False
        if any(t is not None and t.requires_grad for t in tensors):
            return True
        modules = [m for m in (self, physics, normal) if isinstance(m, torch.nn.Module)]
        return any(p.requires_grad for m in modules for p in m.parameters())

    # ----------------------------------------------------------------- plans
    def prepare(self, physics: LinearPhysics, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu", warm: bool = True,
                normal: NormalApproximation | None = None) -> SweepPlan:
        """Build (or find) the sweep plan of ``physics`` for volumes of ``dtype`` on ``device``.

        :meth:`forward` builds it on first use, so this is needed only before
        ``torch.compile(..., fullgraph=True)`` of :meth:`forward` (a plan cannot be built inside
        a graph without a break). ``warm`` applies every patch operator and the full operator
        once to zeros, which fills the device caches they keep (e.g. the projector's view
        vectors on the device) so that traced code only reads them.

        Parameters
        ----------
        physics : deepinv.physics.LinearPhysics
            The full operator, or a physics carrying an approximation ``H``
            (a ``DiagCirculantWrapper``: H mode).
        dtype, device
            Of the volumes to reconstruct.
        warm : bool
            Apply each operator once (see above).
        normal : NormalApproximation, optional
            ``H`` (H mode), as :meth:`forward` takes it.

        Returns
        -------
        SweepPlan
        """
        if not isinstance(physics, LinearPhysics):
            raise TypeError(f"physics must be a deepinv LinearPhysics, got {type(physics).__name__}")
        like = torch.empty(0, dtype=dtype, device=device)
        physics, normal = resolve_normal(physics, normal)
        plan = self._plan(physics, normal, like)
        if warm:
            channels = 2 if any(getattr(o, "complex_images", False) for o in (physics, normal)) else 1
            with torch.no_grad():
                physics.A(torch.zeros((1, channels, *self.img_shape), dtype=dtype, device=device))
                for group in plan.groups:
                    group.physics.A(torch.zeros((group.size, channels, *self.patch_shape), dtype=dtype, device=device))
        return plan

    def clear_plans(self) -> None:
        """Forget the cached sweep plans (e.g. after changing a physics in place)."""
        self._plans = []

    def _plan(self, physics: LinearPhysics, normal: NormalApproximation | None, like: torch.Tensor) -> SweepPlan:
        """The cached plan of the exact operator ``physics`` and ``H`` ``normal`` (or a new one)."""
        for plan in self._plans:
            if plan.matches(physics, normal, like):
                return plan
        plan = build_plan(physics, normal, self.img_shape, self.patch_shape, self.stride, self.patches(),
                          self.patch_batch_size, like)
        self._plans = [plan] + self._plans[:_MAX_PLANS - 1]
        return plan

    # ----------------------------------------------------------------- one patch problem
    def solve_patches(self, physics_p, size: int, data: torch.Tensor, ctx: torch.Tensor, start: torch.Tensor,
                      normal: NormalApproximation | None, cropped: bool = False) -> torch.Tensor:
        """Solve ``size`` stacked patch problems (patch-major ``[size * B, ...]``) with the base.

        Exact mode: ``data`` is the sweep's residual ``y - A x_ctx`` ``[B, ...]`` (or, with
        ``cropped``, its part each patch operator sees, stacked), the base gets
        ``y_p = crop(residual) + A_p x_ctx[p]`` per patch. H mode: ``data`` is
        ``S A^T (y - A x_ctx)`` stacked like ``ctx``, the base gets ``b = data + H_p x_ctx[p]`` and
        the physics ``H_p``.
        """
        if normal is None:
            y_p = physics_p.A(ctx) + (data if cropped else patch_measurements(physics_p, data))
            return self.base(y_p, physics_p, x_init=start)
        b = data + physics_p.A_adjoint_A(ctx)
        _set_start(physics_p, start)  # A_dagger of the normal-equation patch problem: its start point
        try:
            return self.base(b, physics_p, x_init=start)
        finally:
            _set_start(physics_p, None)

    def reconstruct_patch(self, y: torch.Tensor, physics: LinearPhysics, x_ctx: torch.Tensor,
                          offset: Sequence[int], residual: torch.Tensor | None = None,
                          normal: NormalApproximation | None = None,
                          x_start: torch.Tensor | None = None) -> torch.Tensor:
        """Solve one patch at ``offset`` given the context ``x_ctx`` (full volume).

        H mode only with ``normal`` (an approximation ``H``, :class:`~unrolled3d.protocols.NormalApproximation`):
        ``H`` carried by ``physics`` is not used here, whose callers (e.g. :mod:`unrolled3d.budget`)
        hand in a measurement-space residual. ``residual`` is ``y - A x_ctx`` (exact mode) or
        ``A^T (y - A x_ctx)`` (H mode); it is computed when not given (callers sweeping many
        patches compute it once). ``x_start`` is the base's start point on the patch (default:
        the context's patch, the current estimate).
        """
        return self.reconstruct_patches(y, physics, x_ctx, [offset], residual, normal, x_start)

    def reconstruct_patches(self, y: torch.Tensor, physics: LinearPhysics, x_ctx: torch.Tensor,
                            offsets: Sequence[Sequence[int]], residual: torch.Tensor | None = None,
                            normal: NormalApproximation | None = None,
                          x_start: torch.Tensor | None = None) -> torch.Tensor:
        """Solve the patches at ``offsets`` together, as one batch of the base (as a sweep with
        ``patch_batch_size = len(offsets)`` does); returns them stacked patch-major,
        ``[len(offsets) * B, C, *patch]``.

        ``residual`` and ``x_start`` (stacked like the output) as in :meth:`reconstruct_patch`.
        """
        shape = self.patch_shape
        offs = [int_tuple("offsets", [int(v) for v in o], 3, minimum=None) for o in offsets]
        if not offs:
            raise ValueError("offsets must name at least one patch")
        physics, normal = resolve_normal(exact_physics(physics), normal)
        ops = [patch_operator(physics, normal, self.img_shape, o, shape) for o in offs]
        group = group_physics(ops, normal)
        ctx = _stack(x_ctx, offs, shape)
        start = ctx if x_start is None else x_start
        if normal is None:
            if residual is None:
                residual = y - physics.A(x_ctx)
            return self.solve_patches(group, len(ops), residual, ctx, start, None)
        if residual is None:
            residual = physics.A_adjoint(y - physics.A(x_ctx))
        return self.solve_patches(group, len(ops), _stack(residual, offs, shape), ctx, start, normal)

    # ----------------------------------------------------------------- inference
    def forward(self, y: torch.Tensor, physics: LinearPhysics, fourier_filter: torch.Tensor | None = None,
                spatial_mask: torch.Tensor | None = None, x_init: torch.Tensor | None = None,
                n_sweeps: int | None = None, normal: NormalApproximation | None = None, **kwargs) -> torch.Tensor:
        r"""Partitioned reconstruction ``[B, C, D, H, W]`` of the measurements ``y``.

        Parameters
        ----------
        y : torch.Tensor
            measurements of ``physics``.
        physics : deepinv.physics.LinearPhysics
            the full operator, or a physics carrying an approximation ``H`` of its normal operator
            (:class:`~unrolled3d.protocols.CarriesNormal`, e.g. a ``DiagCirculantWrapper``: H mode).
        fourier_filter : torch.Tensor
            ``lam`` of a fitted diagonal-circulant ``H`` for this call (optional; needs ``normal`` or
            a physics carrying ``H``, whose settings it takes; that ``H`` is left unchanged).
        spatial_mask : torch.Tensor
            ``m`` of a fitted ``H`` for this call (optional, as ``fourier_filter``).
        x_init : torch.Tensor
            context of the first sweep (default ``physics.A_dagger(y)``).
        n_sweeps : int
            override the number of sweeps.
        normal : NormalApproximation, optional
            ``H`` (e.g. :class:`~unrolled3d.normal.DiagCirculantNormal`): H mode with the exact
            ``physics`` (it takes precedence over an ``H`` the physics carries).
        """
        self._check(y, physics)
        physics, normal = resolve_normal(physics, normal, fourier_filter, spatial_mask)
        if self._records_gradients(physics, normal, y, x_init):
            return self._reconstruct(y, physics, normal, x_init, n_sweeps)
        with torch.no_grad():  # nothing can ask for gradients: record no graph (issue 30)
            return self._reconstruct(y, physics, normal, x_init, n_sweeps)

    def _reconstruct(self, y: torch.Tensor, physics: LinearPhysics, normal: NormalApproximation | None,
                     x_init: torch.Tensor | None,
                     n_sweeps: int | None) -> torch.Tensor:
        """The sweeps of :meth:`forward` with the exact operator ``physics`` and ``H`` ``normal``."""
        x = _start_point(physics, y) if x_init is None else x_init
        if tuple(x.shape[-3:]) != self.img_shape:
            raise ValueError(f"x_init has spatial shape {tuple(x.shape[-3:])}, expected {self.img_shape}")
        plan = self._plan(physics, normal, x)
        plan.refresh()
        sweeps = self.n_sweeps if n_sweeps is None else integer("n_sweeps", n_sweeps, 1)
        bar = None
        if self.progress and plan.rank == 0 and not torch.compiler.is_compiling():
            bar = tqdm(total=sweeps * sum(g.size for g in plan.groups), desc="patches", leave=False)
        first = x  # start point of every patch when sweep_start == "initial" (as in training)
        try:
            for sweep in range(sweeps):
                if bar is not None:
                    bar.set_description(f"sweep {sweep + 1}/{sweeps}, patches")
                x = self._sweep(y, physics, normal, plan, x, first, bar)
        finally:
            if bar is not None:
                bar.close()
        return x

    def _sweep(self, y: torch.Tensor, physics: LinearPhysics, normal: NormalApproximation | None, plan: SweepPlan,
               x: torch.Tensor, first: torch.Tensor, bar) -> torch.Tensor:
        """One pass over this rank's patches with ``x`` as context; the blended estimate."""
        shape = self.patch_shape
        residual = y - physics.A(x)
        if normal is not None:
            residual = physics.A_adjoint(residual)
        out = torch.zeros_like(x)
        weight = torch.zeros(self.img_shape, dtype=x.dtype, device=x.device)
        for group in plan.groups:
            ctx = _stack(x, group.offsets, shape)
            start = ctx if self.sweep_start == "current" else _stack(first, group.offsets, shape)
            data = residual if normal is None else _stack(residual, group.offsets, shape)
            x_g = self.solve_patches(group.physics, group.size, data, ctx, start, normal)
            parts = (x_g,) if group.size == 1 else x_g.chunk(group.size)
            for offset, x_p in zip(group.offsets, parts):
                if torch.is_grad_enabled() and x_p.requires_grad:
                    out, added = masked_scatter_add(out, x_p, offset, shape, window=plan.window, weight=weight)
                    assert added is not None  # the weight given, returned with the patch's window added
                    weight = added
                else:
                    masked_scatter_add_(out, x_p.detach(), offset, shape, window=plan.window, weight=weight)
            if bar is not None:
                bar.update(group.size)
        if plan.world > 1:
            dist.all_reduce(out)
            dist.all_reduce(weight)
        return out / weight

    # ----------------------------------------------------------------- training
    @torch.compiler.disable
    def random_offset(self, generator: torch.Generator | None = None) -> tuple[int, int, int]:
        """A uniformly random patch position inside the volume."""
        z, y, x = random_patch_offset(self.img_shape, self.patch_shape, generator)
        return z, y, x

    def training_loss(self, y: torch.Tensor, physics: LinearPhysics, x_true: torch.Tensor,
                      generator: torch.Generator | None = None, offset: Sequence[int] | None = None,
                      fourier_filter: torch.Tensor | None = None, spatial_mask: torch.Tensor | None = None,
                      x_start: torch.Tensor | None = None, reduction: str = "mean",
                      normal: NormalApproximation | None = None,
                      residual: torch.Tensor | None = None) -> torch.Tensor:
        r"""``L_PART``: MSE between the patch reconstruction with ground-truth context and ``S x*``.

        The patch position is drawn at random (``generator``) unless ``offset`` is given. The
        context (outside the patch) is the ground truth, but the base starts from
        ``x_start[p]`` (default ``physics.A_dagger(y)``, FDK), as the first inference sweep does:
        starting from the true patch would hand the network the answer. H mode as in
        :meth:`forward` (``normal=``, or a physics carrying ``H``; ``fourier_filter``/``spatial_mask``).

        ``residual`` is ``y - A x_true`` when the caller knows it (a simulated ``y = A x_true + n``
        has residual ``n``, so :func:`unrolled3d.train.train` passes the noise it drew): the step
        then projects nothing of the whole volume, only the patch on its detector window.

        ``reduction="mean"`` (default) gives the MSE over the batch, ``"none"`` one MSE per batch
        item, shape ``(B,)`` (deepinv's per-sample convention).
        """
        self._check(y, physics)
        if x_true.shape[-3:] != self.img_shape:
            raise ValueError(f"x_true has spatial shape {tuple(x_true.shape[-3:])}, expected {self.img_shape}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        offset = tuple(offset) if offset is not None else self.random_offset(generator)
        shape = self.patch_shape
        physics, normal = resolve_normal(physics, normal, fourier_filter, spatial_mask)
        op = patch_operator(physics, normal, self.img_shape, offset, shape)
        ctx_p = crop(x_true, offset, shape)
        # Only the patch is reconstructed, so only patch-sized images are formed: the start point
        # and (H mode) the backprojected residual are computed on the patch alone where the
        # physics allows it, which keeps the step's memory flat in the volume size.
        with torch.no_grad():
            if residual is None:
                residual = y - physics.A(x_true)
            elif residual.shape != y.shape:
                raise ValueError(f"residual must have the shape of y {tuple(y.shape)}, got {tuple(residual.shape)}")
            start = crop(x_start, offset, shape) if x_start is not None else _patch_start(physics, y, offset, shape)
            if normal is not None:  # S A^T r = (A S^T)^T r
                exact = patch_operator(physics, None, self.img_shape, offset, shape)
                residual = exact.A_adjoint(patch_measurements(exact, residual))
        x_p = self.solve_patches(op, 1, residual, ctx_p, start, normal)
        errors = (x_p - ctx_p).square().flatten(1).mean(1)
        return errors.mean() if reduction == "mean" else errors
