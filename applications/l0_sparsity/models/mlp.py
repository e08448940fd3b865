"""Multilayer perceptron (MLP 784-300-100-10 of Louizos et al., 2018), dense.

Registered as ``mlp`` (:data:`l0_sparsity.models.MODELS`): every linear layer gets input-neuron
gates, including the first one, which thereby prunes input features (pixels).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Multilayer perceptron ``input → hidden… → num_classes`` with ReLU activations.

    Inputs of any shape ``(N, ...)`` are flattened to ``(N, input_size)``.

    Args:
        input_size: Number of input features (784 for MNIST, 3072 for CIFAR).
        hidden: Widths of the hidden layers.
        num_classes: Number of output logits.
    """

    def __init__(
        self, input_size: int = 784, hidden: Sequence[int] = (300, 100), num_classes: int = 10
    ) -> None:
        super().__init__()
        widths = [input_size, *hidden, num_classes]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    @classmethod
    def for_images(
        cls,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        input_size: int | None = None,
        hidden: Sequence[int] = (300, 100),
    ) -> MLP:
        """The MLP for square images (784-300-100-10 by default).

        Args:
            num_classes: Number of output logits.
            in_channels: Input channels; with ``image_size`` gives the default input size.
            image_size: Input side; ``input_size`` defaults to ``in_channels · image_size²``.
            input_size: Number of input features, overriding the default (e.g. 784 or 3072).
            hidden: Hidden widths.

        Returns:
            The model.
        """
        size = input_size if input_size is not None else in_channels * image_size * image_size
        return cls(size, hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Flatten ``x`` and return the logits."""
        return self.layers(x.flatten(1))
