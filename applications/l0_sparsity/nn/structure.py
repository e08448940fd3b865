"""Which gates decide each layer's width after a purge: the one analysis purge and measures share.

:func:`purge_structure` reads a traced gated model (:class:`~l0_sparsity.nn.graph.GatedGraph`)
into rules that name, for every layer a purge can shrink, the gates that decide how many of its
output rows / filters and input columns / channels survive. It looks at the graph only, never at
the gates' values, so it holds for every gate pattern:

* the purge (:func:`l0_sparsity.purging.plan.plan_purge`) evaluates the rules at the test-time
  gates, into indices;
* the compute measures (:class:`l0_sparsity.measures.ComputeCost`) evaluate them at keep
  probabilities, into expected counts, and at the test-time 0/1 pattern, into the purged model's
  exact counts.

The rules, in the order the analysis applies them:

* a structured, ungrouped :class:`~l0_sparsity.nn.L0Conv2d` called once, whose gated channels
  leave through one node (itself, or its :class:`~l0_sparsity.nn.GatedBatchNorm2d`), keeps its
  :class:`Kept` filters (each gate deciding a block of ``channels_per_gate`` of them). The
  layers that read those channels through zero-preserving ops
  (:meth:`~l0_sparsity.nn.graph.GatedGraph.consumers`: ungrouped convolutions, linear layers
  after a flatten) keep the same input channels; a plain grouped convolution on the way whose
  groups each read channels of one gate (one that :func:`~l0_sparsity.nn.sparsify` left to
  follow these gates, depthwise or not) keeps the filters of the groups it still reads, and so
  does its norm, and the layers reading its output are read the same way; if anything else
  reads them (a residual addition, a grouped conv whose groups straddle gates, a gated
  depthwise conv, a BatchNorm of its own), they are scattered back to full width;
* a structured, gated depthwise :class:`~l0_sparsity.nn.L0Conv2d` (``groups == in_channels ==
  out_channels``) called once keeps its :class:`Kept` filters and picks the matching channels
  out of its input (``PurgeStructure.picks``); its consumers follow as above;
* a structured :class:`~l0_sparsity.nn.L0Linear` called once keeps its :class:`Kept` input
  columns and its producer (a linear layer feeding it through element-wise ops) the matching
  output rows; without a producer it :class:`Picked` its kept features out of its input;
* a :class:`~l0_sparsity.nn.attention.GatedMultiheadAttention` keeps its :class:`Kept` heads
  (each call is checked by :func:`~l0_sparsity.nn.attention.check_attention_call`).

Everything else keeps its width: unstructured layers, gated grouped convolutions other than
depthwise ones, plain grouped convolutions that follow no gates, layers called more than once,
ungated layers no rule names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

from l0_sparsity.nn.attention import GatedMultiheadAttention, check_attention_call
from l0_sparsity.nn.batchnorm import GatedBatchNorm2d
from l0_sparsity.nn.conv import L0Conv2d
from l0_sparsity.nn.following import is_depthwise
from l0_sparsity.nn.graph import GatedGraph
from l0_sparsity.nn.linear import L0Linear

__all__ = ["Kept", "Picked", "PurgeStructure", "Width", "purge_structure"]


@dataclass(frozen=True)
class Kept:
    """The groups of a gated layer whose test-time gate is positive (the first, if none is).

    Attributes:
        layer: Module target of the structured gated layer whose gates decide.
        repeat: Consecutive entries each gate decides (a conv's ``channels_per_gate``; the
            filters of a grouped conv's groups that read one gate's channels; a flattened
            ``C × H × W`` feature map gives ``H · W`` features per channel).
    """

    layer: str
    repeat: int = 1


@dataclass(frozen=True)
class Picked:
    """The features a structured linear layer picks from its input: those whose gate is positive.

    Attributes:
        layer: Module target of the structured :class:`~l0_sparsity.nn.L0Linear` that picks.
        within: The features its input still has (the channels a convolution keeps, flattened),
            or ``None`` for all of them. If none of them has a positive gate, the first is kept.
    """

    layer: str
    within: Kept | None = None


Width = Kept | Picked
"""A rule for how many of a layer's rows (outputs) or columns (inputs) survive a purge."""


