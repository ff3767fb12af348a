r"""The diagonal-circulant ``H`` on complex images (MRI): ``H z = m * (k (*) (m * z))``.

``z`` is a complex volume stored as two real channels ``(B, 2, D, H, W)`` (real, imaginary: the
layout of :class:`unrolled3d.mri.MultiCoilMRI3D`), ``m`` a real spatial mask ``(D, H, W)`` and
``k`` a *complex* kernel on the doubled grid ``(2D, 2H, 2W)`` whose full FFT is ``lam``. The
convolution is complex (``H`` is C-linear, like ``A^H A = sum_c S_c^* F^-1 M F S_c``), not two
real channels filtered independently by one real kernel. ``H`` is self-adjoint for the real
inner product ``Re <a, b>`` (equivalently, Hermitian) when ``lam`` is real, i.e. when ``k`` is
Hermitian-symmetric ``k(-l) = conj(k(l))``; the ``"symmetric"`` variant is self-adjoint for any
``lam``.

Why interleaved views: the fused ops of :mod:`unrolled3d.ops.fused` work on real
``(B, C, D, H, W)`` tensors. A complex volume in interleaved storage viewed as real is
``(B, 1, D, H, 2W)`` (``re, im`` adjacent along ``W``), and a zero-padded complex buffer
``(2D, 2H, 2W)`` viewed the same way is ``(2D, 2H, 4W)`` real with the data in its first
``(D, H, 2W)`` corner. So the masked gather into the padded buffer and the masked crop are the
real fused ops applied to these views with the mask repeated on ``re, im`` -- no planar
conversion of the 8x larger padded buffer, and the spectral filter is the fused complex multiply
on the full spectrum. Only a planar input (e.g. a network's output) is copied once to
interleaved storage.
"""
from __future__ import annotations

import torch

from .ops.fused import masked_gather, masked_scatter_add, spectral_filter

__all__ = ["apply_diag_circulant_complex", "to_interleaved", "from_interleaved"]

_DIMS = (-3, -2, -1)


def to_interleaved(x: torch.Tensor) -> torch.Tensor:
    """Real ``(B, 2, D, H, W)`` (real, imaginary channels) -> real ``(B, 1, D, H, 2W)`` whose
    last axis interleaves ``re, im`` (a view when the channel stride is already 1, else one copy)."""
    t = x.movedim(1, -1)
    if t.stride(-1) != 1 or any(s % 2 for s in t.stride()[:-1]) or t.storage_offset() % 2:
        t = t.contiguous()
    return torch.view_as_real(torch.view_as_complex(t)).flatten(-2).unsqueeze(1)


def from_interleaved(v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_interleaved`: real ``(B, 1, D, H, 2W)`` -> real view ``(B, 2, D, H, W)``."""
    return v[:, 0].unflatten(-1, (v.shape[-1] // 2, 2)).movedim(-1, 1)


def _interleave_mask(m: torch.Tensor) -> torch.Tensor:
    """``(D, H, W)`` -> ``(D, H, 2W)``: the same real weight on ``re`` and ``im``."""
    return m.repeat_interleave(2, dim=-1)


def apply_diag_circulant_complex(x: torch.Tensor, mask: torch.Tensor, lam: torch.Tensor,
                                 variant: str = "sandwich", scale: float = 1.0,
                                 grid: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Apply ``scale * H`` to complex images.

    Parameters
    ----------
    x : torch.Tensor
        Real ``(B, 2, D, H, W)``, channels (real, imaginary).
    mask : torch.Tensor
        Real ``(D, H, W)``, same dtype as ``x``.
    lam : torch.Tensor
        Complex full spectrum ``grid`` (``torch.fft.fftn`` of the kernel on the zero-padded grid,
        lag 0 at index 0), or real (a Hermitian kernel).
    variant : str
        ``"sandwich"`` (``m F^-1 lam F m``), ``"one_sided"`` (``m F^-1 lam F``) or
        ``"symmetric"`` (``(H + H^*) / 2`` of the one-sided form).
    scale : float
        Real factor.
    grid : tuple of int, optional
        FFT grid ``(G0, G1, G2)``, each ``>=`` the image size; default the doubled grid.

    Returns
    -------
    torch.Tensor
        Real ``(B, 2, D, H, W)`` (a view with channel stride 1 of interleaved storage).
    """
    D, H, W = (int(s) for s in x.shape[-3:])
    v = to_interleaved(x)                       # (B, 1, D, H, 2W)
    m2 = _interleave_mask(mask)                 # (D, H, 2W)
    G0, G1, G2 = grid if grid is not None else (2 * D, 2 * H, 2 * W)
    shape, pad = (D, H, 2 * W), (G0, G1, 2 * G2)

    def gather(masked: bool) -> torch.Tensor:
        buf = masked_gather(v, (0, 0, 0), shape, pad, m2 if masked else None)  # (B, 1, G0, G1, 2 G2)
        return torch.view_as_complex(buf.unflatten(-1, (G2, 2)))                # (B, 1, G0, G1, G2)

    def conv(masked_input: bool, conj: bool = False) -> torch.Tensor:
        # each padded buffer is dropped as soon as the next is made: without autograd at most two
        # (2D, 2H, 2W) complex buffers are alive, instead of the gather, spectrum, filtered
        # spectrum and inverse at once
        filt = lam.conj() if conj and lam.is_complex() else lam
        spec = torch.fft.fftn(gather(masked_input), dim=_DIMS)
        spec = spectral_filter(spec, filt, scale)
        return torch.view_as_real(torch.fft.ifftn(spec, dim=_DIMS)).flatten(-2)  # (B, 1, G0, G1, 2 G2)

    def crop(buf: torch.Tensor, masked: bool) -> torch.Tensor:
        out, _ = masked_scatter_add(v.new_zeros(v.shape), buf, (0, 0, 0), shape, mask=m2 if masked else None)
        return out

    if variant == "sandwich":
        res = crop(conv(True), True)
    else:
        res = crop(conv(False), True)
        if variant == "symmetric":
            res = 0.5 * (res + crop(conv(True, conj=True), False))
    return from_interleaved(res)
