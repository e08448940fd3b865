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

from torch import fx, nn

from l0_sparsity.nn.batchnorm import GatedBatchNorm2d
from l0_sparsity.nn.channel_ops import is_elementwise, is_flatten, is_pool, tensor_args_only
from l0_sparsity.nn.conv import L0Conv2d
from l0_sparsity.nn.following import can_follow
from l0_sparsity.nn.linear import L0Linear
from l0_sparsity.nn.sparsifying import GateLeafTracer

__all__ = ["GatedGraph"]


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
                if self.single_call(users[0]) and tensor_args_only(users[0], node):
                    return users[0]
        return None

    def consumers(
        self, start: fx.Node, channels: int, conv: nn.Module | None = None, block: int = 1
    ) -> list[tuple[fx.Node, bool]] | None:
        """Layers that read ``start``'s channels through zero-preserving ops, or ``None``.

        Returns ``(node, flattened)`` pairs: convolutions (``flattened=False``) and linear
        layers after a channels-major flatten (``True``). A plain grouped convolution (depthwise
        ones included) whose groups each read channels of one gate (``block`` consecutive
        channels share a gate: :func:`~l0_sparsity.nn.following.can_follow`) and that outputs
        zeros for zero inputs (:meth:`~l0_sparsity.nn.graph.GatedGraph.follower_output`) is
        returned too: it follows the channels of ``conv``, the convolution whose gates decide
        ``start``'s channels, and the layers reading its output are found by a search of their
        own from there.
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
                if not tensor_args_only(user, cur):
                    return None
                if is_elementwise(user, self.modules) or (not flat and is_pool(user, self.modules)):
                    stack.append((user, flat))
                elif not flat and is_flatten(user, self.modules):
                    stack.append((user, True))
                elif not flat and isinstance(module, nn.Conv2d) and module.groups > 1:
                    if not can_follow(module, block):
                        return None
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
        """Where a plain grouped conv reading ``channels`` outputs zeros for zero inputs.

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
                if self.single_call(users[0]) and tensor_args_only(users[0], node):
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
            if not (is_elementwise(cur, self.modules) and cur.args):
                return None
            cur = cur.args[0]
        return None
