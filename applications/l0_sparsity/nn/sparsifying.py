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

import fnmatch
import itertools
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from l0_sparsity.nn.base import GatedLayer, gated_layers
from l0_sparsity.nn.batchnorm import GatedBatchNorm2d
from l0_sparsity.nn.conv import L0Conv2d
from l0_sparsity.nn.gate_set import sample_jointly
from l0_sparsity.nn.gates import HardConcrete
from l0_sparsity.nn.linear import L0Linear

__all__ = ["GateLeafTracer", "SkipSpec", "SparsifyReport", "sparsify"]

SkipSpec = str | Iterable[str] | Callable[[str, nn.Module], bool] | None
"""Layers to leave dense in :func:`sparsify`: glob pattern(s) on qualified names, or a predicate."""

_log = logging.getLogger(__name__)


def _skip_patterns(skip: SkipSpec) -> list[str] | None:
    """The glob patterns of ``skip`` (``None`` for no skip or a predicate), type-checked."""
    if skip is None or callable(skip):
        return None
    patterns = [skip] if isinstance(skip, str) else list(skip)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(
                f"sparsify: skip patterns must be strings (glob patterns on layer names), got "
                f"{pattern!r} ({type(pattern).__name__})"
            )
    return patterns


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` has hooks of its own, which a gated copy would not carry over."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(module, name, None) for name in names)


def _not_gateable(module: nn.Module) -> str | None:
    """Why :func:`sparsify` must leave a weight-bearing ``module`` dense, or ``None``.

    ``None`` for exact ``nn.Linear`` / ``nn.Conv2d`` layers without hooks (the ones it gates),
    for layers that are already gated, and for layers without weight matrices or kernels
    (norms, activations, containers). Subclasses of ``nn.Linear`` are not gated either: e.g.
    ``nn.MultiheadAttention`` reads its ``out_proj`` weight directly, bypassing any gate.
    """
    if isinstance(module, GatedLayer | GatedBatchNorm2d):
        return None
    if type(module) in (nn.Linear, nn.Conv2d):
        return f"{type(module).__name__} with hooks" if _hooked(module) else None
    uninitialized = nn.parameter.UninitializedParameter
    own = module.parameters(recurse=False)
    if any(isinstance(p, uninitialized) or p.dim() >= 2 for p in own):
        return type(module).__name__
    return None


@dataclass(frozen=True)
class SparsifyReport:
    """What one :func:`sparsify` call did; stored as ``model.sparsify_report`` and logged.

    Attributes:
        model: Class name of the model.
        gated: Qualified names of the layers replaced by gated copies in this call.
        gated_norms: Names of the ``BatchNorm2d`` layers replaced by :class:`GatedBatchNorm2d`.
        skipped: Names of the layers that ``skip`` kept dense.
        not_gateable: ``(name, kind)`` of the layers holding weights that sparsify cannot gate
            and left dense (e.g. ``nn.MultiheadAttention``, ``nn.Conv1d``, ``nn.Embedding``, a
            ``Linear`` with hooks); ``skip`` patterns naming them are not counted here.
        unmatched_patterns: The ``skip`` glob patterns that matched no layer.
    """

    model: str
    gated: tuple[str, ...]
    gated_norms: tuple[str, ...]
    skipped: tuple[str, ...]
    not_gateable: tuple[tuple[str, str], ...]
    unmatched_patterns: tuple[str, ...]

    def summary(self) -> str:
        """One line listing what was gated, kept dense and left ungated."""
        parts = [f"sparsify({self.model}): gated {len(self.gated)} layer(s) {_names(self.gated)}"]
        if self.gated_norms:
            parts.append(f"BatchNorm2d gated after their conv: {_names(self.gated_norms)}")
        if self.skipped:
            parts.append(f"kept dense by skip: {_names(self.skipped)}")
        if self.not_gateable:
            listed = _names(tuple(f"{name} ({kind})" for name, kind in self.not_gateable))
            parts.append(f"left dense, cannot gate: {listed}")
        if self.unmatched_patterns:
            parts.append(f"skip patterns matching nothing: {list(self.unmatched_patterns)}")
        return "; ".join(parts)


def _names(names: tuple[str, ...], limit: int = 8) -> str:
    """``names`` as ``[a, b, ...]``, at most ``limit`` of them shown."""
    shown = ", ".join(name or "<root>" for name in names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"[{shown}{more}]"


@dataclass(frozen=True)
class _Plan:
    """The layers :func:`sparsify` will gate, and what it will report."""

    targets: list[tuple[str, nn.Module]]
    skipped: tuple[str, ...]
    not_gateable: tuple[tuple[str, str], ...]
    unmatched: tuple[str, ...]
    layer_names: tuple[str, ...]  # what skip patterns may name, for messages


def _plan(model: nn.Module, skip: SkipSpec) -> _Plan:
    """Sort the layers of ``model`` into targets, skipped and not gateable; check ``skip``.

    Raises:
        ValueError: If a target conv uses a padding mode other than zeros, or if the model has
            nothing to gate (before anything is modified).
    """
    patterns = _skip_patterns(skip)

    def matched(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())

    targets: list[tuple[str, nn.Module]] = []
    skipped: list[str] = []
    not_gateable: list[tuple[str, str]] = []
    named: list[str] = []  # the layers a pattern may name: gateable, gated or not gateable
    for name, module in model.named_modules():
        reason = _not_gateable(module)
        gateable = reason is None and type(module) in (nn.Linear, nn.Conv2d)
        if gateable or reason is not None or isinstance(module, GatedLayer):
            named.append(name)
        if reason is not None:  # only patterns may name these: a predicate sees gateable ones
            if matched(name):
                skipped.append(name)
            else:
                not_gateable.append((name, reason))
        elif gateable:
            if matched(name) or (callable(skip) and skip(name, module)):
                skipped.append(name)
            else:
                targets.append((name, module))
    unmatched = tuple(
        p for p in patterns or () if not any(fnmatch.fnmatchcase(n, p) for n in named)
    )
    plan = _Plan(targets, tuple(skipped), tuple(not_gateable), unmatched, tuple(named))
    _check_plan(model, plan)
    return plan


def _check_plan(model: nn.Module, plan: _Plan) -> None:
    """Warn about unmatched skip patterns; refuse what :func:`sparsify` cannot do, loudly."""
    kind = type(model).__name__
    for pattern in plan.unmatched:
        warnings.warn(
            f"sparsify({kind}): skip pattern {pattern!r} matched no layer (patterns are globs on "
            f"qualified names such as {_names(plan.layer_names, 4)})",
            UserWarning,
            stacklevel=4,
        )
    for name, module in plan.targets:
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise ValueError(
                f"sparsify({kind}): layer {name!r} uses padding_mode={module.padding_mode!r}, "
                f"only 'zeros' can be gated; list it in skip= to keep it dense"
            )
    if plan.targets or gated_layers(model):
        return
    reasons = ["it has no nn.Linear or nn.Conv2d layer"]
    if plan.skipped:
        reasons = [f"skip matched every layer it could gate {_names(plan.skipped)}"]
    if plan.not_gateable:
        listed = _names(tuple(f"{name} ({how})" for name, how in plan.not_gateable))
        reasons.append(f"layers it cannot gate: {listed}")
    raise ValueError(f"sparsify({kind}): nothing to gate: {'; '.join(reasons)}")


class GateLeafTracer(torch.fx.Tracer):
    """torch.fx tracer that keeps gated layers and gated norms as leaf modules."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """Gated modules are leaves; otherwise the default rule (``torch.nn`` layers)."""
        if isinstance(m, GatedLayer | GatedBatchNorm2d):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """Map each Conv2d whose output feeds only a BatchNorm2d to that norm's name.

    Uses torch.fx when the model traces; otherwise looks for adjacent (Conv2d, BatchNorm2d)
    entries of ``nn.Sequential`` containers.
    """
    modules = dict(model.named_modules())
    pairs: dict[str, str] = {}
    try:
        graph = GateLeafTracer().trace(model)
    except Exception:  # untraceable model: fall back to nn.Sequential adjacency
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


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _report(model: nn.Module, plan: _Plan, norms: tuple[str, ...]) -> SparsifyReport:
    """Build, log and (for layers it could not gate) warn about the report of :func:`sparsify`."""
    report = SparsifyReport(
        type(model).__name__,
        tuple(name for name, _ in plan.targets),
        norms,
        plan.skipped,
        plan.not_gateable,
        plan.unmatched,
    )
    _log.info("%s", report.summary())
    if report.not_gateable:
        listed = _names(tuple(f"{name} ({how})" for name, how in report.not_gateable))
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

    Only layers of exactly these two types are gated. Other layers holding weights (e.g.
    ``nn.MultiheadAttention`` and its projections, ``nn.Conv1d``, ``nn.Embedding``, subclasses
    of ``nn.Linear``, a ``Linear`` with hooks) are left dense, with a ``UserWarning`` listing
    them unless a ``skip`` pattern names them. What was done is stored as
    ``model.sparsify_report`` (a :class:`SparsifyReport`) and logged at INFO level on the
    ``l0_sparsity.nn.sparsifying`` logger.

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
            gated layer yet), or if a conv to gate uses non-zero padding. Nothing is modified.
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
    plan = _plan(model, skip)
    pairs = _conv_bn_pairs(model) if structured and plan.targets else {}
    modules = dict(model.named_modules())
    kwargs: dict[str, Any] = {
        "structured": structured,
        "droprate_init": droprate_init,
        "distribution": distribution,
    }
    norms: list[str] = []
    for name, module in plan.targets:
        if isinstance(module, nn.Linear):
            _set_submodule(model, name, L0Linear.from_dense(module, **kwargs))
            continue
        conv = L0Conv2d.from_dense(module, **kwargs)
        _set_submodule(model, name, conv)
        bn = modules[pairs[name]] if name in pairs else None
        if isinstance(bn, nn.BatchNorm2d):
            _set_submodule(model, pairs[name], GatedBatchNorm2d.from_batchnorm(bn, conv))
            norms.append(pairs[name])
    if joint_sampling and gated_layers(model):
        sample_jointly(model)
    model.sparsify_report = _report(model, plan, tuple(norms))  # type: ignore[assignment]
    return model
