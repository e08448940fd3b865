"""Residual networks of our own: CIFAR ResNet-18 (He et al., 2016), and the gating rule.

The ImageNet ResNet-18 / ResNet-50 are torchvision's (:mod:`l0_sparsity.models.vision`); they are
gated by the same rule, through the ``inner_convs`` their blocks are tagged with.

Gated (:func:`gate_blocks`), every convolution *inside* a residual block gets structured
output-filter gates, and the BatchNorm after it becomes a
:class:`~l0_sparsity.nn.GatedBatchNorm2d`. The stem, the shortcut (``downsample``) convolutions
and the classifier are never gated, so every block keeps its output width and the residual
additions keep their shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from torch import Tensor, nn
from torch.nn import functional as F

from l0_sparsity.nn import sparsify

__all__ = [
    "BasicBlock",
    "ResNet",
    "block_conv_names",
    "gate_blocks",
    "init_residual_weights",
    "outside_blocks",
]


def init_residual_weights(model: nn.Module) -> None:
    """He-normal (fan-out) convolution weights, BatchNorm scale 1 and shift 0, in place.

    Args:
        model: A residual network; its other layers keep their initialization.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class BasicBlock(nn.Module):
    """Two 3×3 convolutions and a residual connection.

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution (and of the shortcut).
    """

    expansion = 1
    inner_convs: tuple[str, ...] = ("conv1", "conv2")

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR-style ResNet (3×3 stride-1 stem, no pooling), stages of widths 64-128-256-512.

    Args:
        block: The residual block, e.g. :class:`BasicBlock`.
        layers: Number of blocks per stage.
        num_classes: Number of output logits.
        in_channels: Input channels.
    """

    def __init__(
        self,
        block: type[BasicBlock],
        layers: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        init_residual_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for images ``x`` of shape ``(N, C, H, W)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def block_conv_names(model: nn.Module) -> set[str]:
    """Qualified names of the convolutions inside residual blocks (the ones that get gated).

    A block is any submodule with an ``inner_convs`` attribute listing its inner conv names.

    Args:
        model: A residual network.

    Returns:
        Names such as ``"layer1.0.conv1"``.
    """
    names = set()
    for name, module in model.named_modules():
        for conv in getattr(module, "inner_convs", ()):
            names.add(f"{name}.{conv}" if name else conv)
    return names


def outside_blocks(model: nn.Module) -> Callable[[str, nn.Module], bool]:
    """The ``skip`` predicate of :func:`~l0_sparsity.nn.sparsify` that gates block convs only.

    Args:
        model: A residual network whose blocks list their ``inner_convs``.

    Returns:
        ``(name, module) -> bool``: true (keep dense) for every layer not in
        :func:`block_conv_names`.
    """
    targets = block_conv_names(model)
    return lambda name, _module: name not in targets


_Model = TypeVar("_Model", bound=nn.Module)


def gate_blocks(
    model: _Model, *, gated: bool = True, droprate_init: float = 0.3, structured: bool = True
) -> _Model:
    """Gate the convolutions inside ``model``'s residual blocks, in place.

    Only :func:`block_conv_names` are gated (with :func:`~l0_sparsity.nn.sparsify`): never
    the stem, the shortcuts or the classifier. The registered residual networks
    (:data:`l0_sparsity.models.MODELS`) are gated so; it also gates a residual network of your
    own whose blocks list their ``inner_convs``.

    Args:
        model: A residual network (dense).
        gated: ``False`` returns ``model`` unchanged.
        droprate_init: Initial drop rate of the gates.
        structured: One gate per output filter, or one per weight.

    Returns:
        ``model`` itself.

    Example:
        >>> from l0_sparsity.nn import gated_layers
        >>> from l0_sparsity.models import block_conv_names, build_model, gate_blocks
        >>> model = gate_blocks(build_model("resnet18_cifar", gated=False))
        >>> {name for name, _ in gated_layers(model)} == block_conv_names(model)
        True
    """
    if gated:
        sparsify(
            model,
            structured=structured,
            droprate_init=droprate_init,
            skip=outside_blocks(model),
        )
    return model
