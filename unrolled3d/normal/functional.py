r"""The diagonal-circulant operator ``H`` as a function of its parameters, for real and complex images.

``H = diag(m) F^-1 diag(lam) F diag(m)`` ("sandwich", the paper's default), the one-sided
``diag(m) F^-1 diag(lam) F``, or the symmetrised ``(H + H^*) / 2`` of the one-sided form. ``m``
is a real spatial mask ``(D, H, W)``; ``lam`` the spectrum of a convolution kernel on an FFT grid
``G`` at least the image size (by default the doubled grid ``2 s``, on which the convolution of
the image is linear: no wrap-around):

* real images ``(B, C, D, H, W)`` (CT): a real kernel, ``lam`` its rFFT half-spectrum
  ``(G0, G1, G2 // 2 + 1)``; each channel is filtered independently;
* complex images ``(B, 2, D, H, W)`` (MRI; real, imaginary channels): a complex kernel, ``lam``
  its full FFT ``(G0, G1, G2)``, and ``H`` acts on ``re + i im`` as one complex image (``H`` is
  C-linear, like ``A^H A = sum_c S_c^* F^-1 M F S_c``). ``H`` is self-adjoint for the real inner
  product ``Re <a, b>`` when ``lam`` is real (a Hermitian kernel); the ``"symmetric"`` variant is
  self-adjoint for any ``lam``.

The passes around the FFTs are the public fused ops of :mod:`unrolled3d.ops` (:func:`~unrolled3d.ops.masked_gather`
into the padded buffer, :func:`~unrolled3d.ops.spectral_filter` with the scaling,
:func:`~unrolled3d.ops.masked_scatter_add` for the masked crop). Being the public functions, not
the raw registered ops, they carry the ops' ``torch.func`` rules: ``grad``, ``vmap``, ``jvp``,
``jacrev``/``jacfwd`` run through ``H`` like through any PyTorch function, and under
``torch.compile`` they trace to the registered ops. Complex images go through
the same real ops on *interleaved* views: a complex volume viewed as real is ``(B, 1, D, H, 2W)``
(``re, im`` adjacent along ``W``), and a zero-padded complex buffer viewed the same way is
``(G0, G1, 2 G2)`` real with the data in its first ``(D, H, 2W)`` corner. So the gather and the
crop are the real fused ops with the mask repeated on ``re, im`` -- no planar conversion of the
8x larger padded buffer. Only a planar input (e.g. a network's output) is copied once to
interleaved storage.

:func:`apply_diag_circulant` validates its arguments; :func:`diag_circulant` is the same
computation for callers that have validated them already (the operators of
:mod:`unrolled3d.normal`), so that an unrolled iteration checks its input once.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .._validation import check_tensor, int_tuple
from ..ops import masked_gather, masked_scatter_add, spectral_filter

__all__ = [
    "VARIANTS", "apply_diag_circulant", "diag_circulant", "check_image", "to_interleaved", "from_interleaved",
    "smooth_size",
]

#: the forms of ``H`` (see the module docstring)
VARIANTS = ("sandwich", "one_sided", "symmetric")

_DIMS = (-3, -2, -1)
_ORIGIN = [0, 0, 0]


def smooth_size(n: int) -> int:
    """Smallest integer ``>= n`` whose prime factors are 2, 3 and 5 (a fast FFT size).

    Examples
    --------
    >>> from unrolled3d.normal import smooth_size
    >>> smooth_size(49), smooth_size(64)
    (50, 64)
    """
    while True:
        m = n
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        if m == 1:
            return n
        n += 1


def to_interleaved(x: torch.Tensor) -> torch.Tensor:
    """Real ``(B, 2, D, H, W)`` (real, imaginary channels) -> real ``(B, 1, D, H, 2W)`` whose last
    axis interleaves ``re, im`` (a view when the channel stride is already 1, else one copy).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.normal import to_interleaved
    >>> x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 1, 1, 2)   # re = (1, 2), im = (3, 4)
    >>> to_interleaved(x).flatten().tolist()
    [1.0, 3.0, 2.0, 4.0]
    """
    t = x.movedim(1, -1)
    if t.stride(-1) != 1 or any(s % 2 for s in t.stride()[:-1]) or t.storage_offset() % 2:
        t = t.contiguous()
    return torch.view_as_real(torch.view_as_complex(t)).flatten(-2).unsqueeze(1)


def from_interleaved(v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_interleaved`: real ``(B, 1, D, H, 2W)`` -> real view ``(B, 2, D, H, W)``.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.normal import from_interleaved, to_interleaved
    >>> x = torch.randn(2, 2, 3, 4, 5)
    >>> torch.equal(from_interleaved(to_interleaved(x)), x)
    True
    """
    return v[:, 0].unflatten(-1, (v.shape[-1] // 2, 2)).movedim(-1, 1)


def _gather(x: torch.Tensor, shape: Sequence[int], pad: Sequence[int], mask: torch.Tensor | None) -> torch.Tensor:
    return masked_gather(x, _ORIGIN, shape, pad, mask)


def _crop(like: torch.Tensor, buf: torch.Tensor, shape: Sequence[int], mask: torch.Tensor | None) -> torch.Tensor:
    out, _ = masked_scatter_add(like.new_zeros(like.shape), buf, _ORIGIN, shape, mask)
    return out


def _real(x: torch.Tensor, mask: torch.Tensor, lam: torch.Tensor, variant: str, scale: float,
          pad: tuple[int, int, int]) -> torch.Tensor:
    shape = tuple(x.shape[-3:])

    def conv(buf: torch.Tensor, conj: bool = False) -> torch.Tensor:
        filt = lam.conj() if conj and lam.is_complex() else lam
        spec = spectral_filter(torch.fft.rfftn(buf, dim=_DIMS), filt, scale)
        return torch.fft.irfftn(spec, s=pad, dim=_DIMS)

    if variant == "sandwich":
        return _crop(x, conv(_gather(x, shape, pad, mask)), shape, mask)
    one_sided = _crop(x, conv(_gather(x, shape, pad, None)), shape, mask)
    if variant == "one_sided":
        return one_sided
    adjoint = _crop(x, conv(_gather(x, shape, pad, mask), conj=True), shape, None)
    return 0.5 * (one_sided + adjoint)


def _complex(x: torch.Tensor, mask: torch.Tensor, lam: torch.Tensor, variant: str, scale: float,
             pad: tuple[int, int, int]) -> torch.Tensor:
    D, H, W = (int(s) for s in x.shape[-3:])
    G0, G1, G2 = pad
    v = to_interleaved(x)                       # (B, 1, D, H, 2W)
    m2 = mask.repeat_interleave(2, dim=-1)      # the same real weight on re and im: (D, H, 2W)
    shape, rpad = (D, H, 2 * W), (G0, G1, 2 * G2)

    def conv(masked_input: bool, conj: bool = False) -> torch.Tensor:
        # each padded buffer is dropped as soon as the next is made: without autograd at most two
        # (G0, G1, G2) complex buffers are alive, not the gather, spectrum, filtered spectrum and
        # inverse at once
        filt = lam.conj() if conj and lam.is_complex() else lam
        buf = _gather(v, shape, rpad, m2 if masked_input else None)               # (B, 1, G0, G1, 2 G2)
        spec = torch.fft.fftn(torch.view_as_complex(buf.unflatten(-1, (G2, 2))), dim=_DIMS)
        spec = spectral_filter(spec, filt, scale)
        return torch.view_as_real(torch.fft.ifftn(spec, dim=_DIMS)).flatten(-2)  # (B, 1, G0, G1, 2 G2)

    if variant == "sandwich":
        res = _crop(v, conv(True), shape, m2)
    else:
        res = _crop(v, conv(False), shape, m2)
        if variant == "symmetric":
            res = 0.5 * (res + _crop(v, conv(True, conj=True), shape, None))
    return from_interleaved(res)


def check_image(x: torch.Tensor, mask: torch.Tensor, complex_images: bool) -> None:
    """``x`` is a batch ``[B, C, *mask.shape]`` of ``mask``'s dtype and device (``C = 2`` for complex
    images): the checks of an operator applying ``H`` with the mask ``mask``.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.normal.functional import check_image
    >>> check_image(torch.zeros(1, 1, 2, 2, 3), torch.ones(2, 2, 2), False)
    Traceback (most recent call last):
        ...
    ValueError: x has spatial shape (2, 2, 3), this operator acts on (2, 2, 2)
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 5:
        raise ValueError(f"x must be a 5-D tensor [B, C, D, H, W], got {getattr(x, 'shape', type(x))}")
    if tuple(x.shape[-3:]) != tuple(mask.shape):
        raise ValueError(f"x has spatial shape {tuple(x.shape[-3:])}, this operator acts on {tuple(mask.shape)}")
    if x.dtype != mask.dtype or x.device != mask.device:
        raise TypeError(f"x is {x.dtype} on {x.device}, the operator is {mask.dtype} on {mask.device}")
    if complex_images and x.shape[1] != 2:
        raise ValueError(f"this operator acts on complex images [B, 2, D, H, W] (real, imaginary channels), "
                         f"got {x.shape[1]} channels (shape {tuple(x.shape)})")


def diag_circulant(x: torch.Tensor, mask: torch.Tensor, lam: torch.Tensor, variant: str, scale: float,
                   complex_images: bool, grid: Sequence[int]) -> torch.Tensor:
    """``scale * H x`` without argument checks (see :func:`apply_diag_circulant`)."""
    pad = (int(grid[0]), int(grid[1]), int(grid[2]))
    return (_complex if complex_images else _real)(x, mask, lam, variant, float(scale), pad)


def apply_diag_circulant(
    x: torch.Tensor, mask: torch.Tensor, lam: torch.Tensor, variant: str = "sandwich", scale: float = 1.0,
    complex_images: bool = False, grid: Sequence[int] | None = None,
) -> torch.Tensor:
    """Apply ``scale * H`` to a batch of images.

    Parameters
    ----------
    x : torch.Tensor
        Real images ``(B, C, D, H, W)`` (``complex_images=False``), or complex images
        ``(B, 2, D, H, W)`` with real and imaginary channels; float32/float64.
    mask : torch.Tensor
        Real spatial mask ``m`` ``(D, H, W)``, ``x``'s dtype and device.
    lam : torch.Tensor
        The kernel's spectrum on the grid ``G``: rFFT ``(G0, G1, G2 // 2 + 1)`` for real images,
        full FFT ``(G0, G1, G2)`` for complex ones (lag 0 at index 0); real or complex.
    variant : {"sandwich", "one_sided", "symmetric"}
        The form of ``H`` (module docstring).
    scale : float
        Real factor.
    complex_images : bool
        See ``x``.
    grid : sequence of 3 int, optional
        ``G``, each ``>=`` the image size; default the doubled grid ``2 (D, H, W)``. A smaller one
        is exact for a kernel of lags ``|l| <= r`` when ``G >= s + r``.

    Returns
    -------
    torch.Tensor
        ``scale * H x``, shaped like ``x``. Differentiable w.r.t. ``x``, ``mask`` and ``lam``.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.normal import apply_diag_circulant
    >>> x = torch.randn(1, 1, 4, 4, 4)
    >>> lam = torch.ones(8, 8, 5)                  # rFFT of a unit impulse: H = diag(m)^2
    >>> torch.allclose(apply_diag_circulant(x, torch.full((4, 4, 4), 2.0), lam), 4 * x, atol=1e-6)
    True
    """
    check_tensor(x, "x", 5)
    shape = tuple(x.shape[-3:])
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape:
        raise ValueError(f"mask must be a tensor of the image shape {shape}, got {getattr(mask, 'shape', mask)!r}")
    if mask.dtype != x.dtype or mask.device != x.device:
        raise TypeError(f"mask is {mask.dtype} on {mask.device}, x is {x.dtype} on {x.device}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    pad = tuple(2 * s for s in shape) if grid is None else int_tuple("grid", grid, 3)
    if any(g < s for g, s in zip(pad, shape)):
        raise ValueError(f"grid must be 3 sizes >= the image shape {shape}, got {grid}")
    if complex_images and x.shape[1] != 2:
        raise ValueError(f"complex images are (B, 2, D, H, W) (real, imaginary channels), got {tuple(x.shape)}")
    want = (pad[0], pad[1], pad[2] if complex_images else pad[2] // 2 + 1)
    if not isinstance(lam, torch.Tensor) or tuple(lam.shape) != want:
        raise ValueError(f"lam must be a tensor of shape {want} ({'full FFT' if complex_images else 'rFFT'} of the "
                         f"grid {pad}), got {getattr(lam, 'shape', lam)!r}")
    if lam.real.dtype != x.dtype or lam.device != x.device:
        raise TypeError(f"lam must be {x.dtype} (or its complex type) on {x.device}, got {lam.dtype} on {lam.device}")
    return diag_circulant(x, mask, lam, variant, scale, complex_images, pad)
