"""The purge plan: which outputs and inputs of each layer survive, decided from the gates.

:func:`plan_purge` evaluates the width rules of the traced graph
(:func:`~l0_sparsity.nn.structure.purge_structure`, the analysis the compute measures share) at
the test-time gates: the filters each structured convolution keeps, and the input channels its
consumers keep, or a scatter back to full width when the channels reach something whose width is
fixed; the columns each structured linear layer keeps, and the rows its producer keeps, or a
selection of the kept features. It only decides; :mod:`~l0_sparsity.purging.rewrite` applies the
plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, fx

from l0_sparsity.nn import GatedLayer
from l0_sparsity.nn.graph import GatedGraph
from l0_sparsity.nn.structure import Kept, Picked, purge_structure

__all__ = ["PurgePlan", "plan_purge"]


@dataclass
class PurgePlan:
    """Index bookkeeping of a purge, keyed by module target.

    Attributes:
        keep_out: Output rows / filters each layer keeps (channels, for a gated norm).
        keep_in: Input columns / channels each layer keeps.
        select: Positions of the features a linear layer picks from its (already sliced) input
            with ``index_select``, where no producer can drop them; for a gated depthwise
            convolution, the input channels it keeps.
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
        The plan: a layer whose rule keeps everything at the test-time gates is left out.
    """
    structure = purge_structure(graph)
    plan = PurgePlan()
    for target, rule in structure.outputs.items():
        keep = _kept_indices(graph, rule)
        if keep is not None:
            plan.keep_out[target] = keep
    for norm, conv in structure.norms.items():
        if conv is not None and conv in plan.keep_out:
            plan.keep_out[norm] = plan.keep_out[conv]
    for target, rule in structure.picks.items():
        keep = _kept_indices(graph, rule)
        if keep is not None:
            plan.select[target] = keep
    for node, rule in structure.scatters:
        keep = _kept_indices(graph, rule)
        if keep is not None:
            width = graph.modules[rule.layer].num_gates * rule.repeat
            plan.scatter.append((node, _scatter_index(keep, width)))
    for target, rule in structure.inputs.items():
        if isinstance(rule, Kept):
            keep = _kept_indices(graph, rule)
            if keep is not None:
                plan.keep_in[target] = keep
        else:
            _plan_picked(graph, plan, target, rule)
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


def _kept_indices(graph: GatedGraph, rule: Kept) -> Tensor | None:
    """The entries ``rule`` keeps at the test-time gates, or ``None`` if it keeps them all."""
    layer = graph.modules[rule.layer]
    assert isinstance(layer, GatedLayer)
    keep = _kept(layer)
    if keep.numel() == layer.num_gates:
        return None
    if rule.repeat == 1:
        return keep
    offsets = torch.arange(rule.repeat, device=keep.device)
    return (keep[:, None] * rule.repeat + offsets).flatten()


def _plan_picked(graph: GatedGraph, plan: PurgePlan, target: str, rule: Picked) -> None:
    """The features a structured linear layer picks among those its input still has."""
    linear = graph.modules[rule.layer]
    assert isinstance(linear, GatedLayer)
    present = None if rule.within is None else _kept_indices(graph, rule.within)
    if present is not None:
        plan.keep_in[target] = present
    if _kept(linear).numel() == linear.num_gates:
        return
    if present is None:
        present = torch.arange(linear.num_gates, device=linear.log_alpha.device)
    mask = linear.active_mask()[present]
    positions = mask.nonzero().flatten()
    if positions.numel() == 0:
        positions = positions.new_zeros(1)
    if positions.numel() < present.numel():
        plan.select[target] = positions
        plan.keep_in[target] = present[positions]
