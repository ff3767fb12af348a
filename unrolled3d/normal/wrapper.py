r"""``DiagCirculantWrapper``: a physics whose normal operator is the learned approximation ``H``.

``A`` and ``A^T`` are those of the wrapped physics; ``A_adjoint_A`` is ``scaling * H(m, lam)``
(:mod:`unrolled3d.normal.functional`). The wrapper owns the parameters (``spatial_mask``,
``fourier_filter``), their kernel cut (``kernel_radius``), their restriction to patches
(:meth:`DiagCirculantWrapper.restrict`, the per-shape filter cache), their fit
(:mod:`unrolled3d.normal.fit`) and their file format.

Restriction to a patch: ``m`` is cropped to the patch and the kernel to the lags a patch can see,
``|lag| <= patch - 1`` on each axis, then transformed on the patch's own doubled grid
``2 * patch`` (rFFT, or full FFT for complex images). Two voxels of a patch are never further
apart than that, so the patch operator equals ``S H S^T`` exactly (tested), at the cost of FFTs on
the patch grid instead of the volume grid.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from deepinv.physics import LinearPhysics
from deepinv.physics.mri import MRIMixin

from .._validation import check_finite, check_patch, int_triple, int_tuple, real
from ..errors import FileFormatError, first_line
from ..io.atomic import atomic_path
from ..protocols import Fingerprinted, ImageKind
from . import fit as _fit
from .functional import VARIANTS, smooth_size
from .patch import DiagCirculantOperator, DiagCirculantPatch

__all__ = ["DiagCirculantWrapper", "FILE_FORMAT"]

#: the ``format`` entry of a saved operator file
FILE_FORMAT = "unrolled3d.DiagCirculant/1"


def _check_kernel_radius(radius, shape: tuple[int, int, int]) -> tuple[int, int, int] | None:
    if radius is None:
        return None
    r = int_tuple("kernel_radius", radius, 3, minimum=0, allow_scalar=True)
    # lags beyond n - 1 never meet two voxels of the volume: cap, so that 'no radius' has one spelling
    r = tuple(min(v, n - 1) for v, n in zip(r, shape))
    return None if r == tuple(n - 1 for n in shape) else r


_STATE_KEYS = {"spatial_mask": torch.Tensor, "fourier_filter": torch.Tensor, "img_shape": list, "scaling": (int, float),
               "variant": str}


def _read_state(path: str | os.PathLike) -> dict:
    """A saved operator, loaded safely; every problem is a :class:`FileFormatError` naming the file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"operator file {p} does not exist")
    if not p.is_file() or p.stat().st_size == 0:
        raise FileFormatError(p, "empty or not a file (expected a DiagCirculantWrapper file from save())")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # EOFError, a zip error, UnpicklingError (weights_only refusing a pickle) ...
        raise FileFormatError(p, f"not a readable DiagCirculantWrapper file ({first_line(exc)})") \
            from None
    if not isinstance(state, dict) or state.get("format") != FILE_FORMAT:
        raise FileFormatError(p, f"not a DiagCirculantWrapper file (format {FILE_FORMAT!r} expected)")
    for key, kind in _STATE_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise FileFormatError(p, f"the entry {key!r} is missing or of the wrong type")
    for key in ("spatial_mask", "fourier_filter"):
        if not bool(torch.isfinite(state[key]).all()):
            raise FileFormatError(p, f"{key} contains NaN or infinite values")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in state["img_shape"]) \
            or len(state["img_shape"]) != 3:
        raise FileFormatError(p, f"img_shape {state['img_shape']!r} is not 3 positive integers")
    return state


def _is_complex_physics(physics: LinearPhysics) -> bool:
    """Operators that declare complex images (:class:`unrolled3d.protocols.ImageKind`, e.g.
    :class:`unrolled3d.mri.MultiCoilMRI3D`), and deepinv's MRI operators."""
    return isinstance(physics, MRIMixin) or (isinstance(physics, ImageKind) and bool(physics.complex_images))


