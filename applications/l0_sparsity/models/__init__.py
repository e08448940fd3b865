"""Model zoo of the L0-sparsity application and a name-based registry.

Every builder takes keyword arguments ``num_classes``, ``droprate_init``, ``structured`` and
``gated`` (``gated=False`` builds the same architecture dense, for baselines), plus
``in_channels`` and, for the fully connected models, ``image_size``.

==================  ==========================================================================
name                model (what gets gated)
==================  ==========================================================================
``mlp``             MLP 784-300-100-10 (input neurons of every linear layer)
``lenet5``          LeNet-5-Caffe (conv filters, fc input neurons)
``resnet18_cifar``  CIFAR ResNet-18, 3×3 stem (every conv inside a residual block)
``wrn28_10``        WRN-28-10 (``conv1`` of each block)
``resnet18``        ImageNet ResNet-18, 7×7 stem (every conv inside a residual block)
``resnet50``        ImageNet ResNet-50, Bottlenecks (every conv inside a residual block)
==================  ==========================================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from l0_sparsity.models.lenet import LeNet5, lenet5
from l0_sparsity.models.mlp import MLP, mlp
from l0_sparsity.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    block_conv_names,
    gate_blocks,
    resnet18,
    resnet18_cifar,
    resnet50,
)
from l0_sparsity.models.wrn import WideBasicBlock, WideResNet, wrn28_10

__all__ = [
    "MLP",
    "MODELS",
    "BasicBlock",
    "Bottleneck",
    "LeNet5",
    "ResNet",
    "WideBasicBlock",
    "WideResNet",
    "block_conv_names",
    "build_model",
    "gate_blocks",
    "lenet5",
    "mlp",
    "resnet18",
    "resnet18_cifar",
    "resnet50",
    "wrn28_10",
]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet5": lenet5,
    "resnet18_cifar": resnet18_cifar,
    "wrn28_10": wrn28_10,
    "resnet18": resnet18,
    "resnet50": resnet50,
}
"""Registered builders by name."""


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int | None = None,
    image_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: One of :data:`MODELS` (``"mlp"``, ``"lenet5"``, ``"resnet18_cifar"``,
            ``"wrn28_10"``, ``"resnet18"``, ``"resnet50"``).
        num_classes: Number of output logits.
        in_channels: Input channels; ``None`` keeps the builder's default.
        image_size: Input side, used by ``mlp`` and ``lenet5`` and ignored by the
            size-agnostic residual networks; ``None`` keeps the default (28).
        **kwargs: Further builder arguments (``droprate_init``, ``structured``, ``gated``,
            ``input_size``, ``hidden``, ``dropout``, ...).

    Returns:
        The model.

    Raises:
        ValueError: If ``name`` is not registered.
    """
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None
    params = inspect.signature(builder).parameters
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    if image_size is not None and "image_size" in params:
        kwargs["image_size"] = image_size
    return builder(num_classes=num_classes, **kwargs)
