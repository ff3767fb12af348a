"""Domain partitioning: reconstruct a volume patch by patch with the data step intact.

* :mod:`.grid` - the inference grid of patch offsets and the blending window;
* :mod:`.base` - the base-model protocol (``base(y, physics, x_init=...)``) and deepinv's adapters;
* :mod:`.batch` - several patch problems as one batch (``patch_batch_size``);
* :mod:`.plan` - patch operators, groups and window built once per physics (outside traced code);
* :mod:`.reconstructor` - :class:`PartitionedReconstructor`: sweeps, H mode, ``L_PART``;
* :mod:`.loss` - ``L_PART`` as a deepinv ``Loss`` for ``deepinv.Trainer``.
"""
from .base import StartPointAdapter, as_base_reconstructor
from .batch import NormalPatchBatch, PatchBatch
from .grid import blend_window, patch_grid, random_patch_offset
from .loss import PartitionedLoss, PatchTrainingModel
from .plan import SweepPlan
from .reconstructor import PartitionedReconstructor, patch_measurement

__all__ = [
    "PartitionedReconstructor", "patch_grid", "random_patch_offset", "blend_window", "patch_measurement",
    "StartPointAdapter",
    "as_base_reconstructor", "PatchBatch", "NormalPatchBatch", "SweepPlan", "PartitionedLoss", "PatchTrainingModel",
]
