"""The traced graph of a gated model: which layers feed which, channel by channel.

:class:`GatedGraph` traces an eval-mode copy of the model with torch.fx (gated modules as
leaves) and answers the questions that deciding a purge asks of it: which node carries a conv's
gated channels, which layers read them through ops that keep zeros at zero (the *consumers*, that
can lose those input channels), and which linear layer produces a gated linear layer's input (the
*producer*, that can lose those output rows). :mod:`~l0_sparsity.nn.structure` reads these answers
into the rules that both the purge (:mod:`l0_sparsity.purging`) and the compute measures
(:mod:`l0_sparsity.measures.compute`) follow.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from l0_sparsity.nn.batchnorm import GatedBatchNorm2d
from l0_sparsity.nn.conv import L0Conv2d
from l0_sparsity.nn.following import is_depthwise
from l0_sparsity.nn.linear import L0Linear
from l0_sparsity.nn.sparsifying import GateLeafTracer

__all__ = ["GatedGraph"]

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


def _tensor_args_only(node: fx.Node, first: fx.Node) -> bool:
    """Whether ``first`` is the node's first argument and no other argument is a node."""
    args = list(node.args) + list(node.kwargs.values())
    if not args or args[0] is not first:
        return False
    return not any(isinstance(a, fx.Node) for a in args[1:])


def _is_elementwise(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _ZERO_PRESERVING_MODULES)
    if node.op == "call_function":
        return node.target in _ZERO_PRESERVING_FUNCTIONS
    if node.op == "call_method":
        return node.target in _ZERO_PRESERVING_METHODS
    return False


def _is_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _POOL_MODULES)
    return node.op == "call_function" and node.target in _POOL_FUNCTIONS


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """``flatten(x, 1)`` / ``x.flatten(1)`` / ``nn.Flatten()`` (channels-major features)."""
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


def _make_picklable(graph: fx.Graph) -> None:
    """Strip what would stop the purged ``GraphModule`` from pickling on its own.

    * Under ``from __future__ import annotations`` the tracer records ``forward``'s annotations
      as strings (``"Tensor"``); the generated code then holds a string where a type belongs and
      ``torch.save`` fails. The annotations are cosmetic and are dropped.
    * The graph remembers its tracer class (:class:`GateLeafTracer`), which a pickle would
      reference; unpickling would then need this package. torch.fx's default tracer is used
      instead, which is all that reloading needs.
    """
    for node in graph.nodes:
        if isinstance(node.type, str):
            node.type = None
    graph._tracer_cls = None


