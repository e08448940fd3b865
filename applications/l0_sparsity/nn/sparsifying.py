"""``sparsify``: swap the ``nn.Linear`` / ``nn.Conv2d`` layers of a dense model for gated copies.

:func:`sparsify` sorts a model's layers into those it gates, those ``skip`` keeps dense and
those it cannot gate; pairs each structured conv with the BatchNorm that is its only consumer
(torch.fx with :class:`GateLeafTracer`, which keeps gated modules as leaves, or
``nn.Sequential`` adjacency when the model does not trace); replaces them; turns on joint gate
sampling (:func:`~l0_sparsity.nn.gate_set.sample_jointly`); and records what it did in a
:class:`SparsifyReport`.

(The module is named ``sparsifying`` so that it does not shadow the function
``l0_sparsity.nn.sparsify`` in the package namespace.)
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from l0_sparsity.nn.base import GatedLayer, gated_layers
from l0_sparsity.nn.batchnorm import GatedBatchNorm2d
from l0_sparsity.nn.conv import L0Conv2d
from l0_sparsity.nn.following import Followers, find_followers, gate_follower_norms
from l0_sparsity.nn.gate_set import sample_jointly
from l0_sparsity.nn.gates import HardConcrete
from l0_sparsity.nn.linear import L0Linear
from l0_sparsity.nn.sparsify_plan import (
    LayerPlan,
    SkipSpec,
    attention_skip_predicate,
    grouped_convs,
    plan_layers,
    with_followers,
    with_head_gates,
)
from l0_sparsity.nn.sparsify_report import SparsifyReport, listed_names
from l0_sparsity.nn.transformer import AttentionGating, gate_attention
from l0_sparsity.nn.weight_reads import refuse_weight_reads

__all__ = ["GateLeafTracer", "SkipSpec", "SparsifyReport", "sparsify"]

_log = logging.getLogger(__name__)


class GateLeafTracer(torch.fx.Tracer):
    """torch.fx tracer that keeps gated layers and gated norms as leaf modules."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """Gated modules are leaves; otherwise the default rule (``torch.nn`` layers)."""
        if isinstance(m, GatedLayer | GatedBatchNorm2d):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> torch.fx.Graph | None:
    """``model`` traced with :class:`GateLeafTracer`, or ``None`` if it does not trace."""
    try:
        return GateLeafTracer().trace(model)
    except Exception:  # untraceable model: callers fall back to what the modules show
        return None


def _conv_bn_pairs(model: nn.Module, graph: torch.fx.Graph | None) -> dict[str, str]:
    """Map each Conv2d whose output feeds only a BatchNorm2d to that norm's name.

    Reads ``graph`` (the traced model); without one, looks for adjacent (Conv2d, BatchNorm2d)
    entries of ``nn.Sequential`` containers.
    """
    modules = dict(model.named_modules())
    pairs: dict[str, str] = {}
    if graph is None:
        for name, module in modules.items():
            if isinstance(module, nn.Sequential):
                children = list(module.named_children())
                for (a, ma), (b, mb) in itertools.pairwise(children):
                    if type(ma) is nn.Conv2d and type(mb) is nn.BatchNorm2d:
                        prefix = f"{name}." if name else ""
                        pairs[prefix + a] = prefix + b
        return pairs
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) is not nn.Conv2d:
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        bn = modules.get(users[0].target)
        if (
            type(bn) is nn.BatchNorm2d
            and users[0].args[:1] == (node,)
            and calls[node.target] == 1
            and calls[users[0].target] == 1
        ):
            pairs[node.target] = users[0].target
    return pairs


@dataclass(frozen=True)
class _Wiring:
    """How the layers to gate are connected, read before any of them is replaced."""

    pairs: dict[str, str]  # structured conv -> the BatchNorm2d that is its only consumer
    followers: Followers  # grouped convs following the gates of the conv feeding them
    modules: dict[str, nn.Module]  # the model's modules, by qualified name


def _wiring(model: nn.Module, plan: LayerPlan, structured: bool) -> _Wiring:
    """Trace ``model``, refuse reads of weights to gate, pair convs with norms, find followers."""
    graph = _trace(model) if plan.targets else None
    targets = {name: module for name, module in plan.targets}
    refuse_weight_reads(type(model).__name__, graph, {**targets, **dict(gated_layers(model))})
    modules = dict(model.named_modules())
    if not (structured and plan.targets):
        return _Wiring({}, Followers(), modules)
    pairs = _conv_bn_pairs(model, graph)
    grouped = grouped_convs(model, plan)
    followers = find_followers(graph, modules, targets, grouped, pairs)
    return _Wiring(pairs, followers, modules)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _replace_layers(
    model: nn.Module,
    plan: LayerPlan,
    wiring: _Wiring,
    keep_dense: Callable[[str, nn.Module], bool],
    gating: dict[str, Any],
) -> tuple[AttentionGating, tuple[str, ...]]:
    """Gate attention heads, then swap the other planned layers for gated copies.

    Followers and the layers the attention gating claims are left as they are.

    Returns:
        What :func:`~l0_sparsity.nn.transformer.gate_attention` did, and the names of the
        ``BatchNorm2d`` layers replaced by :class:`GatedBatchNorm2d`.
    """
    attention = gate_attention(
        model,
        keep_dense,
        droprate_init=gating["droprate_init"],
        distribution=gating["distribution"],
    )
    pairs, followers = wiring.pairs, wiring.followers
    norms: list[str] = []
    for name, module in plan.targets:
        if name in followers.producers or name in attention.claimed:
            continue
        if isinstance(module, nn.Linear):
            _set_submodule(model, name, L0Linear.from_dense(module, **gating))
            continue
        tie = followers.ties.get(name, 1)
        conv = L0Conv2d.from_dense(module, **gating, channels_per_gate=tie)
        _set_submodule(model, name, conv)
        bn = wiring.modules[pairs[name]] if name in pairs else None
        if isinstance(bn, nn.BatchNorm2d):
            _set_submodule(model, pairs[name], GatedBatchNorm2d.from_batchnorm(bn, conv))
            norms.append(pairs[name])
    norms += gate_follower_norms(model, followers.producers, pairs)
    return attention, tuple(norms)


def _report(
    model: nn.Module, plan: LayerPlan, norms: tuple[str, ...], followers: dict[str, str]
) -> SparsifyReport:
    """Build, log and (for layers it could not gate) warn about the report of :func:`sparsify`."""
    report = SparsifyReport(
        type(model).__name__,
        tuple(name for name, _ in plan.targets if name not in followers),
        norms,
        plan.skipped,
        plan.not_gateable,
        plan.unmatched,
        tuple(followers.items()),
    )
    _log.info("%s", report.summary())
    if report.not_gateable:
        listed = listed_names(tuple(f"{name} ({how})" for name, how in report.not_gateable))
        warnings.warn(
            f"sparsify({report.model}) left {len(report.not_gateable)} layer(s) with weights "
            f"dense because it cannot gate them: {listed}; only exact nn.Linear and nn.Conv2d "
            f"layers are gated (name them in skip= to acknowledge)",
            UserWarning,
            stacklevel=3,
        )
    return report


def sparsify(
    model: nn.Module,
    structured: bool = True,
    droprate_init: float = 0.5,
    skip: SkipSpec = None,
    *,
    distribution: HardConcrete | None = None,
    joint_sampling: bool = True,
) -> nn.Module:
    """Replace the ``nn.Linear`` and ``nn.Conv2d`` layers of ``model`` by gated copies, in place.

    Weights are copied. A structured conv whose only consumer is a ``BatchNorm2d`` (found with
    torch.fx, or by ``nn.Sequential`` adjacency when the model does not trace) has that norm
    replaced by a :class:`GatedBatchNorm2d` applying its gates, so dead channels are exactly 0.
    With ``joint_sampling``, each training-mode forward pass of ``model`` then draws the gates
    of all its gated layers in one sample (:func:`~l0_sparsity.nn.gate_set.sample_jointly`).

    A grouped conv (depthwise or not: MobileNet, ResNeXt, RegNet) fed by such a conv-norm pair
    and followed by a ``BatchNorm2d`` is not gated itself: it follows the gates of the conv
    feeding it (one per group: ``L0Conv2d.channels_per_gate``) and its norm applies them too,
    so a purge drops whole groups (:mod:`~l0_sparsity.nn.following`).

    With ``structured``, attention gets one gate per head and transformer encoder layers lose
    their gate-skipping fast path (:func:`~l0_sparsity.nn.transformer.gate_attention`: for
    ``nn.MultiheadAttention``, ``nn.TransformerEncoder(Layer)`` and Hugging Face BERT-style
    blocks; ``skip`` patterns, not predicates, keep an attention layer dense). Otherwise only
    layers of exactly these two types are gated. Other layers holding weights (e.g.
    ``nn.MultiheadAttention`` it cannot gate, ``nn.Conv1d``, ``nn.Embedding``, subclasses
    of ``nn.Linear``, a ``Linear`` with hooks, grouped convs that cannot follow) are left
    dense, with a ``UserWarning`` listing them and why unless a ``skip`` pattern names them.
    What was done is stored as ``model.sparsify_report`` (a :class:`SparsifyReport`) and
    logged at INFO level on the ``l0_sparsity.nn.sparsifying`` logger.

    Args:
        model: Any module; modified in place.
        structured: Structured (input-neuron / output-filter) or unstructured gates.
        droprate_init: Initial drop rate of the gates.
        skip: Layers to keep dense: a glob pattern or patterns matched against qualified names
            (e.g. ``"conv1"``, ``"*.downsample.*"``), or a predicate ``(name, module) -> bool``
            called on each ``nn.Linear`` / ``nn.Conv2d``. A pattern that matches no layer
            issues a ``UserWarning``.
        distribution: Hard-concrete parameters for all new gates.
        joint_sampling: Install :func:`~l0_sparsity.nn.gate_set.sample_jointly` on ``model``
            (fewer, larger kernels per step; leave it off for models that run gated layers
            under activation checkpointing).

    Returns:
        ``model`` itself, with ``model.sparsify_report`` set.

    Raises:
        ValueError: If ``model`` itself is a Linear/Conv2d (wrap it in a container first), if
            it has nothing to gate (no gateable layer, or ``skip`` matches all of them, and no
            gated layer yet), if a conv to gate uses non-zero padding, or if the forward reads
            a parameter of a layer to gate outside that layer's call (e.g.
            ``F.conv2d(x, self.conv.weight)``: the read would bypass the gates). Nothing is
            modified.
        TypeError: If a ``skip`` pattern is not a string.

    Example:
        >>> from torch import nn
        >>> from l0_sparsity.nn import sparsify
        >>> model = sparsify(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        >>> model.sparsify_report.gated
        ('0', '2')
    """
    if isinstance(model, nn.Linear | nn.Conv2d):
        raise ValueError("sparsify works in place on a container; wrap the layer first")
    plan = plan_layers(model, skip)
    wiring = _wiring(model, plan, structured)
    plan = with_followers(model, plan, wiring.followers)
    gating = dict(structured=structured, droprate_init=droprate_init, distribution=distribution)
    keep_dense = attention_skip_predicate(skip, structured)
    attention, norms = _replace_layers(model, plan, wiring, keep_dense, gating)
    if joint_sampling and gated_layers(model):
        sample_jointly(model)
    plan = with_head_gates(model, plan, attention)
    report = _report(model, plan, norms, wiring.followers.producers)
    model.sparsify_report = report  # type: ignore[assignment]
    return model
