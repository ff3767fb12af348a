r"""``DiagCirculantNormal``: the learned approximation ``A^T A ~ scaling * H(m, lam)``, nothing else.

A module holding the spatial mask ``m`` (``spatial_mask``) and the kernel's spectrum ``lam``
(``fourier_filter``) with the settings that define ``H`` (image layout, variant, scaling, kernel
radius). It does two things: :meth:`~DiagCirculantNormal.apply` ``scaling * H`` to a volume, and
:meth:`~DiagCirculantNormal.restrict` it to a patch. It knows no physics: fitting it to an
operator is :mod:`unrolled3d.normal.fit`, its files are :mod:`unrolled3d.normal.files`, and the
deepinv physics that carries it for the paper's API is :class:`unrolled3d.normal.DiagCirculantWrapper`.

Restriction to a patch: ``m`` is cropped to the patch and the kernel to the lags a patch can see,
``|lag| <= patch - 1`` on each axis, then transformed on the patch's own grid (``2 * patch``, or
smaller with a ``kernel_radius``; rFFT, or full FFT for complex images). Two voxels of a patch are
never further apart than that, so the patch operator equals ``S H S^T`` exactly (tested), at the
cost of FFTs on the patch grid instead of the volume grid.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, overload

import torch

from .._validation import check_finite, check_patch, real
from .functional import VARIANTS, check_image, diag_circulant, smooth_size
from .layout import check_kernel_radius, image_layout
from .patch import DiagCirculantPatch

__all__ = ["DiagCirculantNormal"]


class DiagCirculantNormal(torch.nn.Module):
    r"""``scaling * H(m, lam)``, the diagonal-circulant approximation of a normal operator ``A^T A``.

    Parameters
    ----------
    img_size : tuple
        Volume shape ``(D, H, W)``, or ``(C, D, H, W)`` with ``C = 1`` (real images) or ``C = 2``
        (complex images).
    scaling : float
        ``H`` approximates ``A^T A / scaling``: pass ``||A||^2`` if ``A`` is not normalised, so
        that ``m`` and ``lam`` are of order one.
    variant : str
        ``"sandwich"`` (``m F^-1 lam F m``), ``"one_sided"`` (``m F^-1 lam F``) or ``"symmetric"``
        (``(H + H^*) / 2`` of the one-sided form).
    complex_images : bool, optional
        ``True``: images are complex ``(B, 2, D, H, W)`` (real, imaginary channels) and ``H`` a
        complex convolution (full-FFT ``lam`` of shape ``(2D, 2H, 2W)``). ``False``: real images
        ``(B, C, D, H, W)``, real kernel, rFFT ``lam`` ``(2D, 2H, W + 1)``. ``None`` (default):
        complex when ``img_size`` has 2 channels (:meth:`for_physics` reads it from a physics).
    kernel_radius : int or tuple of 3 int, optional
        ``None`` (default): the kernel may use every lag of the doubled grid. Otherwise the kernel
        is restricted to lags ``|l_i| <= r_i``, in the fit and in use, so a patch of size ``p`` is
        filtered on a grid of about ``p + min(r, p - 1)`` per axis instead of ``2p`` (the paper's
        "restricting the size of the underlying convolution kernel"). Worth it only where the
        normal operator's point-spread function is compact (see ``docs/partitioning.md``).
    dtype : torch.dtype
        Real dtype of ``m`` (``lam`` is the matching complex type): float32 or float64.
    device : torch.device or str
        Device of ``m`` and ``lam``.
    spatial_mask, fourier_filter : torch.Tensor, optional
        Parameters learned elsewhere (see :meth:`set_parameters`).

    Attributes
    ----------
    spatial_mask : torch.nn.Parameter
        ``m``, ``(D, H, W)``.
    fourier_filter : torch.nn.Parameter
        ``lam``, :attr:`filter_shape`.
    fitted : bool
        Whether the parameters were set (fitted, loaded or given).
    acquisition : str or None
        The fingerprint of the acquisition the parameters were fitted for (set by the fit and by
        loading a file; ``None`` when unknown), checked when a file is loaded for a physics.

    ``m`` and ``lam`` are parameters (``state_dict``, ``.to()``) that record no gradient by default:
    ``H`` is fitted to ``A^T A``, not trained with the network, and applying it then builds no
    autograd graph. ``requires_grad_()`` makes them trainable end to end.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.normal import DiagCirculantNormal
    >>> H = DiagCirculantNormal((4, 4, 4))
    >>> H.filter_shape
    (8, 8, 5)
    >>> _ = H.set_parameters(torch.full((4, 4, 4), 2.0), torch.ones(8, 8, 5))   # a unit impulse kernel
    >>> x = torch.randn(1, 1, 4, 4, 4)
    >>> torch.allclose(H.apply(x), 4 * x, atol=1e-6)                            # H = diag(m)^2
    True
    >>> H.restrict((0, 2, 2), (2, 2, 2)).A_adjoint_A(x[..., :2, 2:, 2:]).shape
    torch.Size([1, 1, 2, 2, 2])
    """

    def __init__(self, img_size: Sequence[int], scaling: float = 1.0, variant: str = "sandwich",
                 complex_images: bool | None = None, kernel_radius: int | Sequence[int] | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 spatial_mask: torch.Tensor | None = None, fourier_filter: torch.Tensor | None = None) -> None:
        super().__init__()
        shape, complex_images = image_layout(img_size, complex_images)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.img_shape = shape
        self.complex_images = complex_images
        self.scaling = real("scaling", scaling, positive=True)
        self.variant = variant
        self.kernel_radius = check_kernel_radius(kernel_radius, shape)
        self.dtype = dtype
        self.spatial_mask = torch.nn.Parameter(torch.ones(shape, dtype=dtype, device=device), requires_grad=False)
        # lam is learned in the Fourier domain, as in the paper: its entries are all of similar size
        # (for CT it behaves like 1/|frequency|), which suits Adam's per-coordinate steps; the
        # spatial kernel decays over decades and does not. Real images: the inverse rFFT keeps H
        # real. Complex images: the full spectrum of a complex kernel (H is C-linear, like A^H A).
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.fourier_filter = torch.nn.Parameter(torch.zeros(self.filter_shape, dtype=cdtype, device=device),
                                                 requires_grad=False)
        self.fitted = False
        self.acquisition: str | None = None
        # patch filters by patch shape: they do not depend on the patch position (see patch_filter)
        self._patch_filters: dict[tuple[int, int, int], tuple[tuple, torch.Tensor]] = {}
        if spatial_mask is not None or fourier_filter is not None:
            self.set_parameters(spatial_mask=spatial_mask, fourier_filter=fourier_filter)

    @classmethod
    def for_physics(cls, physics: Any, img_size: Sequence[int] | None = None, **kwargs: Any) -> "DiagCirculantNormal":
        """An (unfitted) ``H`` for the normal operator of ``physics``: the image layout read from it.

        ``img_size`` defaults to ``physics.img_size``; with 3 entries and no ``complex_images``,
        images are complex for an MRI physics (:func:`unrolled3d.normal.layout.is_complex_physics`).
        Other keywords as in the constructor.

        Examples
        --------
        >>> from unrolled3d.normal import DiagCirculantNormal
        >>> from unrolled3d.mri import MultiCoilMRI3D, birdcage_maps, variable_density_mask
        >>> mri = MultiCoilMRI3D(variable_density_mask((8, 8, 8), 4.0, (2, 2)), birdcage_maps(2, (8, 8, 8)))
        >>> H = DiagCirculantNormal.for_physics(mri, (8, 8, 8))
        >>> H.complex_images, H.filter_shape
        (True, (16, 16, 16))
        """
        if img_size is None:
            img_size = getattr(physics, "img_size", None)
            if img_size is None:
                raise ValueError(f"img_size is needed: {type(physics).__name__} does not declare its image size")
        if kwargs.get("complex_images") is None:
            kwargs["complex_images"] = image_layout(img_size, None, physics)[1]
        return cls(img_size, **kwargs)

    # ----------------------------------------------------------------- layout and parameters
    @property
    def channels(self) -> int:
        """Image channels ``H`` acts on: 2 for complex images, 1 for real ones."""
        return 2 if self.complex_images else 1

    @property
    def filter_shape(self) -> tuple[int, int, int]:
        """Shape of ``fourier_filter``: rFFT of the doubled grid, ``(2D, 2H, W + 1)`` (real
        images), or full FFT ``(2D, 2H, 2W)`` (complex images)."""
        D, H, W = self.img_shape
        return (2 * D, 2 * H, 2 * W if self.complex_images else W + 1)

    @property
    def grid(self) -> tuple[int, int, int]:
        """The FFT grid of the whole volume: the doubled grid ``2 (D, H, W)``."""
        D, H, W = self.img_shape
        return 2 * D, 2 * H, 2 * W

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.spatial_mask.device

    def set_parameters(self, spatial_mask: torch.Tensor | None = None,
                       fourier_filter: torch.Tensor | None = None) -> "DiagCirculantNormal":
        """Load ``m`` (``img_shape``) and/or ``lam`` (:attr:`filter_shape`, real or complex), in place."""
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

    def settings(self) -> dict[str, Any]:
        """The constructor's keywords that define this ``H`` besides its parameters (what a file
        records beside the state dict).

        Examples
        --------
        >>> from unrolled3d.normal import DiagCirculantNormal
        >>> DiagCirculantNormal((4, 4, 4), kernel_radius=2).settings()["kernel_radius"]
        (2, 2, 2)
        """
        return {"img_size": (self.channels, *self.img_shape), "scaling": self.scaling, "variant": self.variant,
                "complex_images": self.complex_images, "kernel_radius": self.kernel_radius, "dtype": self.dtype}

    def with_parameters(self, spatial_mask: torch.Tensor | None = None,
                        fourier_filter: torch.Tensor | None = None) -> "DiagCirculantNormal":
        """A new ``H`` of the same settings and device holding these parameters (those not given
        are copied from this one); this one is left unchanged."""
        out = DiagCirculantNormal(**self.settings(), device=self.device)
        out.acquisition = self.acquisition
        if self.fitted:
            out.set_parameters(self.spatial_mask, self.fourier_filter)
        return out.set_parameters(spatial_mask=spatial_mask, fourier_filter=fourier_filter)

    @property
    def kernel(self) -> torch.Tensor:
        """The convolution kernel of ``H`` on the doubled grid ``(2D, 2H, 2W)``, lag 0 at index 0
        (real for real images, complex for complex images), zero beyond ``kernel_radius``."""
        return self._kernel_of(self.fourier_filter)

    def _kernel_of(self, lam: torch.Tensor) -> torch.Tensor:
        k = torch.fft.ifftn(lam) if self.complex_images else torch.fft.irfftn(lam, s=self.grid)
        return k if self.kernel_radius is None else k * self._lag_window(k, self.kernel_radius)

    def _lag_window(self, like: torch.Tensor, radius: tuple[int, int, int]) -> torch.Tensor:
        """0/1 box over the doubled grid: 1 at lags ``|l_i| <= r_i`` (negative lags at the end)."""
        axes = []
        for n, r in zip(self.img_shape, radius):
            lag = torch.arange(2 * n, device=like.device)
            lag = torch.minimum(lag, 2 * n - lag)  # |lag| of each FFT index
            axes.append((lag <= r).to(like.real.dtype))
        return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]

    def effective_filter(self, lam: torch.Tensor | None = None) -> torch.Tensor:
        """``lam`` (default: :attr:`fourier_filter`) with its kernel cut to ``kernel_radius``
        (``lam`` itself without a radius): the spectrum ``H`` applies."""
        lam = self.fourier_filter if lam is None else lam
        if self.kernel_radius is None:
            return lam
        k = self._kernel_of(lam)
        return torch.fft.fftn(k) if self.complex_images else torch.fft.rfftn(k)

    @torch.no_grad()
    def make_self_adjoint(self) -> "DiagCirculantNormal":
        """Replace the sandwich ``H`` by ``(H + H^*) / 2`` in place: ``lam <- Re(lam)`` (the kernel's
        Hermitian part, ``(k(l) + conj(k(-l))) / 2``; for real images its even part).

        Only for ``variant="sandwich"`` (``"symmetric"`` is self-adjoint by construction).
        """
        if self.variant != "sandwich":
            raise ValueError(f"make_self_adjoint applies to the 'sandwich' variant, this operator is {self.variant!r}")
        self.require_fitted()
        self.fourier_filter.imag.zero_()
        return self

    def require_fitted(self) -> None:
        """Raise a ``RuntimeError`` if the parameters were never set."""
        if not self.fitted:
            raise RuntimeError("the diagonal-circulant H has no parameters yet: fit it (unrolled3d.normal.fit_normal "
                               "or DiagCirculantWrapper.fit()), load it or call set_parameters()")

    # ----------------------------------------------------------------- apply
    # H x is the public name of the operator's action, which shadows torch's Module.apply(fn); a parent
    # module's .apply(fn) calls it on every child with a function, which goes to Module.apply
    @overload
    def apply(self, x: torch.Tensor) -> torch.Tensor: ...

    @overload
    def apply(self, x: Callable[[torch.nn.Module], None]) -> "DiagCirculantNormal": ...

    def apply(self, x):
        """``scaling * H x`` for ``x`` of shape ``[B, C, D, H, W]`` (``C = 2`` for complex images).

        Differentiable in ``x`` (and in ``m``, ``lam`` when they require grad), also under
        ``torch.func`` (``grad``, ``vmap``, ``jvp``). Given a function instead of a tensor, it is
        :meth:`torch.nn.Module.apply` (what ``parent.apply(init_fn)`` calls on its children).
        """
        if callable(x):  # tensors are not callable: Module.apply(fn), reached from a parent module
            return super().apply(x)
        self.require_fitted()
        check_image(x, self.spatial_mask, self.complex_images)
        return diag_circulant(x, self.spatial_mask, self.effective_filter(), self.variant, self.scaling,
                              self.complex_images, self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`apply`."""
        return self.apply(x)

    # ----------------------------------------------------------------- patches
    def restrict(self, offset: Sequence[int], shape: Sequence[int]) -> DiagCirculantPatch:
        """``S H S^T`` on the patch ``[o0:o0+p0, o1:o1+p1, o2:o2+p2]``, in normal-equation form.

        ``m`` is cropped to the patch; the kernel is cropped to lags ``|l| <= p - 1`` (the only ones
        two voxels of the patch can see; ``|l| <= min(r, p - 1)`` with a ``kernel_radius``) and
        transformed on the patch's grid (:meth:`patch_grid`).
        """
        self.require_fitted()
        off, shape = check_patch(offset, shape, self.img_shape)
        return DiagCirculantPatch(self._mask_crop(off, shape), self.patch_filter(shape), self.scaling, self.variant,
                                  off, complex_images=self.complex_images, grid=self.patch_grid(shape))

    def _mask_crop(self, off: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
        return self.spatial_mask[off[0]:off[0] + shape[0], off[1]:off[1] + shape[1], off[2]:off[2] + shape[2]]

    def refresh(self, patches: Sequence[DiagCirculantPatch]) -> None:
        """Point patch operators made by :meth:`restrict` at the current parameters.

        A partitioned reconstruction builds its patch operators once and calls this at every
        reconstruction: the masks are cropped again (views: cheap) and the patch filter spectrum
        is recomputed only if ``lam`` changed (:meth:`patch_filter`), so parameters set in place,
        replaced or trained end to end reach every patch.
        """
        filters: dict[tuple[int, int, int], torch.Tensor] = {}
        for op in patches:
            d, h, w = op.mask.shape  # a patch's mask is (D, H, W)
            shape = (d, h, w)
            if shape not in filters:
                filters[shape] = self.patch_filter(shape)
            op.mask = self._mask_crop(op.offset, shape)
            op.lam = filters[shape]

    def patch_grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """FFT grid of a ``shape`` patch: ``2p`` per axis, or, with ``kernel_radius``, the smallest
        2-3-5-smooth size ``>= p + min(r, p - 1) + 1`` (no lag of the patch wraps onto another)."""
        gz, gy, gx = (smooth_size(p + r + 1) for p, r in zip(shape, self._patch_radius(shape)))
        return gz, gy, gx

    def _patch_radius(self, shape: Sequence[int]) -> list[int]:
        """Largest lag of the kernel a ``shape`` patch uses, per axis."""
        if self.kernel_radius is None:
            return [p - 1 for p in shape]
        return [min(r, p - 1) for p, r in zip(shape, self.kernel_radius)]

    def patch_filter(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """Spectrum of the kernel cropped to the lags of a ``shape`` patch, on its grid.

        The same for every patch of that shape (the convolution is shift-invariant; only ``m``
        depends on the position), so it is cached per shape while ``lam`` is unchanged (its
        version counter and storage) and no gradient to ``lam`` is being recorded: a partitioned
        sweep then pays the full-grid inverse FFT of the kernel once, not once per patch.
        """
        d, h, w = shape  # the cache's key: a tuple, also when given a list or a torch.Size
        shape = (d, h, w)
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

    def clear_cache(self) -> None:
        """Forget the cached patch filters (e.g. to time their computation)."""
        self._patch_filters = {}

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

    def __getstate__(self) -> dict:
        # the patch-filter cache holds tensors keyed by storage pointers: not part of the operator
        state = self.__dict__.copy()
        state["_patch_filters"] = {}
        return state

    def extra_repr(self) -> str:
        kind = "complex" if self.complex_images else "real"
        return (f"img_shape={self.img_shape}, {kind} images, variant={self.variant!r}, scaling={self.scaling:g}, "
                f"kernel_radius={self.kernel_radius}, fitted={self.fitted}")