def _image_layout(physics: LinearPhysics, img_size: Sequence[int], complex_images: bool | None
                  ) -> tuple[tuple[int, int, int], bool]:
    """``(D, H, W)`` and whether the images are complex, from ``img_size`` (3 entries, or 4 with a
    leading channel count 1 = real, 2 = complex) and the physics (see the class docstring)."""
    if complex_images is not None and not isinstance(complex_images, bool):
        raise TypeError(f"complex_images must be None, True or False, got {complex_images!r}")
    if isinstance(img_size, (str, bytes)) or not hasattr(img_size, "__len__"):
        raise TypeError(f"img_size must be (D, H, W) or (C, D, H, W), got {img_size!r}")
    size = tuple(img_size)
    channels = None
    if len(size) == 4:
        channels, size = size[0], size[1:]
        if channels not in (1, 2):
            raise ValueError(f"img_size {tuple(img_size)} has {channels} channels: expected 1 (real images) "
                             f"or 2 (complex images as real, imaginary channels)")
    shape = int_triple("img_size", size)
    if channels is not None and complex_images is not None and complex_images != (channels == 2):
        raise ValueError(f"complex_images={complex_images} contradicts img_size {tuple(img_size)} "
                         f"({channels} channel{'s' if channels > 1 else ''})")
    if complex_images is None:
        complex_images = channels == 2 if channels is not None else _is_complex_physics(physics)
    return shape, complex_images


