"""Purge a trained gated model into a physically smaller dense model.

:func:`purge` traces the gated model with torch.fx (gated layers as leaves) and rewrites the
graph into a :class:`torch.fx.GraphModule` made only of plain torch modules and ops:

* every gated layer becomes a plain ``nn.Linear`` / ``nn.Conv2d`` with its test-time gates
  folded into the weights, and every :class:`~l0_sparsity.nn.layers.GatedBatchNorm2d` a plain
  ``nn.BatchNorm2d`` with the gates folded into its affine parameters;
* a structured conv keeps only the filters whose test-time gate is positive (its norm is sliced
  alike). If its output reaches convolutions or a flattened linear layer only through
  channel-wise ops that map 0 to 0 (ReLU, pooling, dropout, ...), those consumers lose the
  matching input channels. Otherwise (e.g. a residual addition, whose width is fixed) the kept
  channels are scattered back to the full width with zeros: ``index_select(pad(x), 1, src)``;
* a structured linear layer keeps the input columns whose gate is positive; the producing
  linear layer (through element-wise activations) loses the matching output rows, or else the
  kept features are picked with ``index_select``.

A group set that is entirely dead keeps its first group, whose folded gate is 0: the layer then
outputs exact zeros of the right shape, and no zero-width tensor is ever created.

The purged model computes the gated model's **eval-mode** output (test-time gates, BatchNorm
running statistics) up to float rounding.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.utils.flop_counter import FlopCounterMode

from l0_sparsity.nn.layers import (
    GatedBatchNorm2d,
    GatedLayer,
    GateLeafTracer,
    L0Conv2d,
    L0Linear,
    gated_layers,
)

__all__ = [
    "PurgeReport",
    "count_flops",
    "count_params",
    "purge",
    "purge_report",
    "save_purged",
]

_Layer = TypeVar("_Layer", nn.Conv2d, nn.Linear)

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


@dataclass
class _Plan:
    """Index bookkeeping of a purge, keyed by module target."""

    keep_out: dict[str, Tensor] = field(default_factory=dict)
    keep_in: dict[str, Tensor] = field(default_factory=dict)
    select: dict[str, Tensor] = field(default_factory=dict)
    scatter: list[tuple[fx.Node, Tensor]] = field(default_factory=list)


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


class _Purger:
    """One purge: trace, plan the index sets, rebuild the modules, rewrite the graph."""

    def __init__(self, model: nn.Module) -> None:
        model = copy.deepcopy(model).eval()
        tracer = GateLeafTracer()
        try:
            graph = tracer.trace(model)
        except Exception as exc:
            raise ValueError(
                "purge needs a model that torch.fx can trace symbolically "
                "(no data-dependent control flow in forward)"
            ) from exc
        _make_picklable(graph)
        self.gm = fx.GraphModule(model, graph, type(model).__name__ + "Purged")
        self.modules = dict(self.gm.named_modules())
        self.calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
        self.plan = _Plan()
        self._buffers = 0

    # ------------------------------------------------------------------ helpers

    def module(self, node: fx.Node) -> nn.Module | None:
        if node.op != "call_module":
            return None
        return self.modules[str(node.target)]

    def single_call(self, node: fx.Node) -> bool:
        return node.op == "call_module" and self.calls[str(node.target)] == 1

    @staticmethod
    def kept(layer: GatedLayer) -> Tensor:
        """Indices of the active gates; the first gate alone if none is active."""
        idx = layer.active_mask().nonzero().flatten()
        return idx if idx.numel() else idx.new_zeros(1)

    # ------------------------------------------------------------------ planning

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

    def consumers(self, start: fx.Node, channels: int) -> list[tuple[fx.Node, bool]] | None:
        """Layers that read ``start``'s channels through zero-preserving ops, or ``None``.

        Returns ``(node, flattened)`` pairs: convolutions (``flattened=False``) and linear
        layers after a channels-major flatten (``True``).
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

    def plan_conv(self, node: fx.Node, conv: L0Conv2d) -> None:
        if not conv.structured or conv.groups != 1 or not self.single_call(node):
            return
        keep = self.kept(conv)
        if keep.numel() == conv.out_channels:
            return
        out = self.output_node(node, conv)
        if out is None:
            return
        self.plan.keep_out[str(node.target)] = keep
        users = self.consumers(out, conv.out_channels)
        if users is None:
            self.plan.scatter.append((out, self.scatter_index(keep, conv.out_channels)))
            return
        for user, flat in users:
            module = self.module(user)
            if flat:
                assert isinstance(module, nn.Linear | L0Linear)
                size = module.in_features // conv.out_channels
                offsets = torch.arange(size, device=keep.device)
                self.plan.keep_in[str(user.target)] = (keep[:, None] * size + offsets).flatten()
            else:
                self.plan.keep_in[str(user.target)] = keep

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

    def plan_linear(self, node: fx.Node, linear: L0Linear) -> None:
        if not linear.structured or not self.single_call(node):
            return
        keep = self.kept(linear)
        if keep.numel() == linear.in_features:
            return
        source = self.producer(node, linear.in_features)
        if source is not None and str(source.target) not in self.plan.keep_out:
            self.plan.keep_out[str(source.target)] = keep
            self.plan.keep_in[str(node.target)] = keep
            return
        target = str(node.target)
        present = self.plan.keep_in.get(target)
        if present is None:
            present = torch.arange(linear.in_features, device=keep.device)
        mask = linear.active_mask()[present]
        positions = mask.nonzero().flatten()
        if positions.numel() == 0:
            positions = positions.new_zeros(1)
        if positions.numel() < present.numel():
            self.plan.select[target] = positions
            self.plan.keep_in[target] = present[positions]

    # ------------------------------------------------------------------ rebuilding

    @staticmethod
    def scatter_index(keep: Tensor, channels: int) -> Tensor:
        """``src[c]`` = position of channel ``c`` among the kept ones, else the pad channel."""
        src = torch.full((channels,), keep.numel(), dtype=torch.long, device=keep.device)
        src[keep] = torch.arange(keep.numel(), device=keep.device)
        return src

    def rebuilt(self, target: str, module: nn.Module) -> nn.Module | None:
        """The plain, sliced replacement of ``module`` (``None`` if it stays as it is)."""
        keep_out = self.plan.keep_out.get(target)
        keep_in = self.plan.keep_in.get(target)
        if isinstance(module, GatedBatchNorm2d):
            dense: nn.Module = module.dense_module()
            conv_target = next((t for t, m in self.modules.items() if m is module.gate_layer), None)
            keep_out = self.plan.keep_out.get(conv_target) if conv_target else None
            return _slice_norm(dense, keep_out) if keep_out is not None else dense
        if isinstance(module, GatedLayer):
            dense = module.dense_module()
        elif keep_out is not None or keep_in is not None:
            dense = module
        else:
            return None
        if keep_out is None and keep_in is None:
            return dense
        if isinstance(dense, nn.Conv2d):
            return _slice_conv(dense, keep_out, keep_in)
        if isinstance(dense, nn.Linear):
            return _slice_linear(dense, keep_out, keep_in)
        return dense

    def buffer(self, value: Tensor) -> str:
        name = f"_purge_index_{self._buffers}"
        self._buffers += 1
        self.gm.register_buffer(name, value)
        return name

    def run(self) -> fx.GraphModule:
        graph = self.gm.graph
        nodes = list(graph.nodes)
        for node in nodes:
            module = self.module(node)
            if isinstance(module, L0Conv2d):
                self.plan_conv(node, module)
        for node in nodes:
            module = self.module(node)
            if isinstance(module, L0Linear):
                self.plan_linear(node, module)
        for target in list(self.calls):
            new = self.rebuilt(target, self.modules[target])
            if new is not None:
                self.gm.add_submodule(target, new)
        for node, src in self.plan.scatter:
            name = self.buffer(src)
            with graph.inserting_after(node):
                padded = graph.call_function(F.pad, (node, (0, 0, 0, 0, 0, 1)))
            with graph.inserting_after(padded):
                index = graph.get_attr(name)
            with graph.inserting_after(index):
                scattered = graph.call_function(torch.index_select, (padded, 1, index))
            node.replace_all_uses_with(
                scattered, delete_user_cb=lambda user, pad=padded: user is not pad
            )
        for node in nodes:
            positions = self.plan.select.get(str(node.target)) if node.op == "call_module" else None
            if positions is None:
                continue
            name = self.buffer(positions)
            with graph.inserting_before(node):
                index = graph.get_attr(name)
                picked = graph.call_function(torch.index_select, (node.args[0], -1, index))
            node.args = (picked, *node.args[1:])
        graph.lint()
        self.gm.recompile()
        self.gm.delete_all_unused_submodules()
        return self.gm.eval()


