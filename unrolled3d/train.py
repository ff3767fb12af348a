"""The training API under its first name: :mod:`unrolled3d.training` re-exported (code written
for ``from unrolled3d.train import TrainConfig, train`` keeps working)."""
from .training import (ARCHIVE_FOLDER, CHECKPOINT_FORMAT, TrainConfig, checkpoints, evaluate, latest_checkpoint,
                       load_checkpoint, run_description, train)

__all__ = ["TrainConfig", "train", "evaluate", "latest_checkpoint", "load_checkpoint", "checkpoints",
           "run_description", "CHECKPOINT_FORMAT", "ARCHIVE_FOLDER"]
