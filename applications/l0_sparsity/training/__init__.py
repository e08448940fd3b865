"""Training to a density target: configuration, presets, trainer, checkpoints and their helpers.

:mod:`~l0_sparsity.training.config` holds the run's settings, :mod:`~l0_sparsity.training.presets`
named sets of them, and :mod:`~l0_sparsity.training.trainer` the loop that runs them.
"""

from l0_sparsity.training.config import TrainConfig
from l0_sparsity.training.presets import PRESETS, get_preset
from l0_sparsity.training.run import TrainingInterrupted, TrainResult
from l0_sparsity.training.trainer import train

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "TrainingInterrupted", "get_preset", "train"]
