r"""Sampling masks that change from scan to scan: a bank of masks of spread accelerations.

A network trained on one mask learns that mask's aliasing; users scan with others. A
:class:`MaskBank` holds ``count`` masks whose accelerations are spread evenly over a range
(``R_j = low + (high - low) (j + 1/2) / count``, so every part of the range is seen), each drawn
with its own seed (:func:`~unrolled3d.mri.variable_density_mask`). Item ``i`` of a training set
takes mask :meth:`MaskBank.index` ``(i)``, a function of ``(seed, i)`` alone: the same item has
the same mask in every run and after a resumption. Masks are made on first use and kept.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .._validation import choice, int_triple, integer, real_tuple
from .sampling import KINDS, variable_density_mask

__all__ = ["MaskBank"]


class MaskBank:
    """``count`` masks ``(D, H, W)`` of accelerations spread over ``acceleration = (low, high)``.

    Parameters
    ----------
    shape : (int, int, int)
        ``(D, H, W)``; the phase-encode plane is ``(D, H)``.
    acceleration : (float, float)
        the range of ``R`` (both ``>= 1``; equal ends: one acceleration).
    count : int
        masks in the bank.
    kind : str
        ``"poisson"`` or ``"random"`` (:func:`~unrolled3d.mri.variable_density_mask`).
    seed : int
        seed of the masks and of the item-to-mask draw.

    Examples
    --------
    >>> from unrolled3d.mri import MaskBank, acceleration
    >>> bank = MaskBank((16, 16, 8), (2.0, 4.0), count=4)
    >>> [round(bank.acceleration_of(j), 2) for j in range(4)]
    [2.25, 2.75, 3.25, 3.75]
    >>> m = bank.for_item(7)
    >>> m.shape, bool((m == bank[bank.index(7)]).all())
    (torch.Size([16, 16, 8]), True)
    """

    def __init__(self, shape: Sequence[int], acceleration: Sequence[float] = (4.0, 10.0), count: int = 100,
                 kind: str = "poisson", seed: int = 0) -> None:
        self.shape = int_triple("shape", shape)
        low, high = real_tuple("acceleration", acceleration, 2)
        if not 1 <= low <= high:
            raise ValueError(f"acceleration must be a range (low, high) with 1 <= low <= high, got {tuple(acceleration)}")
        self.acceleration = (low, high)
        self.count = integer("count", count, 1)
        self.kind = choice("kind", kind, KINDS)
        self.seed = integer("seed", seed, 0)
        self._masks: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.count

    def acceleration_of(self, j: int) -> float:
        """The acceleration of mask ``j``."""
        low, high = self.acceleration
        return low + (high - low) * (self._check(j) + 0.5) / self.count

    def _check(self, j: int) -> int:
        j = integer("mask index", j, 0)
        if j >= self.count:
            raise IndexError(f"mask index {j} out of range for a bank of {self.count} masks")
        return j

    def __getitem__(self, j: int) -> torch.Tensor:
        j = self._check(j)
        if j not in self._masks:
            seed = int(np.random.SeedSequence([self.seed, j]).generate_state(1)[0])
            self._masks[j] = variable_density_mask(self.shape, self.acceleration_of(j), seed=seed, kind=self.kind)
        return self._masks[j]

    def index(self, i: int) -> int:
        """The mask of dataset item ``i`` (uniform over the bank, a function of ``(seed, i)``)."""
        i = integer("item index", i, 0)
        state = np.random.SeedSequence([self.seed, 1, i]).generate_state(2, dtype=np.uint32)
        return int((int(state[0]) << 32 | int(state[1])) % self.count)

    def for_item(self, i: int) -> torch.Tensor:
        """The mask of dataset item ``i``."""
        return self[self.index(i)]

    def describe(self) -> dict[str, Any]:
        """What makes the bank (for a training run's fingerprint)."""
        return {"type": "MaskBank", "shape": list(self.shape), "acceleration": list(self.acceleration),
                "count": self.count, "kind": self.kind, "seed": self.seed}
