"""``ConeBeamCT``: the cone-beam projector pair as a ``deepinv.physics.LinearPhysics``."""
from __future__ import annotations

from typing import Sequence

import torch
from deepinv.physics import LinearPhysics
from deepinv.physics.noise import NoiseModel, ZeroNoise

from .._validation import boolean, check_device, choice, real
from ..geometry import ConeBeamGeometry, DetectorWindow
from ..ops.projector import cone_backproject, cone_project
from .fdk import FDK_WINDOWS, fdk, fdk_tables
from .norm import EXACT_NORM_VOXELS, cached_operator_norm, largest_eigenvalue_of_normal, operator_norm  # noqa: F401

__all__ = ["ConeBeamCT", "ConeBeamPatch", "to_astra_layout", "from_astra_layout", "LAYOUTS", "SOLVER_KEYWORDS"]

LAYOUTS = ("views", "astra")

#: voxels x views of an FDK above which :meth:`ConeBeamCT.fbp` shows a progress bar (about a
#: second of backprojection on a CPU core): large volumes, not the many small FDKs of a patch loop
#: (with a bar the compiled backprojection runs in steps of views)
FDK_PROGRESS_WORK = 256**3 * 64
#: keywords of ``LinearPhysics.A_dagger`` / ``deepinv.optim.linear.least_squares`` that ask for
#: a least-squares solve rather than FDK.
SOLVER_KEYWORDS = frozenset({"solver", "tol", "max_iter", "verbose", "init", "z", "gamma", "parallel_dim",
                             "AAT", "ATA"})


