"""ImageNet ResNet-18 / ResNet-50 from torchvision, gated as in the paper.

The dense networks are ``torchvision.models.resnet18`` / ``resnet50`` (``weights=None``: nothing
is downloaded). :func:`mark_residual_blocks` tags every torchvision ``BasicBlock`` and
``Bottleneck`` with the names of its inner convolutions (``inner_convs``, the attribute
:func:`~l0_sparsity.models.resnet.block_conv_names` reads), so the same rule as for our own
residual networks gates them: every convolution inside a residual block, never the stem, the
shortcuts (``downsample``) or the classifier.

torchvision is imported when a model is built, not when this module is imported: without the
``vision`` extra, ``build_model("resnet18")`` raises an ``ImportError`` that names it.
"""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from l0_sparsity._vision_extra import import_torchvision

__all__ = ["TORCHVISION_RESNETS", "mark_residual_blocks", "torchvision_resnet"]

TORCHVISION_RESNETS: tuple[str, ...] = ("resnet18", "resnet50")
"""The torchvision builders that :func:`torchvision_resnet` accepts."""

_Model = TypeVar("_Model", bound=nn.Module)


def mark_residual_blocks(model: _Model) -> _Model:
    """Tag each torchvision residual block of ``model`` with its ``inner_convs``, in place.

    A ``BasicBlock`` lists ``("conv1", "conv2")``, a ``Bottleneck`` ``("conv1", "conv2",
    "conv3")``. Any torchvision ResNet-family model (``resnet34``, ``resnext50_32x4d``,
    ``wide_resnet50_2``, ...) can then be gated with
    :func:`~l0_sparsity.models.resnet.gate_blocks`.

    Args:
        model: A model containing torchvision ``BasicBlock`` / ``Bottleneck`` modules.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: If ``model`` holds no torchvision residual block.
        ImportError: If torchvision is not installed (the message names the ``vision`` extra).
    """
    resnet = import_torchvision("mark_residual_blocks", "torchvision.models.resnet")
    inner = {resnet.BasicBlock: ("conv1", "conv2"), resnet.Bottleneck: ("conv1", "conv2", "conv3")}
    found = 0
    for module in model.modules():
        convs = inner.get(type(module))
        if convs is not None:
            module.inner_convs = convs
            found += 1
    if not found:
        raise ValueError(
            f"mark_residual_blocks: {type(model).__name__} holds no torchvision BasicBlock or "
            "Bottleneck; expected a torchvision ResNet-family model"
        )
    return model


def torchvision_resnet(name: str, *, num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """A dense torchvision ResNet with random weights, its blocks marked for gating.

    Args:
        name: ``"resnet18"`` or ``"resnet50"`` (:data:`TORCHVISION_RESNETS`).
        num_classes: Number of output logits.
        in_channels: Input channels; other than 3, the 7×7 stem convolution is replaced by one
            with that many input channels (He-normal initialization, as torchvision's).

    Returns:
        The model, with :func:`mark_residual_blocks` applied.

    Raises:
        ValueError: If ``name`` is not one of :data:`TORCHVISION_RESNETS`.
        ImportError: If torchvision is not installed (the message names the ``vision`` extra).
    """
    if name not in TORCHVISION_RESNETS:
        raise ValueError(
            f"torchvision_resnet: unknown name {name!r}; expected one of "
            f"{', '.join(TORCHVISION_RESNETS)}"
        )
    models = import_torchvision(f"model {name!r}", "torchvision.models")
    model = getattr(models, name)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        stem = model.conv1
        model.conv1 = nn.Conv2d(
            in_channels,
            stem.out_channels,
            stem.kernel_size,
            stride=stem.stride,
            padding=stem.padding,
            bias=False,
        )
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return mark_residual_blocks(model)