def _sliced(
    layer: nn.Conv2d | nn.Linear, keep_out: Tensor | None, keep_in: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """``layer``'s detached weight and bias, keeping ``keep_out`` outputs and ``keep_in`` inputs."""
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    if keep_out is not None:
        weight = weight[keep_out]
        bias = None if bias is None else bias[keep_out]
    if keep_in is not None:
        weight = weight[:, keep_in]
    return weight, bias


def _filled(out: _Layer, weight: Tensor, bias: Tensor | None, training: bool) -> _Layer:
    """``out`` holding copies of ``weight`` and ``bias``, in training mode if ``training``."""
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out.train(training)


def _slice_conv(conv: nn.Conv2d, keep_out: Tensor | None, keep_in: Tensor | None) -> nn.Conv2d:
    weight, bias = _sliced(conv, keep_out, keep_in)
    out = nn.Conv2d(
        weight.shape[1],
        weight.shape[0],
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        1,
        bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    return _filled(out, weight, bias, conv.training)


def _slice_linear(linear: nn.Linear, keep_out: Tensor | None, keep_in: Tensor | None) -> nn.Linear:
    weight, bias = _sliced(linear, keep_out, keep_in)
    out = nn.Linear(
        weight.shape[1], weight.shape[0], bias is not None, device=weight.device, dtype=weight.dtype
    )
    return _filled(out, weight, bias, linear.training)


def _slice_norm(norm: nn.Module, keep: Tensor) -> nn.BatchNorm2d:
    assert isinstance(norm, nn.BatchNorm2d)
    out = nn.BatchNorm2d(
        keep.numel(),
        norm.eps,
        norm.momentum,
        norm.affine,
        norm.track_running_stats,
        device=keep.device,
        dtype=norm.weight.dtype if norm.weight is not None else None,
    )
    state = {k: (v[keep] if v.dim() == 1 else v) for k, v in norm.state_dict().items()}
    out.load_state_dict(state)
    return out.train(norm.training)


def purge(model: nn.Module) -> fx.GraphModule:
    """Build a physically smaller dense model from a trained gated model.

    Groups whose test-time gate is 0 are removed, the remaining gates are folded into the
    weights (or into the following norm's affine parameters), and the next layers' inputs are
    sliced accordingly (see the module docstring for the exact rules). ``model`` is not
    modified.

    Args:
        model: A model containing gated layers; it must be traceable with torch.fx.

    Returns:
        A :class:`torch.fx.GraphModule` in eval mode, made of plain torch modules and ops, whose
        output equals ``model.eval()``'s output up to float rounding. It pickles without this
        package (``torch.save``; reload with ``torch.load(path, weights_only=False)``).

    Raises:
        ValueError: If the model cannot be traced.
    """
    return _Purger(model).run()


def count_params(model: nn.Module, include_gates: bool = False) -> int:
    """Number of parameters of ``model`` (shared parameters counted once).

    Args:
        model: Any module.
        include_gates: Whether to count the ``log α`` gate parameters too.

    Returns:
        The parameter count.
    """
    gates = set() if include_gates else {id(layer.log_alpha) for _, layer in gated_layers(model)}
    return sum(p.numel() for p in model.parameters() if id(p) not in gates)


def _example(model: nn.Module, input_shape: tuple[int, ...] | Tensor) -> Tensor:
    if isinstance(input_shape, Tensor):
        return input_shape
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else None
    dtype = ref.dtype if ref is not None else None
    return torch.randn(tuple(input_shape), device=device, dtype=dtype)


def count_flops(model: nn.Module, input_shape: tuple[int, ...] | Tensor) -> int:
    """FLOPs of one eval-mode forward pass, measured with ``FlopCounterMode``.

    Counts the matrix products and convolutions (2 FLOPs per multiply-add); element-wise ops
    are not counted. The model's training mode is restored afterwards.

    Args:
        model: Any module.
        input_shape: Shape of the input batch (a random input is drawn), or the input itself.

    Returns:
        Total FLOPs.
    """
    x = _example(model, input_shape)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class PurgeReport:
    """Sizes of a gated model and of its purge.

    Attributes:
        params_gated: Parameters of the gated model, gates excluded.
        params_purged: Parameters of the purged model.
        flops_gated: FLOPs of one gated forward pass.
        flops_purged: FLOPs of one purged forward pass.
        kept_groups: ``{layer name: (kept groups, total groups)}`` per gated layer.
    """

    params_gated: int
    params_purged: int
    flops_gated: int
    flops_purged: int
    kept_groups: dict[str, tuple[int, int]]

    @property
    def param_ratio(self) -> float:
        """``params_purged / params_gated``."""
        return self.params_purged / self.params_gated

    @property
    def flop_ratio(self) -> float:
        """``flops_purged / flops_gated``."""
        return self.flops_purged / self.flops_gated

    def __str__(self) -> str:
        lines = [
            f"params {self.params_gated:,} -> {self.params_purged:,} ({self.param_ratio:.1%})",
            f"FLOPs  {self.flops_gated:,} -> {self.flops_purged:,} ({self.flop_ratio:.1%})",
        ]
        lines += [f"  {name}: {k}/{n}" for name, (k, n) in self.kept_groups.items()]
        return "\n".join(lines)


def purge_report(
    gated: nn.Module,
    input_shape: tuple[int, ...] | Tensor,
    purged: nn.Module | None = None,
) -> PurgeReport:
    """Compare a gated model with its purge.

    Args:
        gated: The gated model.
        input_shape: Input batch shape (or input) for the FLOP count.
        purged: Its purge; computed with :func:`purge` if omitted.

    Returns:
        The report.
    """
    purged = purge(gated) if purged is None else purged
    x = _example(gated, input_shape)
    kept = {
        name: (int(layer.active_mask().sum()), layer.num_gates)
        for name, layer in gated_layers(gated)
    }
    return PurgeReport(
        params_gated=count_params(gated),
        params_purged=count_params(purged),
        flops_gated=count_flops(gated, x),
        flops_purged=count_flops(purged, x),
        kept_groups=kept,
    )


def save_purged(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_input: Tensor,
    dynamic_batch: bool = True,
) -> torch.export.ExportedProgram:
    """Export the purged model with ``torch.export`` and save it to ``path``.

    A gated model is purged first. The file reloads with plain torch, without this package::

        program = torch.export.load(path)
        logits = program.module()(images)

    Args:
        model: A gated model, or an already purged one.
        path: Destination file (conventionally ``*.pt2``).
        example_input: An input batch used for tracing.
        dynamic_batch: Whether the exported program accepts any batch size (>= 2 guaranteed).

    Returns:
        The exported program.
    """
    if gated_layers(model) or any(isinstance(m, GatedBatchNorm2d) for m in model.modules()):
        model = purge(model)
    model = model.eval()
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim.AUTO},)
    program = torch.export.export(model, (example_input,), dynamic_shapes=dynamic_shapes)
    torch.export.save(program, os.fspath(path))
    return program
