"""The purge plan: which outputs and inputs of each layer survive, decided from the gates.

:func:`plan_purge` walks the traced graph (:class:`~l0_sparsity.purging.graph.GatedGraph`):
first the structured convolutions (the filters they keep, and the input channels their
consumers keep, or a scatter back to full width when the channels reach something whose width is
fixed), then the structured linear layers (the columns they keep, and the rows their producer
keeps, or a selection of the kept features). It only decides; :mod:`~l0_sparsity.purging.rewrite`
applies the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn

from l0_sparsity.nn import GatedLayer, L0Conv2d, L0Linear
from l0_sparsity.purging.graph import GatedGraph

__all__ = ["PurgePlan", "plan_purge"]


@dataclass
class PurgePlan:
    """Index bookkeeping of a purge, keyed by module target.

    Attributes:
        keep_out: Output rows / filters each layer keeps.
        keep_in: Input columns / channels each layer keeps.
        select: Positions of the features a linear layer picks from its (already sliced) input
            with ``index_select``, where no producer can drop them.
        scatter: ``(node, src)``: the node's kept channels are scattered back to full width
            with zeros (``index_select(pad(x), 1, src)``).
    """

    keep_out: dict[str, Tensor] = field(default_factory=dict)
    keep_in: dict[str, Tensor] = field(default_factory=dict)
    select: dict[str, Tensor] = field(default_factory=dict)
    scatter: list[tuple[fx.Node, Tensor]] = field(default_factory=list)


def plan_purge(graph: GatedGraph) -> PurgePlan:
    """Decide what every gated layer of ``graph`` and its neighbours keep.

    Args:
        graph: The traced gated model.

    Returns:
        The plan: convolutions are planned first, then linear layers.
    """
    plan = PurgePlan()
    nodes = list(graph.gm.graph.nodes)
    for node in nodes:
        module = graph.module(node)
        if isinstance(module, L0Conv2d):
            _plan_conv(graph, plan, node, module)
    for node in nodes:
        module = graph.module(node)
        if isinstance(module, L0Linear):
            _plan_linear(graph, plan, node, module)
    return plan


def _kept(layer: GatedLayer) -> Tensor:
    """Indices of the active gates of ``layer``; the first gate alone if none is active.

    Args:
        layer: A gated layer.

    Returns:
        A non-empty vector of gate indices.
    """
    idx = layer.active_mask().nonzero().flatten()
    return idx if idx.numel() else idx.new_zeros(1)


def _scatter_index(keep: Tensor, channels: int) -> Tensor:
    """``src[c]`` = position of channel ``c`` among the kept ones, else the pad channel.

    Args:
        keep: Indices of the kept channels.
        channels: The full width.

    Returns:
        The ``index_select`` source of each of the ``channels`` channels.
    """
    src = torch.full((channels,), keep.numel(), dtype=torch.long, device=keep.device)
    src[keep] = torch.arange(keep.numel(), device=keep.device)
    return src


def _plan_conv(graph: GatedGraph, plan: PurgePlan, node: fx.Node, conv: L0Conv2d) -> None:
    if not conv.structured or conv.groups != 1 or not graph.single_call(node):
        return
    keep = _kept(conv)
    if keep.numel() == conv.out_channels:
        return
    out = graph.output_node(node, conv)
    if out is None:
        return
    plan.keep_out[str(node.target)] = keep
    users = graph.consumers(out, conv.out_channels)
    if users is None:
        plan.scatter.append((out, _scatter_index(keep, conv.out_channels)))
        return
    for user, flat in users:
        module = graph.module(user)
        if flat:
            assert isinstance(module, nn.Linear | L0Linear)
            size = module.in_features // conv.out_channels
            offsets = torch.arange(size, device=keep.device)
            plan.keep_in[str(user.target)] = (keep[:, None] * size + offsets).flatten()
        else:
            plan.keep_in[str(user.target)] = keep


def _plan_linear(graph: GatedGraph, plan: PurgePlan, node: fx.Node, linear: L0Linear) -> None:
    if not linear.structured or not graph.single_call(node):
        return
    keep = _kept(linear)
    if keep.numel() == linear.in_features:
        return
    source = graph.producer(node, linear.in_features)
    if source is not None and str(source.target) not in plan.keep_out:
        plan.keep_out[str(source.target)] = keep
        plan.keep_in[str(node.target)] = keep
        return
    target = str(node.target)
    present = plan.keep_in.get(target)
    if present is None:
        present = torch.arange(linear.in_features, device=keep.device)
    mask = linear.active_mask()[present]
    positions = mask.nonzero().flatten()
    if positions.numel() == 0:
        positions = positions.new_zeros(1)
    if positions.numel() < present.numel():
        plan.select[target] = positions
        plan.keep_in[target] = present[positions]
