""":func:`purge`: trace the gated model, plan what survives, and rewrite the graph accordingly.

The steps, each in its own module: trace (:mod:`l0_sparsity.nn.graph`), plan
(:mod:`~l0_sparsity.purging.plan`), shrink the modules (:mod:`~l0_sparsity.purging.shrink`);
this module swaps the shrunk modules in, inserts the scatters and selections the plan asks for,
and recompiles the ``GraphModule``. The rules are in :mod:`l0_sparsity.purging`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from l0_sparsity.nn import GatedBatchNorm2d
from l0_sparsity.nn.bert import holds_bert_gates
from l0_sparsity.nn.graph import GatedGraph
from l0_sparsity.purging.bert import purge_bert
from l0_sparsity.purging.plan import PurgePlan, plan_purge
from l0_sparsity.purging.shrink import shrunk, shrunk_norm

__all__ = ["purge"]


def purge(model: nn.Module) -> nn.Module:
    """Build a physically smaller dense model from a trained gated model.

    Groups whose test-time gate is 0 are removed, the remaining gates are folded into the
    weights (or into the following norm's affine parameters), and the next layers' inputs are
    sliced accordingly (see :mod:`l0_sparsity.purging` for the exact rules). ``model`` is not
    modified.

    Args:
        model: A model containing gated layers; it must be traceable with torch.fx, unless it
            holds BERT-style blocks with head gates, which are purged block by block
            (:func:`~l0_sparsity.purging.bert.purge_bert`: a copy of the model's own classes).

    Returns:
        A :class:`torch.fx.GraphModule` in eval mode, made of plain torch modules and ops, whose
        output equals ``model.eval()``'s output up to float rounding. It pickles without this
        package (``torch.save``; reload with ``torch.load(path, weights_only=False)``). For a
        head-gated BERT-style model: a smaller copy of it, in eval mode, with plain layers.

    Raises:
        ValueError: If the model cannot be traced.
    """
    if holds_bert_gates(model):
        return purge_bert(model)
    graph = GatedGraph(model)
    nodes = list(graph.gm.graph.nodes)
    plan = plan_purge(graph)
    for target in list(graph.calls):
        new = _replacement(graph, plan, target)
        if new is not None:
            graph.gm.add_submodule(target, new)
    names = (f"_purge_index_{i}" for i in itertools.count())
    _insert_scatters(graph.gm, plan, names)
    _insert_selects(graph.gm, nodes, plan, names)
    graph.gm.graph.lint()
    graph.gm.recompile()
    graph.gm.delete_all_unused_submodules()
    return graph.gm.eval()


def _replacement(graph: GatedGraph, plan: PurgePlan, target: str) -> nn.Module | None:
    """The plain, sliced replacement of the module at ``target`` (``None``: it stays)."""
    module = graph.modules[target]
    if isinstance(module, GatedBatchNorm2d):
        return shrunk_norm(module, plan.keep_out.get(target))
    return shrunk(module, plan.keep_out.get(target), plan.keep_in.get(target))


def _index_buffer(gm: fx.GraphModule, names: Iterator[str], value: Tensor) -> str:
    """Register ``value`` as a buffer of ``gm`` under the next of ``names``; return the name."""
    name = next(names)
    gm.register_buffer(name, value)
    return name


def _insert_scatters(gm: fx.GraphModule, plan: PurgePlan, names: Iterator[str]) -> None:
    """Scatter each planned node's kept channels back to full width with zeros."""
    graph = gm.graph
    for node, src in plan.scatter:
        name = _index_buffer(gm, names, src)
        with graph.inserting_after(node):
            padded = graph.call_function(F.pad, (node, (0, 0, 0, 0, 0, 1)))
        with graph.inserting_after(padded):
            index = graph.get_attr(name)
        with graph.inserting_after(index):
            scattered = graph.call_function(torch.index_select, (padded, 1, index))
        node.replace_all_uses_with(
            scattered, delete_user_cb=lambda user, pad=padded: user is not pad
        )


def _insert_selects(
    gm: fx.GraphModule, nodes: list[fx.Node], plan: PurgePlan, names: Iterator[str]
) -> None:
    """Make each planned layer pick its kept features (depthwise convs: channels) from its input."""
    graph = gm.graph
    for node in nodes:
        positions = plan.select.get(str(node.target)) if node.op == "call_module" else None
        if positions is None:
            continue
        dim = 1 if isinstance(gm.get_submodule(str(node.target)), nn.Conv2d) else -1
        name = _index_buffer(gm, names, positions)
        with graph.inserting_before(node):
            index = graph.get_attr(name)
            picked = graph.call_function(torch.index_select, (node.args[0], dim, index))
        node.args = (picked, *node.args[1:])
