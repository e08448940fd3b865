"""Training to a density target: configuration, trainer, checkpoints and their helpers."""

from l0_sparsity.training.presets import PRESETS, TrainConfig, get_preset
from l0_sparsity.training.trainer import TrainingInterrupted, TrainResult, train

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "TrainingInterrupted", "get_preset", "train"]
