"""LeNet-5-Caffe for MNIST-size inputs (Louizos et al., 2018).

With ``gated=True`` every convolution gets output-filter gates and every linear layer
input-neuron gates.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from l0_sparsity.nn.layers import sparsify

__all__ = ["LeNet5", "lenet5"]


class LeNet5(nn.Module):
    """LeNet-5-Caffe: conv 20@5×5, pool, conv 50@5×5, pool, fc 500, fc ``num_classes``.

    ReLU follows every layer but the last, as in the L0 paper's implementation.

    Args:
        num_classes: Number of output logits.
        in_channels: Input channels (1 for MNIST).
        image_size: Side of the square input (28 for MNIST).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for LeNet-5 (needs >= 16)")
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for images ``x`` of shape ``(N, C, H, W)``."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def lenet5(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    droprate_init: float = 0.5,
    structured: bool = True,
    gated: bool = True,
) -> LeNet5:
    """LeNet-5-Caffe with output-filter gates on the convs and input-neuron gates on the fcs.

    Args:
        num_classes: Number of output logits.
        in_channels: Input channels.
        image_size: Side of the square input.
        droprate_init: Initial drop rate of the gates.
        structured: Structured gates, or one gate per weight.
        gated: ``False`` builds the same architecture dense.

    Returns:
        The model.
    """
    model = LeNet5(num_classes, in_channels, image_size)
    if gated:
        sparsify(model, structured=structured, droprate_init=droprate_init)
    return model
