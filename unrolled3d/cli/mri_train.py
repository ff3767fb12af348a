r"""``unrolled3d train`` for MRI: what a configuration with an ``[mri]`` section trains on.

::

    [geometry]
    size = 64                    # the volume's edge (no views: k-space is sampled as [mri] says)
    [mri]
    coils = 8                    # birdcage coils, normalised (sum |S_c|^2 = 1)
    acceleration = [4.0, 10.0]   # R of the masks, spread over this range (or one number)
    mask = "poisson"             # Poisson-disc ("poisson") or variable-density random ("random")
    masks = 100                  # masks in the bank; item i takes one, a function of (seed, i)
    max_phase = 3.14159          # range of the smooth random phase, radians
    val_acceleration = 8.0       # the one mask of the validation scans
    seed = 0                     # masks and phases

The volumes of ``[phantoms]`` or ``[data]`` are magnitudes. Item ``i`` of the training set is
``(x, {"mask": m})``: ``x`` the magnitude times a smooth random phase
(:class:`~unrolled3d.data.ComplexPhantomDataset`, real and imaginary channels) and ``m`` its
mask from a :class:`~unrolled3d.mri.MaskBank`; the trainer sets the mask on the physics before
it measures ``x`` (deepinv's ``(x, params)`` convention). The coil maps are the same for every
item. The validation scans use one mask of ``val_acceleration`` and their own phases.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:  # annotations only: this module imports the package's parts where they are used
    from ..data.complex_phantoms import IndexedVolumes

__all__ = ["MRITrainingSet", "mri_physics", "validation_mask", "validation_scans", "mri_training_setup", "VAL_MASK_SEED"]

#: the validation mask's seed offset from [mri] seed (another draw than any bank mask's)
VAL_MASK_SEED = 1_000_003


class MRITrainingSet(Dataset):
    """Complex volumes with a sampling mask each: items ``(x (2, D, H, W), {"mask": (D, H, W)})``.

    Parameters
    ----------
    magnitudes : Dataset
        real volumes ``(1, D, H, W)`` (phantoms or blocks of files).
    masks : MaskBank
        the masks; item ``i`` takes ``masks.for_item(i)``.
    seed : int
        seed of the phases.
    max_phase : float
        range of the phases (radians).

    Examples
    --------
    >>> from unrolled3d.cli.mri_train import MRITrainingSet
    >>> from unrolled3d.data import PhantomDataset
    >>> from unrolled3d.mri import MaskBank
    >>> items = MRITrainingSet(PhantomDataset(4, 8), MaskBank((8, 8, 8), (2.0, 3.0), count=2))
    >>> x, params = items[1]
    >>> x.shape, params["mask"].shape     # real and imaginary channels; the item's mask
    (torch.Size([2, 8, 8, 8]), torch.Size([8, 8, 8]))
    """

    def __init__(self, magnitudes: IndexedVolumes, masks: Any, seed: int = 0, max_phase: float = torch.pi) -> None:
        from ..data import ComplexPhantomDataset

        self.magnitudes, self.masks = magnitudes, masks
        self.complex = ComplexPhantomDataset(magnitudes, seed=seed, max_phase=max_phase)
        paths = getattr(magnitudes, "paths", None)
        if paths is not None:  # the files' contents go into the run's fingerprint
            self.paths = paths

    def __len__(self) -> int:
        return len(self.complex)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        i = int(i) + len(self) if int(i) < 0 else int(i)
        return self.complex[i], {"mask": self.masks.for_item(i)}

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.magnitudes, "describe", None)
        inner = describe() if callable(describe) else {"type": type(self.magnitudes).__name__,
                                                       "length": len(self.magnitudes)}
        return {"type": "MRITrainingSet", "magnitudes": inner, "masks": self.masks.describe(),
                "phase": {"seed": self.complex.seed, "max_phase": self.complex.max_phase,
                          "degree": self.complex.degree}}


def mri_physics(mri: Any, size: int, mask: torch.Tensor | None = None):
    """The multi-coil operator of an ``[mri]`` section on ``size``^3 volumes, with ``mask``
    (default: the validation mask)."""
    from ..mri import MultiCoilMRI3D, birdcage_maps

    shape = (size,) * 3
    if mask is None:
        mask = validation_mask(mri, size)
    return MultiCoilMRI3D(mask, birdcage_maps(mri.coils, shape))


def validation_mask(mri: Any, size: int) -> torch.Tensor:
    """The one mask of the validation scans (acceleration ``val_acceleration``)."""
    from ..mri import variable_density_mask

    return variable_density_mask((size,) * 3, mri.val_acceleration, seed=mri.seed + VAL_MASK_SEED, kind=mri.mask)


def mri_training_setup(run: Any, file_data: Any, note: Callable[[str], None]) -> tuple[Any, Dataset, list | None, dict[str, Any]]:
    """``(physics, training set, validation triples or None, what the model file records of the
    data)`` of a configuration with ``[mri]`` (``file_data``: the ``[data]`` sets, ``None`` for
    phantoms; ``note(text)`` tells the user what is happening)."""
    from ..data import ComplexPhantomDataset, IntensityNormalization, PhantomDataset
    from ..mri import MaskBank

    mri, size = run.mri, run.geometry.size
    physics = mri_physics(mri, size)
    masks = MaskBank((size,) * 3, mri.acceleration, count=mri.masks, kind=mri.mask, seed=mri.seed)
    note(f"MRI: {mri.coils} coils, {mri.mask} masks of R {mri.acceleration[0]:g} to {mri.acceleration[1]:g} "
         f"({mri.masks} in the bank), validation at R {mri.val_acceleration:g}")
    if file_data is None:
        magnitudes = PhantomDataset(100_000, (size,) * 3, kind=run.phantoms.kind, seed=run.phantoms.seed)
        recorded: dict[str, Any] = {"normalization": IntensityNormalization().to_dict()}
        val_set = None
    else:
        magnitudes, val_set, held_out, norm = file_data
        note(f"training on random {size}^3 blocks of {len(magnitudes.paths)} file(s)"
             + (f", {len(held_out)} held out" if held_out else "") + f", normalisation {norm.kind}")
        recorded = {"normalization": norm.to_dict(),
                    "data_files": {"train": [str(p) for p in magnitudes.paths], "held_out": [str(p) for p in held_out]}}
    dataset = MRITrainingSet(magnitudes, masks, seed=mri.seed, max_phase=mri.max_phase)
    val_data = None
    if val_set is not None:
        val_data = validation_scans(physics, ComplexPhantomDataset(val_set, seed=mri.seed + 1, max_phase=mri.max_phase),
                                    run.train.noise_std, run.data.seed)
    return physics, dataset, val_data, recorded


def validation_scans(physics: Any, volumes: IndexedVolumes, noise_std: float, seed: int) -> list:
    """``(x, y, {"mask": physics.mask})`` of each volume: measured with the physics' current mask and
    the training noise (drawn once, from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    mask = physics.mask.clone()
    out = []
    with torch.no_grad():
        for i in range(len(volumes)):
            x = volumes[i][None]
            y = physics.A(x)
            out.append((x, y + noise_std * torch.randn(y.shape, generator=gen), {"mask": mask}))
    return out
