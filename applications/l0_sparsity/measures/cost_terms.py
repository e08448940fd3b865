"""The terms of the compute measures: one traced forward read into ``unit · rows · cols`` sums.

:func:`build_terms` traces the gated model (:class:`~l0_sparsity.nn.graph.GatedGraph`), reads
the purge's width rules (:func:`~l0_sparsity.nn.structure.purge_structure`), measures each
node's FLOPs at batch 1 with ``torch.utils.flop_counter``, and splits MACs and parameters into a
constant and one term per layer a purge can shrink. It refuses (``ValueError`` naming the
module) whatever would make the terms disagree with the purged model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn
from torch.utils.flop_counter import FlopCounterMode

from l0_sparsity.measures.attention_cost import attention_units
from l0_sparsity.measures.cost_checks import check_gated, owned_elsewhere
from l0_sparsity.measures.counting import RuleCounts, rule_layers
from l0_sparsity.nn import GatedBatchNorm2d, GatedLayer
from l0_sparsity.nn.attention import GatedMultiheadAttention
from l0_sparsity.nn.graph import GatedGraph
from l0_sparsity.nn.structure import PurgeStructure, Width, purge_structure

__all__ = ["CostTerms", "build_terms"]


@dataclass
class CostTerms:
    """``constant + Σ_t coef_t · v[rows_t] · v[cols_t]`` for MACs and parameters at once.

    Attributes:
        counts: The width rules' counts ``v``.
        constant: ``(MACs, params)`` no gate changes.
        names: The layer (module target) of each term.
        rows: Count slot of each term's rows.
        cols: Count slot of each term's columns.
        coef: ``(MACs, params)`` coefficient of each term (scales of the slots folded in).
    """

    counts: RuleCounts
    constant: tuple[int, int]
    names: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    cols: list[int] = field(default_factory=list)
    coef: list[tuple[int, int]] = field(default_factory=list)
    _cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, ...]] = field(default_factory=dict)

    def add(
        self, name: str, rows: tuple[int, int], cols: tuple[int, int], unit: tuple[int, int]
    ) -> None:
        """Add ``unit · rows · cols`` for layer ``name``.

        Args:
            name: The layer's module target.
            rows: ``(slot, scale)`` of its rows
                (:meth:`~l0_sparsity.measures.counting.RuleCounts.slot`).
            cols: ``(slot, scale)`` of its columns.
            unit: ``(MACs, params)`` per (row, column) pair.
        """
        scale = rows[1] * cols[1]
        self.names.append(name)
        self.rows.append(rows[0])
        self.cols.append(cols[0])
        self.coef.append((unit[0] * scale, unit[1] * scale))

    def _tensors(self, like: Tensor) -> tuple[Tensor, ...]:
        key = (like.device, like.dtype)
        cached = self._cache.get(key)
        if cached is None:
            rows = torch.tensor(self.rows, dtype=torch.long, device=like.device)
            cols = torch.tensor(self.cols, dtype=torch.long, device=like.device)
            coef = torch.tensor(self.coef, dtype=like.dtype, device=like.device).reshape(-1, 2)
            const = torch.tensor(self.constant, dtype=like.dtype, device=like.device)
            cached = self._cache[key] = (rows, cols, coef.T.contiguous(), const)
        return cached

    def evaluate(self, counts: Tensor) -> Tensor:
        """``(MACs, params)`` at the count vector ``counts`` (a differentiable 2-vector)."""
        rows, cols, coef, const = self._tensors(counts)
        return torch.addmv(const, coef, counts[rows] * counts[cols])

    def breakdown(self, counts: Tensor) -> dict[str, tuple[int, int]]:
        """Per-layer ``(MACs, params)`` at a 0/1 count vector, then ``"fixed"``."""
        rows, cols, coef, _ = self._tensors(counts)
        per_term = (coef * (counts[rows] * counts[cols])).T.tolist()
        out: dict[str, tuple[int, int]] = {}
        for name, (macs, params) in zip(self.names, per_term, strict=True):
            m, q = out.get(name, (0, 0))
            out[name] = (m + round(macs), q + round(params))
        out["fixed"] = self.constant
        return out


def build_terms(model: nn.Module, example_input: Tensor | tuple[int, ...]) -> CostTerms:
    """Trace ``model`` once and split its purged MACs and parameters into terms.

    Args:
        model: A gated model.
        example_input: An input batch (its first example is used) or the batch's shape.

    Returns:
        The terms, following ``model``'s live gated layers.

    Raises:
        ValueError: If the measure could not be exact (see
            :class:`~l0_sparsity.measures.ComputeCost`).
    """
    graph = GatedGraph(model)
    structure = purge_structure(graph)
    check_gated(graph, model)
    total_flops, flops = _module_flops(graph.gm, _first_example(graph.gm, example_input))
    variable = [t for t in graph.calls if t in structure.norms or any(_rules(structure, t))]
    counts = RuleCounts({t: _live_layer(model, t) for t in _gate_layers(structure, variable)})
    variable_flops = sum(flops.get(t, 0) for t in variable)
    constant = ((total_flops - variable_flops) // 2, _constant_params(graph, variable))
    terms = CostTerms(counts, constant)
    for target in variable:
        _add_layer(terms, graph, structure, target, flops)
    return terms


def _rules(structure: PurgeStructure, target: str) -> tuple[Width | None, Width | None]:
    return structure.outputs.get(target), structure.inputs.get(target)


def _gate_layers(structure: PurgeStructure, variable: list[str]) -> list[str]:
    """The gated layers the rules name, in order; refuse rows and columns that share gates."""
    layers: list[str] = []
    for target in variable:
        rows, cols = (rule_layers(rule) for rule in _rules(structure, target))
        shared = rows & cols
        if shared:
            raise ValueError(
                f"ComputeCost: the rows and the columns that a purge keeps of {target!r} depend "
                f"on the same gates ({', '.join(sorted(shared))}), so their expected product is "
                "not the product of their expectations; this structure is not supported"
            )
        layers += [layer for layer in sorted(rows | cols) if layer not in layers]
    return layers


def _live_layer(model: nn.Module, target: str) -> GatedLayer:
    layer = model.get_submodule(target)
    assert isinstance(layer, GatedLayer)
    return layer


def _first_example(gm: nn.Module, example_input: Tensor | tuple[int, ...]) -> Tensor:
    """One example (batch 1) of ``example_input``, or zeros of its shape with batch 1."""
    if isinstance(example_input, Tensor):
        return example_input[:1]
    ref = next(iter(gm.parameters()), None)
    return torch.zeros(
        (1, *tuple(example_input)[1:]),
        device=None if ref is None else ref.device,
        dtype=None if ref is None else ref.dtype,
    )


class _NodeFlops(fx.Interpreter):
    """Runs a ``GraphModule`` under ``FlopCounterMode``, recording each node's FLOPs."""

    def __init__(self, gm: fx.GraphModule, counter: FlopCounterMode) -> None:
        super().__init__(gm)
        self.counter = counter
        self.flops: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> object:
        before = self.counter.get_total_flops()
        out = super().run_node(n)
        self.flops[n] = int(self.counter.get_total_flops() - before)
        return out


