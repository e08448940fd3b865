"""From a configuration to the objects it names: the datasets, the gated model, its problem.

The trainer's :func:`~l0_sparsity.training.trainer.build` and the ``purge`` command
(:mod:`l0_sparsity.cli.purge`) both go through these, so that a checkpoint's model is rebuilt
exactly as it was trained.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from l0_sparsity.data import DATASETS, DatasetInfo, build_datasets, dataset_options
from l0_sparsity.models import build_model
from l0_sparsity.nn import gated_layers
from l0_sparsity.problem import SparsityProblem
from l0_sparsity.training.config import TrainConfig

__all__ = ["load_datasets", "make_model", "make_problem"]


def load_datasets(config: TrainConfig) -> tuple[Any, Any, DatasetInfo]:
    """The train and test sets of ``config.dataset``, with its ``subset`` and ``test_subset``.

    Args:
        config: The run's settings (``dataset``, ``data_root``, ``subset``, ``test_subset``).

    Returns:
        ``(train, test, info)`` as :func:`l0_sparsity.data.build_datasets` gives them.

    Raises:
        ValueError: For an unknown dataset, or a subset option that the dataset does not take.
        l0_sparsity.data.DatasetNotFoundError: When the dataset's files are missing.
    """
    options = {
        k: v
        for k, v in (("subset", config.subset), ("test_subset", config.test_subset))
        if v is not None
    }
    if config.dataset in DATASETS:  # else build_datasets reports the unknown name
        unknown = sorted(set(options) - set(dataset_options(config.dataset)))
        if unknown:
            raise ValueError(f"dataset {config.dataset!r} does not accept {', '.join(unknown)}.")
    return build_datasets(config.dataset, config.data_root, **options)


def make_model(config: TrainConfig, info: DatasetInfo) -> nn.Module:
    """The gated ``config.model`` for the data ``info`` describes, on the CPU.

    Args:
        config: The run's settings (``model``, ``droprate_init``, ``structured``).
        info: The dataset's classes, channels and image size.

    Returns:
        The model.

    Raises:
        ValueError: For an unknown model name.
    """
    return build_model(
        config.model,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=info.image_size,
        droprate_init=config.droprate_init,
        structured=config.structured,
    )


def make_problem(config: TrainConfig, model: nn.Module) -> SparsityProblem:
    """The sparsity problem of ``model`` in the constraint mode of ``config``.

    Model-wise: expected density at most ``config.target``; layer-wise: one constraint per gated
    layer (a single value of ``config.layer_targets`` applies to every layer); penalized: no
    constraint, ``config.penalty`` times the density added to the loss.

    Args:
        config: The run's settings (:attr:`~TrainConfig.mode` and its value, ``weight_decay``).
        model: The gated model (or its DDP / compiled wrapper, which the forward pass uses).

    Returns:
        The problem.
    """
    decay = config.weight_decay
    if config.mode == "penalized":
        return SparsityProblem(model, penalty=config.penalty, weight_decay=decay)
    if config.mode == "layer-wise":
        targets = list(config.layer_targets)
        if len(targets) == 1:
            targets = targets * len(gated_layers(model))
        return SparsityProblem(model, layer_targets=targets, weight_decay=decay)
    return SparsityProblem(model, target=config.target, weight_decay=decay)
