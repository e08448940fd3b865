"""LeNet-5-Caffe for MNIST-size inputs (Louizos et al., 2018), dense.

Registered as ``lenet5`` (:data:`l0_sparsity.models.MODELS`): every convolution gets
output-filter gates and every linear layer input-neuron gates.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["LeNet5"]


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