def _module_flops(gm: fx.GraphModule, x: Tensor) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one forward of ``gm`` at ``x``, and those of each called module."""
    counter = FlopCounterMode(display=False)
    interpreter = _NodeFlops(gm, counter)
    with counter, torch.no_grad():
        interpreter.run(x)
    per_module: dict[str, int] = {}
    for node, flops in interpreter.flops.items():
        if node.op == "call_module":
            per_module[str(node.target)] = per_module.get(str(node.target), 0) + flops
    return int(counter.get_total_flops()), per_module


def _constant_params(graph: GatedGraph, variable: list[str]) -> int:
    """Parameters of the purged model outside the variable layers (gate parameters excluded)."""
    gm = graph.gm
    gm.delete_all_unused_submodules()
    shrinkable = {t for t in graph.calls if isinstance(graph.modules[t], GatedLayer)}
    owned_elsewhere(graph, shrinkable | set(variable))
    skip = {id(m.log_alpha) for m in gm.modules() if isinstance(m, GatedLayer)}
    for target in variable:
        skip |= {id(p) for p in graph.modules[target].parameters()}
    return sum(p.numel() for p in gm.parameters() if id(p) not in skip)


def _add_layer(
    terms: CostTerms,
    graph: GatedGraph,
    structure: PurgeStructure,
    target: str,
    flops: dict[str, int],
) -> None:
    """The terms of one variable layer: weights (and MACs), bias, or a gated norm's affine."""
    module = graph.modules[target]
    counts = terms.counts
    node_flops = flops.get(target, 0)
    if isinstance(module, GatedBatchNorm2d):
        if node_flops:
            raise ValueError(f"ComputeCost: flop_counter counts FLOPs in the norm {target!r}")
        conv = structure.norms[target]
        rule = structure.outputs.get(conv) if conv is not None else None
        terms.add(target, counts.slot(rule, module.num_features), (0, 1), (0, 2))
        return
    if isinstance(module, GatedMultiheadAttention):
        per_head, constant = attention_units(target, module, node_flops)
        terms.add(
            target, counts.slot(structure.outputs[target], module.num_heads), (0, 1), per_head
        )
        terms.add(target, (0, 1), (0, 1), (0, constant))
        return
    assert isinstance(module, nn.Linear | nn.Conv2d | GatedLayer)
    weight = module.weight
    out_full, in_full = weight.shape[0], weight.shape[1]
    area = weight[0, 0].numel()
    if node_flops % (2 * out_full * in_full):
        raise ValueError(
            f"ComputeCost: the FLOPs of {target!r} ({node_flops}) are not proportional to its "
            f"{out_full} outputs × {in_full} inputs; cannot follow its purge exactly"
        )
    rows_rule, cols_rule = _rules(structure, target)
    rows = counts.slot(rows_rule, out_full)
    unit = (node_flops // (2 * out_full * in_full), area)
    terms.add(target, rows, counts.slot(cols_rule, in_full), unit)
    if module.bias is not None:
        terms.add(target, rows, (0, 1), (0, 1))