class GatedGraph:
    """An eval-mode copy of a gated model traced into a ``GraphModule``, and queries on its graph.

    The copy is the model that purging rewrites; ``model`` itself is not modified.

    Args:
        model: A model containing gated layers; it must be traceable with torch.fx.

    Attributes:
        gm: The traced copy, named ``<model class>Purged``.
        modules: Its modules by qualified name, as traced (replacing a module of ``gm`` later
            does not change this mapping).
        calls: How many times the graph calls each module.

    Raises:
        ValueError: If the model cannot be traced.
    """

    def __init__(self, model: nn.Module) -> None:
        model = copy.deepcopy(model).eval()
        tracer = GateLeafTracer()
        try:
            graph = tracer.trace(model)
        except Exception as exc:
            raise ValueError(
                f"{type(model).__name__} does not trace with torch.fx, which purging and the "
                "compute measures need (no data-dependent control flow in forward): "
                f"{exc}"
            ) from exc
        _make_picklable(graph)
        self.gm = fx.GraphModule(model, graph, type(model).__name__ + "Purged")
        self.modules = dict(self.gm.named_modules())
        self.calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")

    def module(self, node: fx.Node) -> nn.Module | None:
        """The module ``node`` calls, or ``None`` if it calls none."""
        if node.op != "call_module":
            return None
        return self.modules[str(node.target)]

    def single_call(self, node: fx.Node) -> bool:
        """Whether ``node`` calls a module that the graph calls only once."""
        return node.op == "call_module" and self.calls[str(node.target)] == 1

    def output_node(self, node: fx.Node, conv: L0Conv2d) -> fx.Node | None:
        """The node whose output carries the conv's gated channels (its norm, if gated there)."""
        if not conv.gate_in_norm:
            return node
        users = list(node.users)
        if len(users) == 1:
            norm = self.module(users[0])
            if isinstance(norm, GatedBatchNorm2d) and norm.gate_layer is conv:
                if self.single_call(users[0]) and _tensor_args_only(users[0], node):
                    return users[0]
        return None

    def consumers(
        self, start: fx.Node, channels: int, conv: nn.Module | None = None
    ) -> list[tuple[fx.Node, bool]] | None:
        """Layers that read ``start``'s channels through zero-preserving ops, or ``None``.

        Returns ``(node, flattened)`` pairs: convolutions (``flattened=False``) and linear
        layers after a channels-major flatten (``True``). A plain depthwise convolution that
        outputs zeros for zero inputs
        (:meth:`~l0_sparsity.nn.graph.GatedGraph.follower_output`) is returned too: it follows the
        channels of ``conv``, the convolution whose gates decide ``start``'s channels, and the
        layers reading its output are found by a search of their own from there.
        """
        found: list[tuple[fx.Node, bool]] = []
        stack = [(start, False)]
        seen: set[fx.Node] = set()
        while stack:
            cur, flat = stack.pop()
            for user in cur.users:
                if user in seen:
                    continue
                seen.add(user)
                module = self.module(user)
                if not _tensor_args_only(user, cur):
                    return None
                if _is_elementwise(user, self.modules) or (
                    not flat and _is_pool(user, self.modules)
                ):
                    stack.append((user, flat))
                elif not flat and _is_flatten(user, self.modules):
                    stack.append((user, True))
                elif not flat and isinstance(module, nn.Conv2d) and is_depthwise(module):
                    if self.follower_output(user, channels, conv) is None:
                        return None
                    found.append((user, False))
                elif (
                    not flat
                    and isinstance(module, nn.Conv2d | L0Conv2d)
                    and module.groups == 1
                    and module.in_channels == channels
                    and self.single_call(user)
                ):
                    found.append((user, False))
                elif (
                    flat
                    and isinstance(module, nn.Linear | L0Linear)
                    and module.in_features % channels == 0
                    and self.single_call(user)
                ):
                    found.append((user, True))
                else:
                    return None
        return found

    def follower_output(
        self, node: fx.Node, channels: int, conv: nn.Module | None
    ) -> fx.Node | None:
        """Where a plain depthwise conv reading ``channels`` outputs zeros for zero inputs.

        Its :class:`~l0_sparsity.nn.GatedBatchNorm2d` applying ``conv``'s gates (set by
        :func:`~l0_sparsity.nn.sparsify`), or the conv itself when it has no bias; ``None``
        otherwise (a bias or a plain norm turns the zeros into constants).
        """
        module = self.module(node)
        if type(module) is not nn.Conv2d or module.in_channels != channels:
            return None
        if not self.single_call(node):
            return None
        users = list(node.users)
        if len(users) == 1 and conv is not None:
            norm = self.module(users[0])
            if isinstance(norm, GatedBatchNorm2d) and norm.gate_layer is conv:
                if self.single_call(users[0]) and _tensor_args_only(users[0], node):
                    return users[0]
        return node if module.bias is None else None

    def producer(self, node: fx.Node, features: int) -> fx.Node | None:
        """A linear layer feeding only ``node`` through element-wise ops, if any."""
        cur = node.args[0] if node.args else None
        while isinstance(cur, fx.Node) and len(cur.users) == 1:
            module = self.module(cur)
            if isinstance(module, nn.Linear | L0Linear):
                ok = module.out_features == features and self.single_call(cur)
                return cur if ok else None
            if not (_is_elementwise(cur, self.modules) and cur.args):
                return None
            cur = cur.args[0]
        return None
