"""Fused Triton kernels of unrolled3d (installed as ``unrolled3d.kernels``).

Each module holds private ``@triton.jit`` kernels, plain launchers
(``<op>_forward`` / ``<op>_backward``) and pure-PyTorch reference twins
(``<op>_ref`` / ``<op>_backward_ref``) with identical semantics:

* :mod:`.masked_gather`      - patch gather * mask into a zero-padded FFT buffer
* :mod:`.spectral_filter`    - ``spec * lam * scale`` on an FFT spectrum
* :mod:`.masked_scatter_add` - crop * mask * window scatter-add (+ weight map)

Each module is named after its op, as are its ops in :mod:`unrolled3d.ops`, its tests
(``tests/test_<op>.py``) and its benchmarks. :mod:`._common` holds the launch helpers and the
``@triton.jit`` tile helpers they share. The kernels are leaves: they import nothing from the
rest of unrolled3d, and trust their arguments. The autograd-aware,
``torch.library``-registered ops that validate those arguments live in :mod:`unrolled3d.ops`;
use those unless you need a raw launcher.

Triton decides at *decoration* time (i.e. when these modules are imported)
whether kernels are compiled for a GPU or run by the CPU interpreter
(``TRITON_INTERPRET=1``). :data:`INTERPRETED` records which one happened.
"""

from . import masked_gather, masked_scatter_add, spectral_filter
from ._common import is_interpreted

#: True if the kernels were built for the Triton CPU interpreter (TRITON_INTERPRET=1
#: was set before this package was imported).
INTERPRETED: bool = is_interpreted(masked_gather._masked_gather_forward_kernel)

__all__ = ["masked_gather", "masked_scatter_add", "spectral_filter", "INTERPRETED", "is_interpreted"]
