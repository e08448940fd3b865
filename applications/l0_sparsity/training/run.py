"""What a training run is made of and what it gives back: plain values passed between steps.

:class:`Data` (the loaders) and :class:`Setup` (model, problem, optimizers; its state dict is
the checkpoint's) are made by :func:`~l0_sparsity.training.trainer.load_data` and
:func:`~l0_sparsity.training.trainer.build`; :class:`TrainResult` is what
:func:`~l0_sparsity.training.trainer.train` returns, :class:`TrainingInterrupted` what it raises
on Ctrl-C.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import conopt
from l0_sparsity.data import DatasetInfo
from l0_sparsity.problem import SparsityProblem
from l0_sparsity.training.config import TrainConfig

__all__ = ["Data", "Setup", "TrainResult", "TrainingInterrupted"]


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
        config: The configuration that ran.
        history: One metrics dictionary per epoch (the rows of ``metrics.csv``).
        model: The trained gated model (unwrapped from DDP).
        problem: The sparsity problem (multipliers included).
        output_dir: Where the run's files are.
        rank: This process's rank (0 without DDP); rank 0 wrote the files.
    """

    config: TrainConfig
    history: list[dict[str, Any]]
    model: nn.Module
    problem: SparsityProblem
    output_dir: Path
    rank: int = 0

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's metrics."""
        return self.history[-1]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (``KeyboardInterrupt``) during :func:`train`, with the checkpoint left behind.

    Args:
        checkpoint: The run's checkpoint path.
        saved_epoch: The last epoch (0-based) whose checkpoint is on disk, or ``None``.
        epochs: The run's planned number of epochs.
    """

    def __init__(self, checkpoint: Path, saved_epoch: int | None, epochs: int) -> None:
        self.checkpoint = checkpoint
        self.saved_epoch = saved_epoch
        self.epochs = epochs
        if saved_epoch is None:
            message = f"interrupted before any epoch was saved in {checkpoint}"
        else:
            message = f"interrupted; epoch {saved_epoch + 1}/{epochs} is saved in {checkpoint}"
        super().__init__(message)


@dataclass(frozen=True)
class Data:
    """What :func:`load_data` gives: the dataset's description and this rank's loaders.

    Attributes:
        info: Classes, channels and image size of the dataset.
        train_loader: This rank's share of each global training batch (``set_epoch`` first).
        test_loader: This rank's shard of the test set (padded to equal shards).
        test_size: The test set's size (the padding past it is not counted).
    """

    info: DatasetInfo
    train_loader: Any
    test_loader: Any
    test_size: int


@dataclass(frozen=True)
class Setup:
    """What :func:`build` makes from a configuration: the model, its problem, its optimizers.

    Attributes:
        config: The run's settings.
        device: The training device.
        dtype: The autocast dtype, or ``None`` for full precision.
        model: The gated model (unwrapped: the one saved and evaluated).
        forward_model: The model that trains (DDP-wrapped and/or compiled, else ``model``).
        problem: The sparsity problem.
        optimizer: The constrained optimizer (one primal optimizer, dual SGD).
        scheduler: The weights' learning-rate schedule, stepped once per epoch.
        scaler: The GradScaler under fp16 autocast, else ``None``.
    """

    config: TrainConfig
    device: torch.device
    dtype: torch.dtype | None
    model: nn.Module
    forward_model: nn.Module
    problem: SparsityProblem
    optimizer: conopt.optim.SimultaneousGDA
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's states.

        Returns:
            ``model``, ``problem``, ``optimizer``, ``scheduler`` and ``scaler`` (``None``
            without a GradScaler).
        """
        return {
            "model": self.model.state_dict(),
            "problem": self.problem.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s states (a checkpoint without ``scaler`` keeps it as is).

        Args:
            state: A checkpoint's payload.
        """
        self.model.load_state_dict(state["model"])
        self.problem.load_state_dict(state["problem"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
