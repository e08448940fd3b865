"""Channel-wise ops of a traced graph: which of them keep a channel of zeros at zero.

A channel that a gate kills is exact zeros; it stays so through the ops these predicates
recognize (activations with ``f(0) = 0``, dropout, pooling), which is what lets a purge drop the
channel in the layers that read it (:mod:`~l0_sparsity.nn.graph`) and lets a grouped convolution
follow the gates of the convolution feeding it (:mod:`~l0_sparsity.nn.following`). The
predicates read torch.fx nodes of a graph traced with gated layers as leaves.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["is_elementwise", "is_flatten", "is_pool", "keeps_zeros", "tensor_args_only"]

# Channel-wise ops that map a channel of zeros to a channel of zeros.
_ZERO_PRESERVING_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)
_ZERO_PRESERVING_FUNCTIONS: set[Any] = {
    F.relu,
    torch.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    torch.tanh,
    F.hardtanh,
    F.hardswish,
    F.dropout,
    F.dropout2d,
}
_ZERO_PRESERVING_METHODS = {"relu", "tanh"}
_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_POOL_FUNCTIONS: set[Any] = {
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}


def tensor_args_only(node: fx.Node, first: fx.Node) -> bool:
    """Whether ``first`` is the node's first argument and no other argument is a node.

    Args:
        node: A node of the graph.
        first: A node it should read, as its only tensor.

    Returns:
        ``True`` if ``node`` reads ``first`` as its first argument and no other node.
    """
    args = list(node.args) + list(node.kwargs.values())
    if not args or args[0] is not first:
        return False
    return not any(isinstance(a, fx.Node) for a in args[1:])


def is_elementwise(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` applies an element-wise op that maps 0 to 0 (ReLU, GELU, dropout, ...).

    Args:
        node: A node of the graph.
        modules: The traced model's modules by qualified name.

    Returns:
        ``True`` for the zero-preserving activations and dropouts this module lists.
    """
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _ZERO_PRESERVING_MODULES)
    if node.op == "call_function":
        return node.target in _ZERO_PRESERVING_FUNCTIONS
    if node.op == "call_method":
        return node.target in _ZERO_PRESERVING_METHODS
    return False


def is_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` pools each channel on its own (max or average, fixed or adaptive).

    Args:
        node: A node of the graph.
        modules: The traced model's modules by qualified name.

    Returns:
        ``True`` for 2-D max and average pooling, modules or functions.
    """
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _POOL_MODULES)
    return node.op == "call_function" and node.target in _POOL_FUNCTIONS


def is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` is ``flatten(x, 1)`` / ``x.flatten(1)`` / ``nn.Flatten()``.

    Args:
        node: A node of the graph.
        modules: The traced model's modules by qualified name.

    Returns:
        ``True`` for a flatten of every dimension after the batch (channels-major features).
    """
    if node.op == "call_module":
        m = modules[str(node.target)]
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    if (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    ):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    return False


def keeps_zeros(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` keeps each zero channel of its only tensor input at zero.

    Args:
        node: A node of the graph.
        modules: The traced model's modules by qualified name.

    Returns:
        ``True`` for the zero-preserving element-wise ops and channel-wise pooling, reading
        their first argument as their only tensor.
    """
    first = node.args[0] if node.args else None
    if not isinstance(first, fx.Node) or not tensor_args_only(node, first):
        return False
    return is_elementwise(node, modules) or is_pool(node, modules)
