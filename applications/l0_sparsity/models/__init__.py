"""Model zoo of the L0-sparsity application, as data: one registry entry per model.

An entry (:class:`ModelEntry`) says how to build the model dense and what of it gets gates;
:func:`build_model` builds it by name and gates it (``gated=False`` keeps it dense, for
baselines). Every model takes ``num_classes``, ``in_channels``, ``droprate_init`` and
``structured``; the fully connected ones also ``image_size``.

==================  ==========================================================================
name                model (what gets gated)
==================  ==========================================================================
``mlp``             MLP 784-300-100-10 (input neurons of every linear layer)
``lenet5``          LeNet-5-Caffe (conv filters, fc input neurons)
``resnet18_cifar``  CIFAR ResNet-18, 3×3 stem (every conv inside a residual block)
``wrn28_10``        WRN-28-10 (``conv1`` of each block)
``resnet18``        torchvision ResNet-18, 7×7 stem (every conv inside a residual block)
``resnet50``        torchvision ResNet-50, Bottlenecks (every conv inside a residual block)
==================  ==========================================================================

``resnet18`` and ``resnet50`` need torchvision (the ``vision`` extra), imported when they are
built (:mod:`l0_sparsity.models.vision`).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from l0_sparsity.models.lenet import LeNet5
from l0_sparsity.models.mlp import MLP
from l0_sparsity.models.resnet import (
    BasicBlock,
    ResNet,
    block_conv_names,
    gate_blocks,
    outside_blocks,
)
from l0_sparsity.models.vision import mark_residual_blocks, torchvision_resnet
from l0_sparsity.models.wrn import WideBasicBlock, WideResNet
from l0_sparsity.nn import SkipSpec, sparsify

__all__ = [
    "MLP",
    "MODELS",
    "BasicBlock",
    "LeNet5",
    "ModelEntry",
    "ResNet",
    "WideBasicBlock",
    "WideResNet",
    "block_conv_names",
    "build_model",
    "gate_blocks",
    "mark_residual_blocks",
    "outside_blocks",
    "torchvision_resnet",
]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its dense builder and what of it gets gates.

    Attributes:
        dense: Builds the dense model from keyword arguments: ``num_classes``, ``in_channels``
            and the model's own (``image_size``, ``hidden``, ``depth``, ...).
        droprate_init: The gates' initial drop rate when none is given.
        skip: Given the dense model, the layers to keep dense (a ``skip`` of
            :func:`~l0_sparsity.nn.sparsify`); ``None`` gates every ``nn.Linear`` and
            ``nn.Conv2d``.
    """

    dense: Callable[..., nn.Module]
    droprate_init: float
    skip: Callable[[nn.Module], SkipSpec] | None = None


MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(MLP.for_images, droprate_init=0.5),
    "lenet5": ModelEntry(LeNet5, droprate_init=0.5),
    "resnet18_cifar": ModelEntry(
        functools.partial(ResNet, BasicBlock, (2, 2, 2, 2)),
        droprate_init=0.3,
        skip=outside_blocks,
    ),
    "wrn28_10": ModelEntry(WideResNet, droprate_init=0.3, skip=outside_blocks),
    "resnet18": ModelEntry(
        functools.partial(torchvision_resnet, "resnet18"),
        droprate_init=0.05,
        skip=outside_blocks,
    ),
    "resnet50": ModelEntry(
        functools.partial(torchvision_resnet, "resnet50"),
        droprate_init=0.05,
        skip=outside_blocks,
    ),
}
"""Registered models by name."""


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int | None = None,
    image_size: int | None = None,
    droprate_init: float | None = None,
    structured: bool = True,
    gated: bool = True,
    weights: str | os.PathLike[str] | Mapping[str, Tensor] | None = None,
    **options: Any,
) -> nn.Module:
    """Build a registered model by name, gated as its entry says.

    Args:
        name: One of :data:`MODELS` (``"mlp"``, ``"lenet5"``, ``"resnet18_cifar"``,
            ``"wrn28_10"``, ``"resnet18"``, ``"resnet50"``).
        num_classes: Number of output logits.
        in_channels: Input channels; ``None`` keeps the model's default.
        image_size: Input side, used by ``mlp`` and ``lenet5`` and ignored by the
            size-agnostic residual networks; ``None`` keeps the default (28).
        droprate_init: Initial drop rate of the gates; ``None`` takes the entry's.
        structured: Structured (input-neuron / output-filter) gates, or one gate per weight.
        gated: ``False`` builds the same architecture dense.
        weights: The dense model's trained ``state_dict``, or a file holding one
            (``torch.save``), loaded before the gates are added (all keys must match). Start
            such a model with a small ``droprate_init`` (0.05: every test-time gate is 1) so
            that the gated model computes the trained one's function.
        **options: Further arguments of the dense builder (``input_size``, ``hidden``,
            ``depth``, ``widen_factor``, ``dropout``, ...).

    Returns:
        The model.

    Raises:
        ValueError: If ``name`` is not registered, or ``weights`` do not fit the model.
    """
    try:
        entry = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None
    if in_channels is not None:
        options["in_channels"] = in_channels
    if image_size is not None and "image_size" in inspect.signature(entry.dense).parameters:
        options["image_size"] = image_size
    model = entry.dense(num_classes=num_classes, **options)
    if weights is not None:
        _load_dense_weights(model, name, weights)
    if gated:
        sparsify(
            model,
            structured=structured,
            droprate_init=entry.droprate_init if droprate_init is None else droprate_init,
            skip=entry.skip(model) if entry.skip is not None else None,
        )
    return model


def _load_dense_weights(
    model: nn.Module, name: str, weights: str | os.PathLike[str] | Mapping[str, Tensor]
) -> None:
    state = (
        weights
        if isinstance(weights, Mapping)
        else torch.load(os.fspath(weights), map_location="cpu", weights_only=True)
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"weights do not fit model {name!r} (expected the dense model's state_dict with "
            f"the same num_classes and in_channels): {error}"
        ) from error
