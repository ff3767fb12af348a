"""The image layout an approximation ``H`` acts on: the volume shape and whether images are complex.

``H`` acts on real images ``(B, C, D, H, W)`` (CT: a real kernel, rFFT spectrum) or on complex
images ``(B, 2, D, H, W)`` (MRI, real and imaginary channels: a complex kernel, full spectrum).
:func:`image_layout` reads the layout from an ``img_size`` (3 entries, or 4 with a leading channel
count 1 = real, 2 = complex), an explicit ``complex_images`` flag, and, where neither decides, from
the physics ``H`` approximates (:func:`is_complex_physics`). :func:`acquisition_of` names the
acquisition a fitted ``H`` belongs to.
"""
from __future__ import annotations

from typing import Any, Sequence

from deepinv.physics.mri import MRIMixin

from .._validation import int_tuple, int_triple
from ..protocols import Fingerprinted, ImageKind

__all__ = ["image_layout", "is_complex_physics", "check_kernel_radius", "acquisition_of"]


def is_complex_physics(physics: Any) -> bool:
    """Whether ``physics`` acts on complex images: it declares so
    (:class:`unrolled3d.protocols.ImageKind`, e.g. :class:`unrolled3d.mri.MultiCoilMRI3D` and its
    patches), or it is one of deepinv's MRI operators.

    Examples
    --------
    >>> from unrolled3d.normal.layout import is_complex_physics
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> is_complex_physics(ConeBeamCT(standard_cone_beam(8, 4)))
    False
    """
    return isinstance(physics, MRIMixin) or (isinstance(physics, ImageKind) and bool(physics.complex_images))


def image_layout(img_size: Sequence[int], complex_images: bool | None = None, physics: Any = None
                 ) -> tuple[tuple[int, int, int], bool]:
    """``((D, H, W), complex_images)`` from an image size, a flag and (optionally) a physics.

    Parameters
    ----------
    img_size : sequence of int
        ``(D, H, W)``, or ``(C, D, H, W)`` with ``C = 1`` (real images) or ``C = 2`` (complex).
    complex_images : bool, optional
        Explicit choice; must agree with a 4-entry ``img_size``.
    physics : deepinv.physics.LinearPhysics, optional
        Decides for a 3-entry ``img_size`` without a flag (:func:`is_complex_physics`); without a
        physics such images are real.

    Returns
    -------
    tuple
        ``((D, H, W), complex_images)``.

    Examples
    --------
    >>> from unrolled3d.normal.layout import image_layout
    >>> image_layout((2, 8, 8, 4))
    ((8, 8, 4), True)
    >>> image_layout((8, 8, 4))
    ((8, 8, 4), False)
    """
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
        if channels is not None:
            complex_images = channels == 2
        else:
            complex_images = physics is not None and is_complex_physics(physics)
    return shape, complex_images


def check_kernel_radius(radius: Any, shape: Sequence[int]) -> tuple[int, int, int] | None:
    """The kernel radius ``(r0, r1, r2)`` of a volume of ``shape``, or ``None`` for every lag.

    Lags beyond ``n - 1`` never meet two voxels of the volume, so the radius is capped there and a
    radius covering every lag is spelled ``None`` (one spelling for "no radius").

    Examples
    --------
    >>> from unrolled3d.normal.layout import check_kernel_radius
    >>> check_kernel_radius(3, (8, 8, 8)), check_kernel_radius((7, 9, 100), (8, 8, 8))
    ((3, 3, 3), None)
    """
    if radius is None:
        return None
    given = int_tuple("kernel_radius", radius, 3, minimum=0, allow_scalar=True)
    rz, ry, rx = (min(v, n - 1) for v, n in zip(given, shape))
    r = (rz, ry, rx)
    return None if r == tuple(n - 1 for n in shape) else r


def acquisition_of(physics: Any) -> str | None:
    """The acquisition's fingerprint (CT geometry; MRI mask and coil maps), or ``None`` for a
    physics that does not offer one (:class:`unrolled3d.protocols.Fingerprinted`).

    Examples
    --------
    >>> from unrolled3d.normal.layout import acquisition_of
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> len(acquisition_of(ConeBeamCT(standard_cone_beam(8, 4)))) > 0
    True
    """
    return physics.fingerprint() if isinstance(physics, Fingerprinted) else None
