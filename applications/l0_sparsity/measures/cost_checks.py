"""Refusals of the compute measures: the cases where a count could disagree with the purge.

:class:`~l0_sparsity.measures.ComputeCost` counts what :func:`l0_sparsity.purge` makes from the
traced graph. These checks raise a ``ValueError`` naming the module wherever the graph does not
show everything the purge would do with the gates or with the parameters it replaces.
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from l0_sparsity.nn import GatedBatchNorm2d, GatedLayer, L0Conv2d, L0Linear
from l0_sparsity.nn.attention import GatedMultiheadAttention
from l0_sparsity.nn.graph import GatedGraph

__all__ = ["check_gated", "owned_elsewhere"]

_GATED = (GatedLayer, GatedBatchNorm2d)


def check_gated(graph: GatedGraph, model: nn.Module) -> None:
    """Refuse gated modules the graph does not see as whole calls.

    Args:
        graph: The traced copy of ``model``.
        model: The gated model.

    Raises:
        ValueError: For a gated layer of a kind whose purge the measures do not know; a gated
            module that runs inside another module the graph treats as one call; a parameter
            of a gated module read outside it (``get_attr``).
    """
    for target in graph.calls:
        module = graph.modules[target]
        known = L0Linear | L0Conv2d | GatedMultiheadAttention
        if isinstance(module, GatedLayer) and not isinstance(module, known):
            raise ValueError(
                f"ComputeCost: {target!r} is a {type(module).__name__}; the compute measures "
                "know how a purge shrinks L0Linear, L0Conv2d and GatedMultiheadAttention only"
            )
    names = dict(model.named_modules())
    for name, module in names.items():
        if not isinstance(module, _GATED) or name in graph.calls:
            continue
        parent = _called_ancestor(name, graph)
        if parent is not None:
            raise ValueError(
                f"ComputeCost: the gated module {name!r} runs inside {parent!r}, which the traced "
                "graph calls as one module, so neither the purge nor the measures see its gates"
            )
    for node in graph.gm.graph.nodes:
        if node.op != "get_attr":
            continue
        owner = _gated_prefix(str(node.target), names)
        if owner is not None:
            raise ValueError(
                f"ComputeCost: the forward reads {node.target!r} outside the gated module "
                f"{owner!r} (a get_attr); the purge replaces that module but not this read, so "
                "its size cannot be counted"
            )


def owned_elsewhere(graph: GatedGraph, replaced: set[str]) -> None:
    """Refuse parameters that a replaced module shares with another module or a ``get_attr``.

    The purge gives each replaced module new parameters; a parameter it shared would then be
    counted twice in the purged model, once with each owner.

    Args:
        graph: The traced gated model.
        replaced: Targets of the modules the purge replaces (gated, or shrunk).

    Raises:
        ValueError: Naming the module and the other owner.
    """
    owners: dict[int, set[str]] = defaultdict(set)
    for target in graph.calls:
        for param in graph.modules[target].parameters():
            owners[id(param)].add(target)
    for node in graph.gm.graph.nodes:
        if node.op != "get_attr":
            continue
        try:
            value = graph.gm.get_parameter(str(node.target))
        except AttributeError:  # a buffer, a constant or a module: no parameter of its own
            continue
        owners[id(value)].add(f"get_attr {node.target}")
    for target in sorted(replaced):
        for param in graph.modules[target].parameters():
            others = owners[id(param)] - {target}
            if others:
                raise ValueError(
                    f"ComputeCost: {target!r} shares a parameter with {', '.join(sorted(others))}; "
                    "the purge replaces it with a module of its own, so the purged model would "
                    "count that parameter twice; untie it first"
                )


def _called_ancestor(name: str, graph: GatedGraph) -> str | None:
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in graph.calls:
            return prefix
    return None


def _gated_prefix(target: str, names: dict[str, nn.Module]) -> str | None:
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if isinstance(names.get(prefix), _GATED):
            return prefix
    return None
