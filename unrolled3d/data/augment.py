"""Random flips, quarter turns in the axial plane and intensity scaling of training volumes.

Every draw comes from a generator the caller passes (one per dataset item, seeded by the
dataset's seed and the item's index), so an augmented item is the same on every access: a run
is reproducible from its seeds and a resumed run continues identically.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from .._validation import boolean, real_tuple

__all__ = ["Augmentation"]


@dataclasses.dataclass(frozen=True)
class Augmentation:
    r"""Which random changes a training volume ``(C, D, H, W)`` undergoes.

    Parameters
    ----------
    flip : bool
        flip each of the axes z, y, x with probability 1/2 (independently).
    rot90 : bool
        rotate by ``k`` quarter turns about z (the axial plane ``(H, W)``), ``k`` uniform in
        0..3; a volume with ``H != W`` is turned by 0 or 2 quarters only (its shape is kept).
    intensity : (float, float) or None
        multiply by a factor uniform in ``[low, high]`` (``None``: no scaling).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.data import Augmentation
    >>> aug = Augmentation(flip=True, rot90=True, intensity=(0.9, 1.1))
    >>> x = torch.rand(1, 4, 6, 6)
    >>> a = aug(x, torch.Generator().manual_seed(3))
    >>> b = aug(x, torch.Generator().manual_seed(3))
    >>> a.shape, bool(torch.equal(a, b))       # the same generator state, the same volume
    (torch.Size([1, 4, 6, 6]), True)
    >>> Augmentation().active                   # nothing switched on: the identity
    False
    """

    flip: bool = False
    rot90: bool = False
    intensity: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        boolean("flip", self.flip)
        boolean("rot90", self.rot90)
        if self.intensity is not None:
            lo, hi = real_tuple("intensity", self.intensity, 2, positive=True)
            if lo > hi:
                raise ValueError(f"intensity must be a range (low, high) with low <= high, got {self.intensity!r}")
            object.__setattr__(self, "intensity", (lo, hi))

    @property
    def active(self) -> bool:
        """Whether any change is switched on."""
        return self.flip or self.rot90 or self.intensity is not None

    def to_dict(self) -> dict[str, Any]:
        """Primitive values (for a run's fingerprint)."""
        return {"flip": self.flip, "rot90": self.rot90,
                "intensity": None if self.intensity is None else list(self.intensity)}

    def draw(self, generator: torch.Generator, hw: Sequence[int]) -> dict[str, Any]:
        """The random choices for one volume with axial shape ``hw`` = ``(H, W)``: ``flips`` (dims
        of ``(C, D, H, W)`` to flip), ``turns`` (quarter turns about z), ``scale``.

        The same number of draws is taken whatever is switched on, so that switching one change
        on or off does not alter the others' choices for the same seed.
        """
        u = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
        flips = [d for d, v in zip((1, 2, 3), u[:3]) if v < 0.5] if self.flip else []
        turns = 0
        if self.rot90:
            turns = int(u[3] * 4) % 4
            if hw[0] != hw[1]:
                turns = 2 * (turns // 2)  # a quarter turn would swap H and W
        scale = 1.0
        if self.intensity is not None:
            lo, hi = self.intensity
            scale = lo + (hi - lo) * u[4]
        return {"flips": flips, "turns": turns, "scale": scale}

    @staticmethod
    def apply(x: torch.Tensor, draws: dict[str, Any]) -> torch.Tensor:
        """``x`` ``(C, D, H, W)`` changed by the choices ``draws`` of :meth:`draw` (``x`` itself is
        never modified in place)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a volume tensor (C, D, H, W), got {getattr(x, 'shape', type(x).__name__)}")
        if draws["flips"]:
            x = torch.flip(x, draws["flips"])
        if draws["turns"]:
            x = torch.rot90(x, draws["turns"], dims=(2, 3))
        if draws["scale"] != 1.0:
            x = x * draws["scale"]
        return x.contiguous()

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``x`` ``(C, D, H, W)`` changed by this augmentation's draws from ``generator``."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a volume tensor (C, D, H, W), got {getattr(x, 'shape', type(x).__name__)}")
        return self.apply(x, self.draw(generator, x.shape[-2:]))
