"""The learned diagonal-circulant approximation ``A^T A ~ scaling * H`` of a normal operator.

* :mod:`.functional` - ``H`` as a function of ``(m, lam)`` for real and complex images;
* :mod:`.patch` - the operators that apply it (the shared base and the patch operator);
* :mod:`.wrapper` - :class:`DiagCirculantWrapper`: parameters, restriction, files;
* :mod:`.fit` - fitting ``m`` and ``lam`` to ``A^T A``.
"""
from .functional import VARIANTS, apply_diag_circulant, from_interleaved, smooth_size, to_interleaved
from .patch import DiagCirculantOperator, DiagCirculantPatch
from .wrapper import DiagCirculantWrapper

__all__ = [
    "DiagCirculantWrapper", "DiagCirculantPatch", "DiagCirculantOperator", "apply_diag_circulant", "VARIANTS",
    "to_interleaved", "from_interleaved", "smooth_size",
]
