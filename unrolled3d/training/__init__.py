r"""Training of partitioned reconstructors with ``L_PART``: the configuration, the run's folder,
the trainer and the loop.

================  ====================================================================
``config``        :class:`TrainConfig` and the other sections of a training file (:class:`RunConfig`)
``run_folder``    :class:`RunFolder`: claim, archive, resume, save, prune (the rules, once)
``trainer``       :class:`Trainer`: one step, one validation, its state
``loop``          :func:`train`: the trainer stepped inside the folder
``identity``      :func:`run_description`: the run's fingerprint
``checkpoints``   finding and reading checkpoints safely
================  ====================================================================

All randomness of a run (volume index, noise, patch position) comes from one CPU
``torch.Generator`` seeded by ``TrainConfig.seed`` (plus the rank); the global torch RNG (used
e.g. by dropout) is seeded too. Checkpoints are written atomically and durably and hold every
state needed to continue bit for bit: after ``resume=True`` the next step's loss is identical
to the uninterrupted run's (on the same hardware, thread count and library versions).
"""
from .checkpoints import CHECKPOINT_FORMAT, checkpoints, latest_checkpoint, load_checkpoint
from .config import DataConfig, GeometryConfig, MRIConfig, PhantomsConfig, RunConfig, TrainConfig
from .identity import run_description
from .loop import train
from .run_folder import ARCHIVE_FOLDER, RunFolder, RunFolderInUse
from .trainer import Trainer, evaluate

__all__ = ["TrainConfig", "RunConfig", "GeometryConfig", "PhantomsConfig", "DataConfig", "MRIConfig", "train", "evaluate",
           "Trainer", "RunFolder", "RunFolderInUse", "latest_checkpoint", "load_checkpoint", "checkpoints", "run_description",
           "CHECKPOINT_FORMAT", "ARCHIVE_FOLDER"]
