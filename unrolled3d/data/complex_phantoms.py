r"""Complex-valued volumes for MRI: phantom magnitudes times a random smooth phase.

MR images are complex: the magnitude is the tissue signal, the phase varies slowly in space
(field inhomogeneity, coil and receiver phase). :class:`ComplexPhantomDataset` takes the
magnitude from a real phantom dataset (e.g. :class:`~unrolled3d.data.datasets.PhantomDataset`)
and multiplies it by ``exp(i phi)`` with :func:`smooth_phase`: a global phase plus a random
polynomial of low degree in the normalised coordinates. Items are ``float32`` ``(2, D, H, W)``
with channels (real, imaginary), the layout of :class:`unrolled3d.mri.MultiCoilMRI3D`.
"""
from __future__ import annotations

import itertools
import math
import numbers
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .._validation import int_triple

__all__ = ["smooth_phase", "ComplexPhantomDataset"]


def smooth_phase(shape: Sequence[int], generator: torch.Generator | None = None, max_phase: float = math.pi,
                 degree: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A random smooth phase map ``(D, H, W)`` in radians.

    ``phi = phi0 + a * p(z, y, x) / max|p|`` with ``phi0 ~ U(-pi, pi)``, ``p`` a polynomial with
    every monomial of degree ``1..degree`` in the coordinates normalised to ``[-1, 1]``
    (coefficients ``U(-1, 1)``), and ``a ~ U(max_phase / 2, max_phase)`` the spatial phase range.

    Parameters
    ----------
    shape
        ``(D, H, W)``.
    generator : torch.Generator
        CPU generator (default: a fresh unseeded one).
    max_phase : float
        largest ``|phi - phi0|`` (radians, ``>= 0``).
    degree : int
        polynomial degree (``>= 1``).
    """
    D, H, W = int_triple("shape", shape)
    if isinstance(max_phase, bool) or not isinstance(max_phase, numbers.Real) or not (0 <= max_phase < math.inf):
        raise ValueError(f"max_phase must be a finite real number >= 0, got {max_phase!r}")
    if isinstance(degree, bool) or not isinstance(degree, numbers.Integral) or degree < 1:
        raise ValueError(f"degree must be an integer >= 1, got {degree!r}")
    gen = generator if generator is not None else torch.Generator()
    f64 = torch.float64
    axes = [torch.linspace(-1.0, 1.0, n, dtype=f64) if n > 1 else torch.zeros(1, dtype=f64) for n in (D, H, W)]
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    poly = torch.zeros((D, H, W), dtype=f64)
    for powers in itertools.product(range(degree + 1), repeat=3):
        if 1 <= sum(powers) <= degree:
            c = 2 * float(torch.rand((), generator=gen, dtype=f64)) - 1
            poly = poly + c * z ** powers[0] * y ** powers[1] * x ** powers[2]
    u = torch.rand(2, generator=gen, dtype=f64)
    peak = float(poly.abs().max())
    amplitude = max_phase * (0.5 + 0.5 * float(u[1]))
    phi0 = math.pi * (2 * float(u[0]) - 1)
    phase = phi0 + (amplitude * poly / peak if peak > 0 else poly)
    return phase.to(dtype)


class IndexedVolumes(Protocol):
    """What :class:`ComplexPhantomDataset` reads its magnitudes from: a length and items by
    index (a map-style ``Dataset`` with ``__len__``, or a list of tensors)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Any: ...


class ComplexPhantomDataset(Dataset):
    r"""Complex volumes ``|x| exp(i phi)``: magnitudes of a real dataset, random smooth phases.

    Item ``i`` is deterministic: its phase uses a generator seeded by ``(seed, i)`` (numpy
    ``SeedSequence``), independent of the access order and of the magnitude dataset's seed.

    Parameters
    ----------
    magnitudes
        indexable real volumes ``(1, D, H, W)`` (e.g. ``PhantomDataset``).
    seed : int
        seed of the phases.
    max_phase : float
        spatial phase range, radians (see :func:`smooth_phase`).
    degree : int
        degree of the phase polynomial.

    Items: ``float32`` ``(2, D, H, W)``, channels (real, imaginary).

    Examples
    --------
    >>> from unrolled3d.data import ComplexPhantomDataset, PhantomDataset
    >>> volumes = ComplexPhantomDataset(PhantomDataset(2, 8), seed=0)
    >>> volumes[0].shape                    # real and imaginary channels
    torch.Size([2, 8, 8, 8])
    """

    def __init__(self, magnitudes: IndexedVolumes, seed: int = 0, max_phase: float = math.pi, degree: int = 2
                 ) -> None:
        if not hasattr(magnitudes, "__getitem__") or not hasattr(magnitudes, "__len__"):
            raise TypeError(f"magnitudes must be an indexable dataset with a length, got {type(magnitudes).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        smooth_phase((1, 1, 1), torch.Generator(), max_phase, degree)  # validates max_phase and degree
        self.magnitudes: IndexedVolumes = magnitudes
        self.seed: int = int(seed)
        self.max_phase: float = float(max_phase)
        self.degree: int = int(degree)

    def __len__(self) -> int:
        return len(self.magnitudes)

    def generator(self, i: int) -> torch.Generator:
        """The CPU generator of item ``i``'s phase."""
        state = np.random.SeedSequence([self.seed, int(i)]).generate_state(2, dtype=np.uint32)
        return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))

    def __getitem__(self, i: int) -> torch.Tensor:
        mag = self.magnitudes[i]
        if not isinstance(mag, torch.Tensor) or mag.ndim != 4 or mag.shape[0] != 1 or mag.is_complex():
            raise ValueError(f"magnitude items must be real (1, D, H, W) tensors, got "
                             f"{getattr(mag, 'shape', type(mag))}")
        phase = smooth_phase(tuple(mag.shape[1:]), self.generator(i if i >= 0 else i + len(self)),
                             self.max_phase, self.degree, dtype=torch.float64)
        mag = mag[0].double()
        return torch.stack([mag * phase.cos(), mag * phase.sin()]).float()