class DiagCirculantWrapper(DiagCirculantOperator):
    r"""Wrap a ``LinearPhysics`` and approximate its normal operator by ``scaling * H(m, lam)``.

    Parameters
    ----------
    physics : deepinv.physics.LinearPhysics
        the operator ``A`` (e.g. :class:`ConeBeamCT`,
        :class:`unrolled3d.mri.MultiCoilMRI3D`).
    img_size : tuple
        volume shape ``(D, H, W)``, or ``(C, D, H, W)`` with ``C = 1`` (real
        images) or ``C = 2`` (complex images).
    scaling : float
        ``H`` approximates ``A^T A / scaling``: pass ``||A||^2`` if ``A`` is not
        normalised, so that ``m`` and ``lam`` are of order one.
    variant : str
        ``"sandwich"`` (``m F^-1 lam F m``), ``"one_sided"`` (``m F^-1 lam F``) or
        ``"symmetric"`` (``(H + H^*) / 2`` of the one-sided form).
    device : torch.device
        device of ``m`` and ``lam``.
    dtype : torch.dtype
        real dtype of ``m`` (``lam`` is the matching complex type).
    kernel_radius
        ``None`` (default): the kernel may use every lag of the doubled grid.
        An int or ``(r0, r1, r2)``: the kernel is restricted to lags ``|l_i| <= r_i``, in the fit
        and in use, so a patch of size ``p`` is filtered on a grid of about ``p + min(r, p - 1)``
        per axis instead of ``2p`` (the paper's "restricting the size of the underlying
        convolution kernel"). Worth it only where the normal operator's point-spread function is
        compact and patches are a large fraction of the volume; incoherently undersampled MRI
        spreads its aliasing over every lag (measured in ``docs/partitioning.md``). The
        whole-volume ``H`` then pays one more FFT pair of the doubled grid per call (the cut).
    complex_images
        ``True``: images are complex ``(B, 2, D, H, W)`` (real, imaginary
        channels), ``H`` is a complex convolution (complex kernel, full-FFT ``lam`` of shape
        ``(2D, 2H, 2W)``). ``False``: real images ``(B, C, D, H, W)``, real kernel, rFFT ``lam``
        ``(2D, 2H, W + 1)``. ``None`` (default): complex when ``img_size`` has 2 channels, or, for
        a 3-entry ``img_size``, when ``physics`` is an MRI operator
        (:class:`~unrolled3d.mri.MultiCoilMRI3D`, its patches, deepinv's ``MRI``/``MultiCoilMRI``).

    ``A``, ``A_adjoint`` are those of the wrapped physics; ``A_adjoint_A`` is ``scaling * H``.
    Fit with :meth:`fit`, or pass ``spatial_mask`` / ``fourier_filter`` learned elsewhere.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.normal import DiagCirculantWrapper
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 10), normalize=True)
    >>> H = DiagCirculantWrapper(physics, (8, 8, 8))
    >>> errors = H.fit(n_iter=5, progress=False)       # E ||A^T A x - H x||^2 over Gaussian probes
    >>> H.relative_error() < 1
    True
    >>> H.restrict((0, 2, 4), (4, 4, 4)).A_adjoint_A(torch.rand(1, 1, 4, 4, 4)).shape
    torch.Size([1, 1, 4, 4, 4])
    """

    def __init__(
        self,
        physics: LinearPhysics,
        img_size: Sequence[int],
        scaling: float = 1.0,
        device: torch.device | str = "cpu",
        variant: str = "sandwich",
        dtype: torch.dtype = torch.float32,
        spatial_mask: torch.Tensor | None = None,
        fourier_filter: torch.Tensor | None = None,
        complex_images: bool | None = None,
        kernel_radius: int | Sequence[int] | None = None,
    ) -> None:
        if not isinstance(physics, LinearPhysics):
            raise TypeError(f"physics must be a deepinv LinearPhysics, got {type(physics).__name__}")
        shape, complex_images = _image_layout(physics, img_size, complex_images)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        scaling = real("scaling", scaling, positive=True)
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.complex_images = complex_images
        self.kernel_radius = _check_kernel_radius(kernel_radius, shape)
        super().__init__(img_size=(self.channels, *shape), device=device)
        self.physics = physics
        self.img_shape = shape
        self.scaling = scaling
        self.variant = variant
        self.dtype = dtype
        # m and lam are Parameters (state_dict, .to()) that record no gradient outside fit(): H is
        # fitted to A^T A, not trained with the network, and a lam without autograd lets restrict()
        # reuse one patch filter for every patch. requires_grad_() makes them trainable end to end.
        self.spatial_mask = torch.nn.Parameter(torch.ones(shape, dtype=dtype, device=device), requires_grad=False)
        # lam is learned in the Fourier domain, as in the paper: its entries are all of similar size
        # (for CT it behaves like 1/|frequency|), which suits Adam's per-coordinate steps; the
        # spatial kernel decays over decades and does not. Real images: the inverse rFFT keeps H
        # real. Complex images: the full spectrum of a complex kernel (H is C-linear, like A^H A).
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.fourier_filter = torch.nn.Parameter(torch.zeros(self.filter_shape, dtype=cdtype, device=device),
                                                 requires_grad=False)
        self.fitted = False
        # patch filters by patch shape: they do not depend on the patch position (see patch_filter)
        self._patch_filters: dict[tuple[int, int, int], tuple[tuple, torch.Tensor]] = {}
        if spatial_mask is not None or fourier_filter is not None:
            self.set_parameters(spatial_mask=spatial_mask, fourier_filter=fourier_filter)

    # ----------------------------------------------------------------- parameters
    @property
    def channels(self) -> int:
        """Image channels the operator is built for: 2 for complex images, 1 for real ones."""
        return 2 if self.complex_images else 1

    @property
    def filter_shape(self) -> tuple[int, int, int]:
        """Shape of ``fourier_filter``: rFFT of the doubled grid, ``(2D, 2H, W + 1)`` (real
        images), or full FFT ``(2D, 2H, 2W)`` (complex images)."""
        D, H, W = self.img_shape
        return (2 * D, 2 * H, 2 * W if self.complex_images else W + 1)

    def set_parameters(self, spatial_mask: torch.Tensor | None = None,
                       fourier_filter: torch.Tensor | None = None) -> "DiagCirculantWrapper":
        """Load ``m`` (``img_shape``) and/or ``lam`` (``filter_shape``, real or complex)."""
        with torch.no_grad():
            if spatial_mask is not None:
                if not isinstance(spatial_mask, torch.Tensor) or tuple(spatial_mask.shape) != self.img_shape:
                    raise ValueError(f"spatial_mask must be a tensor of shape {self.img_shape}, "
                                     f"got {getattr(spatial_mask, 'shape', type(spatial_mask))}")
                if spatial_mask.is_complex():
                    raise TypeError("spatial_mask must be real")
                check_finite(spatial_mask, "spatial_mask")
                self.spatial_mask.copy_(spatial_mask)
            if fourier_filter is not None:
                if not isinstance(fourier_filter, torch.Tensor) or tuple(fourier_filter.shape) != self.filter_shape:
                    kind = "full FFT" if self.complex_images else "rFFT"
                    raise ValueError(f"fourier_filter must be a tensor of shape {self.filter_shape} ({kind} of the "
                                     f"doubled grid), got {getattr(fourier_filter, 'shape', type(fourier_filter))}")
                check_finite(fourier_filter, "fourier_filter")
                self.fourier_filter.copy_(fourier_filter.to(self.fourier_filter.dtype))
        self.fitted = True
        return self

    def with_parameters(self, spatial_mask: torch.Tensor | None = None,
                        fourier_filter: torch.Tensor | None = None) -> "DiagCirculantWrapper":
        """A new wrapper of the same physics and settings holding these parameters (those not given
        are copied from this wrapper); this wrapper is left unchanged."""
        out = DiagCirculantWrapper(self.physics, (self.channels, *self.img_shape), self.scaling,
                                   self.spatial_mask.device, self.variant, self.dtype,
                                   complex_images=self.complex_images, kernel_radius=self.kernel_radius)
        if self.fitted:
            out.set_parameters(self.spatial_mask, self.fourier_filter)
        return out.set_parameters(spatial_mask=spatial_mask, fourier_filter=fourier_filter)

    @property
    def kernel(self) -> torch.Tensor:
        """The convolution kernel of ``H`` on the doubled grid ``(2D, 2H, 2W)``, lag 0 at index 0
        (real for real images, complex for complex images), zero beyond ``kernel_radius``."""
        return self._kernel_of(self.fourier_filter)

    def _kernel_of(self, lam: torch.Tensor) -> torch.Tensor:
        k = torch.fft.ifftn(lam) if self.complex_images else torch.fft.irfftn(lam, s=tuple(2 * s for s in self.img_shape))
        return k if self.kernel_radius is None else k * self._lag_window(k)

    def _lag_window(self, like: torch.Tensor) -> torch.Tensor:
        """0/1 box over the doubled grid: 1 at lags ``|l_i| <= r_i`` (negative lags at the end)."""
        axes = []
        for n, r in zip(self.img_shape, self.kernel_radius):
            lag = torch.arange(2 * n, device=like.device)
            lag = torch.minimum(lag, 2 * n - lag)  # |lag| of each FFT index
            axes.append((lag <= r).to(like.real.dtype))
        return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]

    def effective_filter(self, lam: torch.Tensor) -> torch.Tensor:
        """``lam`` with its kernel cut to ``kernel_radius`` (``lam`` itself without a radius)."""
        if self.kernel_radius is None:
            return lam
        k = self._kernel_of(lam)
        return torch.fft.fftn(k) if self.complex_images else torch.fft.rfftn(k)

    @torch.no_grad()
    def make_self_adjoint(self) -> "DiagCirculantWrapper":
        """Replace the sandwich ``H`` by ``(H + H^*) / 2`` in place: ``lam <- Re(lam)`` (the kernel's
        Hermitian part, ``(k(l) + conj(k(-l))) / 2``; for real images its even part).

        Only for ``variant="sandwich"`` (``"symmetric"`` is self-adjoint by construction).
        """
        if self.variant != "sandwich":
            raise ValueError(f"make_self_adjoint applies to the 'sandwich' variant, this wrapper is {self.variant!r}")
        self._require_fitted()
        self.fourier_filter.imag.zero_()
        return self

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("DiagCirculantWrapper has no parameters yet: call fit(), load() or set_parameters()")

    def _params(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._require_fitted()
        return self.spatial_mask, self.effective_filter(self.fourier_filter)

    def _grid(self) -> tuple[int, int, int]:
        return tuple(2 * s for s in self.img_shape)

    # ----------------------------------------------------------------- deepinv physics
    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.physics.A(x, **kwargs)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.physics.A_adjoint(y, **kwargs)

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.physics.A_dagger(y, **kwargs)

    # ----------------------------------------------------------------- patches
    def restrict(self, offset: Sequence[int], shape: Sequence[int]) -> "DiagCirculantPatch":
        """The approximation on the patch ``[o0:o0+p0, o1:o1+p1, o2:o2+p2]``.

        ``m`` is cropped to the patch; the kernel is cropped to lags ``|l| <= p - 1`` (the only ones
        two voxels of the patch can see; ``|l| <= min(r, p - 1)`` with a ``kernel_radius``) and
        transformed on the patch's grid (:meth:`patch_grid`).
        """
        self._require_fitted()
        mask = self.spatial_mask
        off, shape = check_patch(offset, shape, self.img_shape)
        m_p = mask[off[0]:off[0] + shape[0], off[1]:off[1] + shape[1], off[2]:off[2] + shape[2]]
        return DiagCirculantPatch(m_p, self.patch_filter(shape), self.scaling, self.variant, off,
                                  complex_images=self.complex_images, grid=self.patch_grid(shape))

    def patch_grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """FFT grid of a ``shape`` patch: ``2p`` per axis, or, with ``kernel_radius``, the smallest
        2-3-5-smooth size ``>= p + min(r, p - 1) + 1`` (no lag of the patch wraps onto another)."""
        return tuple(smooth_size(p + r + 1) for p, r in zip(shape, self._patch_radius(shape)))

    def _patch_radius(self, shape: Sequence[int]) -> list[int]:
        """Largest lag of the kernel a ``shape`` patch uses, per axis."""
        if self.kernel_radius is None:
            return [p - 1 for p in shape]
        return [min(r, p - 1) for p, r in zip(shape, self.kernel_radius)]

    def patch_filter(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """Spectrum of the kernel cropped to the lags of a ``shape`` patch, on its doubled grid.

        The same for every patch of that shape (the convolution is shift-invariant; only ``m``
        depends on the position), so it is cached per shape while ``lam`` is unchanged (its
        version counter and storage) and no gradient to ``lam`` is being recorded: a partitioned
        sweep then pays the full-grid inverse FFT of the kernel once, not once per patch.
        """
        if torch.compiler.is_compiling():
            # traced code cannot key a cache on storage pointers; the spectrum is tensor work, so a
            # compiled caller recomputes it (once per call, shared by all its patches)
            return self._compute_patch_filter(shape)
        lam = self.fourier_filter
        tracking = torch.is_grad_enabled() and lam.requires_grad
        key = (lam._version, lam.data_ptr(), lam.device, lam.dtype)
        if not tracking:
            hit = self._patch_filters.get(shape)
            if hit is not None and hit[0] == key:
                return hit[1]
        out = self._compute_patch_filter(shape)
        if not tracking:
            self._patch_filters = {s: v for s, v in self._patch_filters.items() if v[0] == key}
            self._patch_filters[shape] = (key, out)
        return out

    def _compute_patch_filter(self, shape: tuple[int, int, int]) -> torch.Tensor:
        k = self.kernel
        sizes, radius = self.patch_grid(shape), self._patch_radius(shape)
        # lags -r..r of the big grid (negative lags wrap to its end) to the same lags of the patch grid
        src = [torch.arange(-r, r + 1, device=k.device) % (2 * n) for r, n in zip(radius, self.img_shape)]
        dst = [torch.arange(-r, r + 1, device=k.device) % g for r, g in zip(radius, sizes)]
        grid = torch.zeros(sizes, dtype=k.dtype, device=k.device)
        grid[dst[0][:, None, None], dst[1][None, :, None], dst[2][None, None, :]] = \
            k[src[0][:, None, None], src[1][None, :, None], src[2][None, None, :]]
        return torch.fft.fftn(grid) if self.complex_images else torch.fft.rfftn(grid)

    # ----------------------------------------------------------------- fitting (see unrolled3d.normal.fit)
    def exact_normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A x / scaling`` (``A^H A`` for complex images) with the wrapped physics (the fitting target)."""
        return _fit.exact_normal(self, x)

    def init_from_psf(self) -> "DiagCirculantWrapper":
        """``m = 1`` and ``lam`` from the point-spread function of ``A^T A / scaling`` at the centre."""
        return _fit.init_from_psf(self)

    def fit(self, n_iter: int = 200, batch_size: int = 1, lr: float = 1e-2,
            optimizer: Callable[..., torch.optim.Optimizer] | None = None, fit_mask: bool = True,
            n_probes: int | None = None, generator: torch.Generator | None = None, progress: bool = True
            ) -> list[float]:
        r"""Fit ``m`` and ``lam`` by minimising ``E_x ||A^T A x / scaling - H x||^2``, ``x ~ N(0, I)``.

        Each step draws ``batch_size`` fresh Gaussian probes (two projections each), so the
        stochastic objective is the Frobenius distance itself; ``n_probes`` instead fixes a bank
        of probes computed once (cheaper per step, but the fit may then overfit the bank: the
        filter has 8x more unknowns than a volume). Starts from :meth:`init_from_psf` unless
        parameters were set. The learning rate decays with a cosine schedule.

        Parameters
        ----------
        n_iter : int
            Optimiser steps.
        batch_size : int
            Probes per step.
        lr : float
            Initial learning rate (Adam by default).
        optimizer : callable, optional
            ``optimizer(params, lr=...) -> torch.optim.Optimizer``.
        fit_mask : bool
            Learn ``m`` (``False``: the best unmasked circulant, ``m = 1``).
        n_probes : int, optional
            Size of a fixed probe bank (default: fresh probes every step).
        generator : torch.Generator, optional
            Source of the probes (default: seeded with 0).
        progress : bool
            Show a progress bar with the current error.

        Returns
        -------
        list of float
            Relative error ``||A^T A x - H x|| / ||A^T A x||`` of each step's batch.
        """
        return _fit.fit(self, n_iter, batch_size, lr, optimizer, fit_mask, n_probes, generator, progress)

    def relative_error(self, n_probes: int = 2, generator: torch.Generator | None = None) -> float:
        """``||A^T A x / scaling - H x|| / ||A^T A x / scaling||`` on fresh Gaussian probes."""
        return _fit.relative_error(self, n_probes, generator)

    # ----------------------------------------------------------------- persistence
    def _geometry_fingerprint(self) -> str | None:
        """The acquisition's fingerprint (CT geometry; MRI mask and coil maps), or ``None`` for a
        physics that does not offer one (:class:`unrolled3d.protocols.Fingerprinted`)."""
        return self.physics.fingerprint() if isinstance(self.physics, Fingerprinted) else None

    def save(self, path: str | os.PathLike, force: bool = False) -> None:
        """Write ``m``, ``lam`` and the geometry they belong to (atomically and durably).

        Non-finite parameters (a diverged fit) are refused with a ``ValueError``; ``force``
        replaces a read-only file.
        """
        mask, lam = self._params()
        if not (bool(torch.isfinite(mask).all()) and bool(torch.isfinite(lam).all())):
            raise ValueError("the operator's parameters contain NaN or infinite values (a diverged fit? lower the "
                             "learning rate): not saved")
        state = {
            "format": "unrolled3d.DiagCirculant/1",
            "spatial_mask": mask.detach().cpu(),
            "fourier_filter": lam.detach().cpu(),
            "img_shape": list(self.img_shape),
            "scaling": self.scaling,
            "variant": self.variant,
            "complex_images": self.complex_images,
            "kernel_radius": None if self.kernel_radius is None else list(self.kernel_radius),
            "geometry_fingerprint": self._geometry_fingerprint(),
        }
        with atomic_path(path, replace_read_only=force) as tmp:
            torch.save(state, tmp)

    def load(self, path: str | os.PathLike) -> "DiagCirculantWrapper":
        """Load parameters saved by :meth:`save`; refuse those of another geometry or size."""
        return self._load_state(_read_state(path), path)

    @classmethod
    def from_file(cls, path: str | os.PathLike, physics: LinearPhysics,
                  device: torch.device | str = "cpu") -> "DiagCirculantWrapper":
        """The wrapper saved in ``path`` (size, variant, scaling, image kind and kernel radius as
        saved) around ``physics``, which must be the acquisition it was fitted for."""
        state = _read_state(path)
        radius = state.get("kernel_radius")
        try:
            wrapper = cls(physics, tuple(state["img_shape"]), scaling=float(state["scaling"]), device=device,
                          variant=state["variant"], dtype=state["spatial_mask"].dtype,
                          complex_images=bool(state.get("complex_images", False)),
                          kernel_radius=None if radius is None else tuple(radius))
        except (TypeError, ValueError) as exc:
            if not isinstance(physics, LinearPhysics):
                raise
            raise FileFormatError(path, f"invalid operator settings ({exc})") from None
        return wrapper._load_state(state, path)

    def _load_state(self, state: dict, path: str | os.PathLike) -> "DiagCirculantWrapper":
        if tuple(state["img_shape"]) != self.img_shape:
            raise FileFormatError(path, f"holds an operator for a volume of {tuple(state['img_shape'])}, "
                             f"this wrapper is {self.img_shape}")
        saved_complex = bool(state.get("complex_images", False))  # files from before complex images: real
        if saved_complex != self.complex_images:
            kinds = {True: "complex", False: "real"}
            raise FileFormatError(path, f"holds an operator for {kinds[saved_complex]} images, this wrapper is for "
                             f"{kinds[self.complex_images]} images")
        saved_radius = state.get("kernel_radius")
        if (None if saved_radius is None else tuple(saved_radius)) != self.kernel_radius:
            raise FileFormatError(path, f"holds an operator with kernel_radius {saved_radius}, this wrapper has "
                             f"{self.kernel_radius}")
        mine = self._geometry_fingerprint()
        if state.get("geometry_fingerprint") != mine:
            raise FileFormatError(path, f"was fitted for geometry {state.get('geometry_fingerprint')}, this physics has "
                             f"{mine}: refit the operator for this geometry")
        if state["variant"] != self.variant or float(state["scaling"]) != self.scaling:
            raise FileFormatError(path, f"is a {state['variant']!r} operator with scaling {state['scaling']}, this "
                             f"wrapper is {self.variant!r} with scaling {self.scaling}")
        try:
            return self.set_parameters(state["spatial_mask"], state["fourier_filter"])
        except (TypeError, ValueError) as exc:
            raise FileFormatError(path, str(exc)) from None