@dataclass
class PurgeStructure:
    """The width rules of a purge, keyed by module target; a layer no rule names keeps its width.

    Attributes:
        outputs: Rule for the output rows / filters each layer keeps.
        inputs: Rule for the input columns / channels each layer keeps.
        scatters: ``(node, kept)``: the node carries the channels ``kept`` keeps (of a width
            of ``kept.repeat`` per gate), scattered back to full width with zeros.
        norms: Target of each :class:`~l0_sparsity.nn.GatedBatchNorm2d` the graph calls → target
            of the convolution whose output rule the norm's channels follow (the gated conv
            whose gates it applies, or a grouped conv that follows that conv), or ``None`` when
            all its rows stay.
        picks: The input channels each gated depthwise convolution picks from its input with
            ``index_select`` (its own kept filters).
    """

    outputs: dict[str, Kept] = field(default_factory=dict)
    inputs: dict[str, Width] = field(default_factory=dict)
    scatters: list[tuple[fx.Node, Kept]] = field(default_factory=list)
    norms: dict[str, str | None] = field(default_factory=dict)
    picks: dict[str, Kept] = field(default_factory=dict)


def purge_structure(graph: GatedGraph) -> PurgeStructure:
    """The width rules of every layer of ``graph`` that a purge can shrink.

    Args:
        graph: The traced gated model.

    Returns:
        The rules: convolutions are read first, then linear layers (a linear layer after a
        flatten picks among the channels its convolution keeps).
    """
    structure = PurgeStructure()
    nodes = list(graph.gm.graph.nodes)
    for node in nodes:
        module = graph.module(node)
        if isinstance(module, L0Conv2d):
            _read_conv(graph, structure, node, module)
    for node in nodes:
        module = graph.module(node)
        if isinstance(module, L0Linear):
            _read_linear(graph, structure, node, module)
    for node in nodes:
        if isinstance(graph.module(node), GatedMultiheadAttention):
            check_attention_call(str(node.target), node)
            structure.outputs[str(node.target)] = Kept(str(node.target))  # its kept heads
    for target in graph.calls:
        if isinstance(graph.modules[target], GatedBatchNorm2d):
            structure.norms.setdefault(target, None)
    return structure


def _read_conv(graph: GatedGraph, structure: PurgeStructure, node: fx.Node, conv: L0Conv2d) -> None:
    """The conv keeps its filters; its consumers the same channels, or they are scattered back."""
    depthwise = is_depthwise(conv)
    if not conv.structured or not (conv.groups == 1 or depthwise):
        return
    out = graph.output_node(node, conv) if graph.single_call(node) else None
    if out is None:
        return
    target = str(node.target)
    kept = Kept(target, conv.channels_per_gate)
    structure.outputs[target] = kept
    if depthwise:
        structure.picks[target] = kept
    if out is not node:
        structure.norms[str(out.target)] = target
    _read_channels(graph, structure, out, conv.out_channels, kept)


def _read_channels(
    graph: GatedGraph, structure: PurgeStructure, out: fx.Node, channels: int, kept: Kept
) -> None:
    """The layers reading ``out``'s channels keep them, or they are scattered back.

    ``kept`` is the rule of those ``channels`` (the gates of its layer decide them, ``repeat``
    consecutive channels each). A plain grouped conv on the way keeps the filters of the groups
    it still reads (and its norm the same channels); the layers reading its output are read the
    same way, from there.
    """
    conv = graph.modules[kept.layer]
    users = graph.consumers(out, channels, conv, kept.repeat)
    if users is None:
        structure.scatters.append((out, kept))
        return
    for user, flat in users:
        module = graph.module(user)
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            filters = Kept(kept.layer, kept.repeat * module.out_channels // channels)
            structure.outputs[str(user.target)] = filters
            after = graph.follower_output(user, channels, conv)
            assert after is not None
            if after is not user:
                structure.norms[str(after.target)] = str(user.target)
            _read_channels(graph, structure, after, module.out_channels, filters)
            continue
        repeat = kept.repeat
        if flat:
            assert isinstance(module, nn.Linear | L0Linear)
            repeat *= module.in_features // channels
        structure.inputs[str(user.target)] = Kept(kept.layer, repeat)


def _read_linear(
    graph: GatedGraph, structure: PurgeStructure, node: fx.Node, linear: L0Linear
) -> None:
    """The linear layer keeps its columns and its producer the rows, or it picks its features."""
    if not linear.structured or not graph.single_call(node):
        return
    target = str(node.target)
    source = graph.producer(node, linear.in_features)
    if source is not None and str(source.target) not in structure.outputs:
        structure.outputs[str(source.target)] = Kept(target)
        structure.inputs[target] = Kept(target)
        return
    within = structure.inputs.get(target)
    assert within is None or isinstance(within, Kept)
    structure.inputs[target] = Picked(target, within)
