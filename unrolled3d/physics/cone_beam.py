"""``ConeBeamCT``: the cone-beam projector pair as a ``deepinv.physics.LinearPhysics``."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from deepinv.physics import LinearPhysics
from deepinv.physics.noise import NoiseModel, ZeroNoise

from .._validation import boolean, check_allocation, check_device, choice
from ..geometry import ConeBeamGeometry
from ..ops.projector import cone_backproject, cone_project
from .fdk import FDK_WINDOWS, fdk, fdk_tables

__all__ = ["ConeBeamCT", "to_astra_layout", "from_astra_layout", "LAYOUTS", "SOLVER_KEYWORDS"]

LAYOUTS = ("views", "astra")
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
        if ``True``, divide ``A`` by its spectral norm ``||A||`` (estimated
        once, deterministically, by Lanczos on ``A^T A`` to about 1e-6, and stored in the
        ``operator_norm`` buffer) so that ``||A^T A|| = 1``; ``A_dagger`` compensates.
    fdk_window : str
        ramp filter window of ``A_dagger`` (see :func:`unrolled3d.physics.fdk`).
    device : torch.device, str
        device of the buffers.
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
        **kwargs,
    ) -> None:
        if not isinstance(geometry, ConeBeamGeometry):
            raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}")
        # every argument is checked here, not at its first use (a bad FDK window used to surface
        # only at the first A_dagger, possibly hours into a run)
        choice("layout", layout, LAYOUTS)
        choice("fdk_window", fdk_window, FDK_WINDOWS)
        normalize = boolean("normalize", normalize)
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
        self.register_buffer("operator_norm", torch.tensor(1.0, dtype=torch.float64, device=device))
        # FDK's per-view tables, once per scan and device (shared with the patches' geometries),
        # so that A_dagger holds no geometry work and compiles whole (physics/fdk.py)
        fdk_tables(geometry, self.operator_norm.device)
        if self.normalize:
            # the estimate works on whole volumes: refuse one the device cannot hold, with words
            check_allocation("normalize=True: a whole volume", (1, 1, *geometry.vol_shape),
                             torch.float32, self.operator_norm.device)
            self.normalize = False  # estimate the norm of the raw operator
            sqnorm = self._largest_eigenvalue_of_normal()
            self.normalize = True
            self.operator_norm.fill_(sqnorm**0.5)

    def _largest_eigenvalue_of_normal(self, max_iter: int = 60, rtol: float = 1e-9) -> float:
        """``||A||^2``: the largest eigenvalue of ``A^T A`` by Lanczos, started from a constant volume.

        Deterministic on purpose: deepinv's ``compute_sqnorm`` restarts from the global RNG and, on
        sparse-view scans whose top eigenvalues cluster, power iteration is still 1 % short after
        100 iterations, so the norm (and every normalised measurement) changed from one
        construction to the next. Lanczos settles in about 20 products. ``A`` has non-negative
        entries, so its top singular vector is non-negative (Perron) and the constant start
        overlaps it. No reorthogonalisation: we stop once the top Ritz value settles, before lost
        orthogonality can matter (Paige), and keep two vectors instead of a basis.
        """
        q = torch.ones((1, 1, *self.img_shape), dtype=torch.float32, device=self.operator_norm.device)
        q = q / torch.linalg.vector_norm(q)
        q_prev, beta = torch.zeros_like(q), 0.0
        alphas: list[float] = []
        betas: list[float] = []
        top = 0.0
        for _ in range(max_iter):
            w = self.A_adjoint(self.A(q))
            alpha = float(torch.sum(q.double() * w.double()))
            w = w - alpha * q - beta * q_prev
            alphas.append(alpha)
            tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
            if betas:
                off = torch.tensor(betas, dtype=torch.float64)
                tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
            new_top = float(torch.linalg.eigvalsh(tridiagonal)[-1])
            beta = float(torch.linalg.vector_norm(w.double()))
            if abs(new_top - top) <= rtol * new_top or beta <= rtol * new_top:  # settled, or invariant subspace
                return new_top
            top = new_top
            betas.append(beta)
            q_prev, q = q, w / beta
        warnings.warn(f"||A|| estimate (Lanczos) had not settled to rtol={rtol} after {max_iter} products",
                      stacklevel=3)
        return top

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
        return self._scale(_fdk(views, self.geometry, window=window), 1)

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
        return self.restrict(offset, shape).fbp(y)

    def restrict(self, offset: Sequence[int], shape: Sequence[int]) -> "ConeBeamCT":
        """The patch operator ``A S^T``: the same scan seen by the sub-volume at ``offset``.

        Shares the normalisation (``operator_norm``) of this operator, has no noise model.
        """
        patch = ConeBeamCT(self.geometry.restrict(offset, shape), fdk_window=self.fdk_window,
                           device=self.operator_norm.device, layout=self.layout)
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
