"""Wide residual network WRN-d-k (Zagoruyko & Komodakis, 2016), WRN-28-10 by default.

Pre-activation blocks ``x + conv2(dropout(relu(bn2(conv1(relu(bn1(x)))))))``. Gated
(:func:`~l0_sparsity.models.resnet.gate_blocks`, the block lists ``conv1`` as its inner conv),
only ``conv1`` of each block gets structured output-filter gates (and ``bn2`` becomes its
:class:`~l0_sparsity.nn.GatedBatchNorm2d`), as in Louizos et al. (2018) and Gallego-Posada et
al. (2022): the stem, ``conv2``, the shortcuts and the classifier stay dense.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from l0_sparsity.models.resnet import init_residual_weights

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of ``conv1`` (and of the shortcut).
        dropout: Dropout probability between the two convolutions.
    """

    inner_convs: tuple[str, ...] = ("conv1",)

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        act = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(act)
        out = F.relu(self.bn2(self.conv1(act)))
        return self.conv2(self.dropout(out)) + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32×32 inputs.

    Args:
        depth: Total depth, ``6n + 4``.
        widen_factor: Width multiplier ``k`` (stage widths 16k, 32k, 64k).
        num_classes: Number of output logits.
        in_channels: Input channels.
        dropout: Dropout probability inside the blocks.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        in_planes = 16
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(WideBasicBlock(in_planes, planes, stride, dropout))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        init_residual_weights(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for images ``x`` of shape ``(N, C, H, W)``."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
