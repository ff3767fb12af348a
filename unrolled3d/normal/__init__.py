"""The learned diagonal-circulant approximation ``A^T A ~ scaling * H`` of a normal operator.

* :mod:`.functional` - ``H`` as a function of ``(m, lam)`` for real and complex images;
* :mod:`.operator` - :class:`DiagCirculantNormal`: ``m`` and ``lam``, applied to a volume and
  restricted to patches (nothing else);
* :mod:`.patch` - :class:`DiagCirculantPatch`: ``H`` on one patch, in normal-equation form;
* :mod:`.fit` - fitting ``m`` and ``lam`` to the ``A^T A`` of a physics;
* :mod:`.files` - files of a fitted ``H`` (state dict plus metadata);
* :mod:`.layout` - the image layout and acquisition ``H`` reads from a physics;
* :mod:`.wrapper` - :class:`DiagCirculantWrapper`: the paper's API, an exact physics carrying ``H``.

``H`` reaches a reconstructor explicitly, ``rec(y, physics, normal=H)``, or carried by a wrapper,
``rec(y, DiagCirculantWrapper(...), fourier_filter=..., spatial_mask=...)`` (the paper's call).
"""
from .files import FILE_FORMAT, load_normal, load_parameters, read_normal_file, save_normal
from .fit import exact_normal, fit_normal, init_from_psf, relative_error
from .functional import VARIANTS, apply_diag_circulant, from_interleaved, smooth_size, to_interleaved
from .layout import acquisition_of
from .operator import DiagCirculantNormal
from .patch import DiagCirculantPatch
from .wrapper import DiagCirculantWrapper

__all__ = [
    "DiagCirculantNormal", "DiagCirculantPatch", "DiagCirculantWrapper", "apply_diag_circulant", "VARIANTS",
    "to_interleaved", "from_interleaved", "smooth_size", "fit_normal", "init_from_psf", "relative_error",
    "exact_normal", "save_normal", "load_normal", "load_parameters", "read_normal_file", "FILE_FORMAT",
    "acquisition_of",
]
