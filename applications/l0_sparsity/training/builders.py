"""From a configuration to the objects it names: the datasets, the gated model, its problem.

The trainer's :func:`~l0_sparsity.training.trainer.build` and the ``purge`` command
(:mod:`l0_sparsity.cli.purge`) both go through these, so that a checkpoint's model is rebuilt
exactly as it was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from l0_sparsity.budget_measures import unwrapped
from l0_sparsity.data import DATASETS, DatasetInfo, build_datasets, dataset_options
from l0_sparsity.measures import LatencyModel
from l0_sparsity.models import build_model
from l0_sparsity.nn import gated_layers
from l0_sparsity.problem import SparsityProblem
from l0_sparsity.purging import purge
from l0_sparsity.training.config import TrainConfig

__all__ = ["example_batch", "load_datasets", "make_model", "make_problem"]


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
        config: The run's settings (``model``, ``droprate_init``, ``structured``,
            ``weights``).
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
        weights=config.weights,
    )


def make_problem(
    config: TrainConfig, model: nn.Module, example_input: Tensor | Sequence[int] | None = None
) -> SparsityProblem:
    """The sparsity problem of ``model`` in the constraint mode of ``config``, with its budgets.

    Model-wise: expected density at most ``config.target``; layer-wise: one constraint per gated
    layer (a single value of ``config.layer_targets`` applies to every layer); penalized: no
    constraint, ``config.penalty`` times the density added to the loss; budget-only: no density
    term. Each compute budget (``macs_target``, ``params_target``, ``latency_target``) adds its
    constraint; a latency budget first measures (or reads from the cache) the model's
    :class:`~l0_sparsity.measures.LatencyModel` at batch ``config.batch_size``.

    Args:
        config: The run's settings (:attr:`~TrainConfig.mode` and its value, the budgets,
            ``weight_decay``).
        model: The gated model (or its DDP / compiled wrapper, which the forward pass uses).
        example_input: An input batch or its shape (:func:`example_batch`), at which the
            compute measures are built; required with a budget.

    Returns:
        The problem.

    Raises:
        ValueError: For a budget without ``example_input``, or below what the model's ungated
            layers cost.
    """
    options: dict[str, Any] = {
        "weight_decay": config.weight_decay,
        "example_input": example_input,
        "strict_budgets": config.strict_budgets,
        "budget_tolerance": config.budget_tolerance,
        "macs_penalty": config.macs_penalty,
        **{f"{name}_target": value for name, value in config.budgets.items()},
    }
    if config.latency_target is not None and example_input is not None:
        options["latency_model"] = _latency_model(config, model, example_input)
    if config.mode == "penalized":
        return SparsityProblem(model, penalty=config.penalty, **options)
    if config.mode == "layer-wise":
        targets = list(config.layer_targets)
        if len(targets) == 1:
            targets = targets * len(gated_layers(model))
        return SparsityProblem(model, layer_targets=targets, **options)
    if config.mode == "budget-only":
        return SparsityProblem(model, **options)
    return SparsityProblem(model, target=config.target, **options)


def _latency_model(
    config: TrainConfig, model: nn.Module, example_input: Tensor | Sequence[int]
) -> LatencyModel:
    """The latency model of ``model`` at batch ``config.batch_size``, measured or cached."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise ValueError(
            "latency_target is not supported in a distributed run: each rank would fit its own "
            "latency model, and the ranks' latency constraints would differ"
        )
    shape = example_input.shape if isinstance(example_input, Tensor) else example_input
    device = example_input.device if isinstance(example_input, Tensor) else None
    with torch.random.fork_rng(devices=[]):  # measuring must not move the run's random streams
        return LatencyModel(
            unwrapped(model),
            (config.batch_size, *tuple(shape)[1:]),
            purge=purge,
            device=device,
            threads=config.threads or torch.get_num_threads(),
            progress=config.progress,
        )


def example_batch(info: DatasetInfo, device: torch.device | str = "cpu") -> Tensor:
    """One input of the dataset's shape (zeros, batch of 1), for the compute measures.

    Args:
        info: The dataset's description (channels and image size).
        device: Where the model is.

    Returns:
        A ``(1, C, H, W)`` tensor.
    """
    return torch.zeros(1, *info.input_shape, device=device)