class ConeBeamCT(LinearPhysics):
    r"""Cone-beam X-ray transform ``y = N(A x)`` with an exactly matched adjoint.

    ``A`` is the C++/CUDA Joseph projector (:func:`unrolled3d.ops.cone_project`), ``A^T`` its
    exact transpose. ``A_dagger`` is FDK by default and deepinv's least-squares solver when asked
    for one (``fbp=False`` or any of deepinv's solver keywords, see :meth:`A_dagger`).

    Parameters
    ----------
    geometry : ConeBeamGeometry
        acquisition and volume geometry.
    noise_model : deepinv.physics.NoiseModel
        noise on the measurements (default none).
    normalize : bool
        if ``True``, divide ``A`` by its spectral norm ``||A||`` (``norm``, or estimated once,
        deterministically, by :func:`operator_norm`: Lanczos on ``A^T A`` to about 1e-6 up to
        128^3 voxels, from coarser grids beyond, and stored in the ``operator_norm`` buffer) so
        that ``||A^T A|| = 1``; ``A_dagger`` compensates.
    fdk_window : str
        ramp filter window of ``A_dagger`` (see :func:`unrolled3d.physics.fdk`).
    device : torch.device, str
        device of the buffers.
    norm : float, optional
        ``||A||`` when it is known (e.g. recorded with the measurements or a model): no
        estimate. Only with ``normalize=True``. Otherwise the norm is estimated once per
        geometry and remembered, in memory and on disk (:mod:`unrolled3d.physics.norm`).
    progress : bool
        progress bars on stderr while ``||A||`` is estimated (once that has taken a second) and
        during the FDK of large scans (:meth:`fbp`, ``A_dagger``; :data:`FDK_PROGRESS_WORK`).
    layout : str
        measurement layout, ``"views"`` (default): ``[B, C, n_views, rows, cols]``,
        contiguous per view, as the projector writes it; ``"astra"``: deepinv's and ASTRA's
        ``[B, C, rows, n_views, cols]`` (a transposed view of the same memory).

    Shapes: ``x`` is ``[B, C, D, H, W]``, ``y`` as ``layout`` says.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 10))
    >>> x = torch.rand(1, 1, 8, 8, 8, dtype=torch.float64)
    >>> y = physics.A(x); y.shape                       # [B, C, views, rows, cols]
    torch.Size([1, 1, 10, 10, 12])
    >>> float(physics.adjointness_test(x)) < 1e-12      # an exact transpose
    True
    >>> physics.A_dagger(y).shape                       # FDK
    torch.Size([1, 1, 8, 8, 8])
    """

    #: images are real (unrolled3d.protocols.ImageKind)
    complex_images = False

    def __init__(
        self,
        geometry: ConeBeamGeometry,
        noise_model: NoiseModel | None = None,
        normalize: bool = False,
        fdk_window: str = "ram-lak",
        device: torch.device | str = "cpu",
        layout: str = "views",
        norm: float | None = None,
        progress: bool = True,
        **kwargs,
    ) -> None:
        if not isinstance(geometry, ConeBeamGeometry):
            raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}")
        # every argument is checked here, not at its first use (a bad FDK window used to surface
        # only at the first A_dagger, possibly hours into a run)
        choice("layout", layout, LAYOUTS)
        choice("fdk_window", fdk_window, FDK_WINDOWS)
        normalize = boolean("normalize", normalize)
        progress = boolean("progress", progress)
        device = check_device("device", device)
        if noise_model is not None and not isinstance(noise_model, NoiseModel):
            raise TypeError(f"noise_model must be a deepinv NoiseModel, got {type(noise_model).__name__}")
        super().__init__(
            img_size=(1, *geometry.vol_shape),
            noise_model=noise_model if noise_model is not None else ZeroNoise(),
            device=device,
            **kwargs,
        )
        self.geometry = geometry
        self.layout = layout
        self.fdk_window = fdk_window
        self.normalize = bool(normalize)
        self.progress = progress
        self.register_buffer("operator_norm", torch.tensor(1.0, dtype=torch.float64, device=device))
        # FDK's per-view tables, once per scan and device (shared with the patches' geometries),
        # so that A_dagger holds no geometry work and compiles whole (physics/fdk.py)
        fdk_tables(geometry, self.operator_norm.device)
        # likewise the projector's view vectors: made here, not first inside a traced A (torch.export
        # cannot read a tensor made while tracing; the estimate of ||A|| made them before its cache)
        geometry.views_tensor(self.operator_norm.device)
        if self.normalize:
            if norm is not None:
                self.operator_norm.fill_(real("norm", norm, positive=True))
            else:
                self.operator_norm.fill_(cached_operator_norm(geometry, self.operator_norm.device, progress=progress))
        elif norm is not None:
            raise ValueError("norm is the ||A|| that normalize=True divides by: give it with normalize=True")

    @property
    def img_shape(self) -> tuple[int, int, int]:
        """Spatial volume shape ``(D, H, W)``."""
        return self.geometry.vol_shape

    def _scale(self, t: torch.Tensor, power: int) -> torch.Tensor:
        """``t * ||A||^power`` when normalised. The buffer is used as a (0-d, float64) tensor, not
        a Python float: ``float()`` of a buffer is a data-dependent read that stops
        ``torch.export`` and graph-breaks ``torch.compile``. A 0-d tensor does not promote ``t``'s
        dtype and may sit on the CPU beside a CUDA ``t``; the factor is rounded to ``t``'s dtype
        once, as the Python float was."""
        if not self.normalize:
            return t
        return t * self.operator_norm ** power

    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        """``y``'s shape without batch and channel: ``(n_views, rows, cols)`` or, for the
        ``"astra"`` layout, ``(rows, n_views, cols)``."""
        views, rows, cols = self.geometry.sino_shape
        return (views, rows, cols) if self.layout == "views" else (rows, views, cols)

    def _to_views(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` in this operator's layout -> the projector's ``[B, C, n_views, rows, cols]``."""
        if y.ndim != 5 or tuple(y.shape[2:]) != self.measurement_shape:
            raise ValueError(f"y must have shape [B, C, {', '.join(map(str, self.measurement_shape))}] "
                             f"({self.layout!r} layout), got {tuple(y.shape)}")
        return y if self.layout == "views" else y.transpose(2, 3)

    def _from_views(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.layout == "views" else y.transpose(2, 3)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Projection ``[B, C, D, H, W] -> y`` (shape: see ``layout``)."""
        return self._from_views(self._scale(cone_project(x, self.geometry), -1))

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Exact adjoint (backprojection) ``y -> [B, C, D, H, W]``."""
        return self._scale(cone_backproject(self._to_views(y), self.geometry), -1)

    def fbp(self, y: torch.Tensor, window: str | None = None) -> torch.Tensor:
        """FDK reconstruction ``y -> [B, C, D, H, W]`` (inverts the normalisation, if any)."""
        views = self._to_views(y).contiguous()  # FDK's filtering runs along rows of each view
        window = self.fdk_window if window is None else choice("window", window, FDK_WINDOWS)
        g = self.geometry
        bar = self.progress and g.vol_shape[0] * g.vol_shape[1] * g.vol_shape[2] * g.n_views >= FDK_PROGRESS_WORK
        return self._scale(_fdk(views, g, window=window, progress=bar), 1)

    def A_dagger(self, y: torch.Tensor, fbp: bool | None = None, **kwargs) -> torch.Tensor:
        """Pseudo-inverse: FDK, or deepinv's least-squares solve when one is asked for.

        Parameters
        ----------
        y : torch.Tensor
            measurements.
        fbp : bool
            ``True``: FDK (:meth:`fbp`); ``False``: least squares
            (:meth:`deepinv.physics.LinearPhysics.A_dagger`, whose keywords ``solver``, ``tol``,
            ``max_iter``, ``verbose``, ... pass through). ``None`` (default): FDK, unless one of
            deepinv's solver keywords is given, in which case least squares -- so generic deepinv
            code calling ``A_dagger(y, solver="lsqr", ...)`` gets the least-squares solution.
        window : str
            FDK ramp window (FDK only).
        """
        solver_keys = sorted(k for k in kwargs if k in SOLVER_KEYWORDS)
        if fbp is None:
            fbp = not solver_keys
        fbp = boolean("fbp", fbp)
        if fbp:
            if solver_keys:
                raise ValueError(f"A_dagger: fbp=True (FDK) takes no least-squares solver keywords, got {solver_keys}")
            return self.fbp(y, window=kwargs.get("window"))
        if "window" in kwargs:
            raise ValueError("A_dagger: 'window' is an FDK option, but a least-squares solve was asked for")
        return super().A_dagger(y, **kwargs)

    def fingerprint(self) -> str:
        """The geometry's fingerprint (:meth:`unrolled3d.geometry.ConeBeamGeometry.fingerprint`)."""
        return self.geometry.fingerprint()

    def normalize_measurements(self, y: torch.Tensor) -> torch.Tensor:
        """Line integrals of the raw projector (e.g. a measurements file) in this operator's units:
        ``y / ||A||`` when ``normalize=True``, ``y`` itself otherwise."""
        return self._scale(y, -1)

    def A_dagger_patch(self, y: torch.Tensor, offset: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
        """``S A_dagger(y)``: the default pseudo-inverse (FDK) on the patch at ``offset`` only.

        FDK is voxel-driven, so FDK on the patch's geometry is the crop of the full FDK, but its
        temporaries are patch-sized: the full FDK holds several volume-sized buffers per view,
        which made the start point, not the network, the part of a partitioned training step
        that grew with the volume. Returns ``[B, C, *shape]``.
        """
        return self._sub_volume(offset, shape).fbp(y)

    def _sub_volume(self, offset: Sequence[int], shape: Sequence[int]) -> "ConeBeamCT":
        """The sub-volume's operator on the whole detector (no noise, this normalisation)."""
        patch = ConeBeamCT(self.geometry.restrict(offset, shape), fdk_window=self.fdk_window,
                           device=self.operator_norm.device, layout=self.layout, progress=False)
        patch.normalize = self.normalize
        patch.operator_norm.copy_(self.operator_norm)
        return patch

    def slab(self, z0: int, depth: int) -> "ConeBeamCT":
        """The operator of the slab ``[z0, z0 + depth)`` of the volume on the band of detector rows
        its shadow reaches in any view (:meth:`ConeBeamGeometry.detector_rows`; the band's first
        row is the result's ``row0``). Its FDK is the slab of the full FDK, read from the band
        only; its projection is the slab's share of the full projection, on the band. Streamed
        reconstructions (:mod:`unrolled3d.partition.streamed`) go through volumes slab by slab."""
        d, h, w = self.img_shape
        offset, shape = (z0, 0, 0), (depth, h, w)
        bounds = self.geometry.shadow_bounds(offset, shape)
        lo, hi = int(bounds[:, 0].min()), int(bounds[:, 1].max())
        if hi < lo:  # the slab's shadow misses the detector: any one row (its projection is zero)
            lo = hi = 0
        band = self.geometry.detector_rows(lo, hi - lo + 1).restrict(offset, shape)
        op = ConeBeamCT(band, fdk_window=self.fdk_window, device=self.operator_norm.device, layout="views",
                        progress=False)
        op.normalize = self.normalize
        op.operator_norm.copy_(self.operator_norm)
        op.row0 = lo
        return op

    def restrict(self, offset: Sequence[int], shape: Sequence[int]) -> "ConeBeamPatch":
        """The patch operator ``A S^T``: the same scan seen by the sub-volume at ``offset``, on the
        detector pixels its shadow reaches (:class:`ConeBeamPatch`), so that its cost grows with
        the patch, not with the volume or the detector.

        Shares the normalisation (``operator_norm``) of this operator, has no noise model.
        """
        return ConeBeamPatch(self._sub_volume(offset, shape), self.geometry.detector_window(offset, shape))


class ConeBeamPatch(ConeBeamCT):
    r"""``A S^T`` of a sub-volume, on the detector window its shadow reaches in each view.

    Built by :meth:`ConeBeamCT.restrict`. Its measurements are ``[B, C, n_views, h, w]``: view
    ``p``'s window of the full detector (:class:`unrolled3d.geometry.DetectorWindow`); outside the
    windows the sub-volume's projection is exactly zero, so this operator is the full-detector
    ``A S^T`` followed by the crop (:meth:`crop_measurements`), and its adjoint the zero-filled
    embedding (:meth:`embed_measurements`) followed by the backprojection. A data step
    ``A_p^T (A_p x - crop(y))`` equals the full-detector one.

    Parameters
    ----------
    sub_volume : ConeBeamCT
        The sub-volume's operator on the whole detector (its normalisation is shared).
    window : DetectorWindow
        The per-view windows (:meth:`unrolled3d.geometry.ConeBeamGeometry.detector_window`).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(32, 10))
    >>> patch = physics.restrict((8, 8, 8), (8, 8, 8))
    >>> patch.window.shape, physics.geometry.det_shape    # rows, cols of the shadow
    ((12, 15), (40, 48))
    >>> x = torch.zeros(1, 1, 32, 32, 32, dtype=torch.float64); x[..., 8:16, 8:16, 8:16] = 1
    >>> y = physics.A(x)
    >>> bool(torch.allclose(patch.A(x[..., 8:16, 8:16, 8:16]), patch.crop_measurements(y)))
    True
    """

    def __init__(self, sub_volume: ConeBeamCT, window: DetectorWindow) -> None:
        super().__init__(sub_volume.geometry.windowed(window), fdk_window=sub_volume.fdk_window,
                         device=sub_volume.operator_norm.device, layout=sub_volume.layout, progress=False)
        self.normalize = sub_volume.normalize
        self.operator_norm.copy_(sub_volume.operator_norm)
        self.window = window
        self._sub_volume_op = sub_volume
        self._index_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Index tensors ``(view [V,1,1], row [V,h,1], col [V,1,w])`` of the windows on ``device``."""
        found = self._index_cache.get(device)
        if found is None:
            h, w = self.window.shape
            rows = torch.tensor(self.window.row0, device=device)[:, None] + torch.arange(h, device=device)
            cols = torch.tensor(self.window.col0, device=device)[:, None] + torch.arange(w, device=device)
            views = torch.arange(len(self.window.row0), device=device)
            found = self._index_cache[device] = (views[:, None, None], rows[:, :, None], cols[:, None, :])
        return found

    def _full_views(self, y: torch.Tensor) -> torch.Tensor:
        """Full-detector measurements in this operator's layout -> ``[B, C, V, rows, cols]``."""
        full = self._sub_volume_op
        return full._to_views(y)

    def crop_measurements(self, y: torch.Tensor) -> torch.Tensor:
        """The windows of full-detector measurements ``y`` (of the whole scan, this layout):
        ``[B, C, V, rows, cols] -> [B, C, V, h, w]``."""
        v, r, c = self._indices(y.device)
        return self._from_views(self._full_views(y)[:, :, v, r, c])

    def embed_measurements(self, y: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`crop_measurements`: windowed ``y`` zero-filled to the detector."""
        v, r, c = self._indices(y.device)
        views = self._to_views(y)
        full = views.new_zeros((*views.shape[:2], *self._sub_volume_op.geometry.sino_shape))
        full[:, :, v, r, c] = views
        return self._from_views(full)

    def fbp(self, y: torch.Tensor, window: str | None = None) -> torch.Tensor:
        """FDK of the windowed measurements: zero-filled to the detector (where the patch's own
        projection is zero), then FDK of the sub-volume."""
        return self._sub_volume_op.fbp(self.embed_measurements(y), window=window)

    def A_dagger_patch(self, y: torch.Tensor, offset: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
        raise TypeError("a patch operator has no patches of its own: restrict the full operator instead")

    def restrict(self, offset: Sequence[int], shape: Sequence[int]) -> "ConeBeamPatch":
        raise TypeError("a patch operator has no patches of its own: restrict the full operator instead")


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
