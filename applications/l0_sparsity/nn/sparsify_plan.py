"""Which layers :func:`~l0_sparsity.sparsify` gates: its :class:`LayerPlan`.

:func:`plan_layers` sorts the layers of a model into those to gate, those ``skip`` keeps dense
and those that cannot be gated, checks ``skip`` and refuses, before anything is modified, what
``sparsify`` cannot do. :func:`grouped_convs` names the grouped convs it leaves dense unless they
follow the gates of the conv feeding them (:mod:`~l0_sparsity.nn.following`);
:func:`with_followers` updates a plan once that is decided, and :func:`with_head_gates` once
attention layers got head gates (:func:`~l0_sparsity.nn.transformer.gate_attention`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from l0_sparsity.nn.attention import unsupported_attention
from l0_sparsity.nn.base import GatedLayer, gated_layers
from l0_sparsity.nn.batchnorm import GatedBatchNorm2d
from l0_sparsity.nn.following import Followers, is_depthwise
from l0_sparsity.nn.sparsify_report import listed_names
from l0_sparsity.nn.transformer import AttentionGating

__all__ = [
    "LayerPlan",
    "SkipSpec",
    "attention_skip_predicate",
    "grouped_convs",
    "plan_layers",
    "with_followers",
    "with_head_gates",
]

SkipSpec = str | Iterable[str] | Callable[[str, nn.Module], bool] | None
"""Layers to leave dense in :func:`~l0_sparsity.sparsify`.

Glob pattern(s) on qualified names, or a predicate.
"""


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
    """Why :func:`~l0_sparsity.sparsify` must leave a weight-bearing ``module`` dense, or ``None``.

    ``None`` for exact ``nn.Linear`` / ``nn.Conv2d`` layers without hooks (the ones it gates),
    for layers that are already gated, and for layers without weight matrices or kernels
    (norms, activations, containers). Subclasses of ``nn.Linear`` are not gated either: e.g.
    ``nn.MultiheadAttention`` reads its ``out_proj`` weight directly, bypassing any gate.
    """
    if isinstance(module, GatedLayer | GatedBatchNorm2d):
        return None
    if type(module) in (nn.Linear, nn.Conv2d):
        if _hooked(module):
            return f"{type(module).__name__} with hooks"
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not is_depthwise(module):
            return _grouped(module, "a purge cannot remove its filters exactly")
        return None
    if type(module) is nn.MultiheadAttention:  # gate_attention gates the ones it can
        return unsupported_attention(module) or "MultiheadAttention"
    uninitialized = nn.parameter.UninitializedParameter
    own = module.parameters(recurse=False)
    if any(isinstance(p, uninitialized) or p.dim() >= 2 for p in own):
        return type(module).__name__
    return None


def _grouped(conv: nn.Conv2d, why: str) -> str:
    """The reason a grouped conv is left dense, for the report."""
    shape = f"groups={conv.groups}, {conv.in_channels} -> {conv.out_channels} channels"
    return f"grouped Conv2d ({shape}): {why}"


@dataclass(frozen=True)
class LayerPlan:
    """The layers :func:`~l0_sparsity.sparsify` will gate, and what it will report.

    Attributes:
        targets: ``(name, layer)`` of each layer to gate.
        skipped: Names of the layers that ``skip`` keeps dense.
        not_gateable: ``(name, kind)`` of the layers holding weights that cannot be gated.
        unmatched: The ``skip`` glob patterns that match no layer.
        layer_names: The names ``skip`` patterns may match, for messages.
    """

    targets: list[tuple[str, nn.Module]]
    skipped: tuple[str, ...]
    not_gateable: tuple[tuple[str, str], ...]
    unmatched: tuple[str, ...]
    layer_names: tuple[str, ...]


def plan_layers(model: nn.Module, skip: SkipSpec) -> LayerPlan:
    """Sort the layers of ``model`` into targets, skipped and not gateable; check ``skip``.

    Args:
        model: The model :func:`~l0_sparsity.sparsify` is given.
        skip: Its ``skip`` argument.

    Returns:
        The plan; a ``UserWarning`` names each ``skip`` pattern that matches no layer.

    Raises:
        ValueError: If a target conv uses a padding mode other than zeros, or if the model has
            nothing to gate (before anything is modified).
        TypeError: If a ``skip`` pattern is not a string.
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
    plan = LayerPlan(targets, tuple(skipped), tuple(not_gateable), unmatched, tuple(named))
    _check_plan(model, plan)
    return plan


def _check_plan(model: nn.Module, plan: LayerPlan) -> None:
    """Warn about unmatched skip patterns; refuse what :func:`sparsify` cannot do, loudly."""
    kind = type(model).__name__
    for pattern in plan.unmatched:
        warnings.warn(
            f"sparsify({kind}): skip pattern {pattern!r} matched no layer (patterns are globs on "
            f"qualified names such as {listed_names(plan.layer_names, 4)})",
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
        reasons = [f"skip matched every layer it could gate {listed_names(plan.skipped)}"]
    if plan.not_gateable:
        listed = listed_names(tuple(f"{name} ({how})" for name, how in plan.not_gateable))
        reasons.append(f"layers it cannot gate: {listed}")
    raise ValueError(f"sparsify({kind}): nothing to gate: {'; '.join(reasons)}")


def attention_skip_predicate(skip: SkipSpec, structured: bool) -> Callable[[str, nn.Module], bool]:
    """Whether ``skip``'s patterns name an attention layer (all do without ``structured``).

    A ``skip`` predicate is asked about ``nn.Linear`` / ``nn.Conv2d`` layers only.

    Args:
        skip: The ``skip`` argument of :func:`~l0_sparsity.sparsify`.
        structured: Its ``structured`` argument.

    Returns:
        The ``keep_dense(name, module)`` predicate for
        :func:`~l0_sparsity.nn.transformer.gate_attention`.
    """
    patterns = _skip_patterns(skip) or []

    def keep_dense(name: str, module: nn.Module) -> bool:
        return not structured or any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return keep_dense


def with_head_gates(model: nn.Module, plan: LayerPlan, attention: AttentionGating) -> LayerPlan:
    """``plan`` reporting the layers given head gates as gated, not as not gateable.

    The layers they claim (whose rows follow the head and FFN-unit gates) are not reported.

    Args:
        model: The model, its attention layers already gated.
        plan: The plan made before they were.
        attention: What :func:`~l0_sparsity.nn.transformer.gate_attention` did.

    Returns:
        The updated plan.
    """
    heads = attention.heads

    def inside(name: str) -> bool:
        return any(name == h or name.startswith(h + ".") for h in heads)

    targets = [(n, m) for n, m in plan.targets if n not in attention.claimed and n not in heads]
    return dataclasses.replace(
        plan,
        targets=[(h, model.get_submodule(h)) for h in heads] + targets,
        not_gateable=tuple((n, why) for n, why in plan.not_gateable if not inside(n)),
    )


def grouped_convs(model: nn.Module, plan: LayerPlan) -> dict[str, nn.Module]:
    """The grouped convs ``plan`` leaves dense that may follow the gates of the conv feeding them.

    Args:
        model: The model :func:`~l0_sparsity.sparsify` is given.
        plan: Its plan (grouped convs other than depthwise ones are not gateable there).

    Returns:
        Plain grouped ``nn.Conv2d`` layers without hooks that ``skip`` did not name, by name.
    """
    found: dict[str, nn.Module] = {}
    for name, _ in plan.not_gateable:
        module = model.get_submodule(name)
        if type(module) is nn.Conv2d and module.groups > 1 and not _hooked(module):
            found[name] = module
    return found


def with_followers(model: nn.Module, plan: LayerPlan, followers: Followers) -> LayerPlan:
    """``plan`` without the grouped convs that follow, saying why the others cannot.

    Args:
        model: The model, not yet modified.
        plan: Its plan.
        followers: What :func:`~l0_sparsity.nn.following.find_followers` decided.

    Returns:
        The plan whose ``not_gateable`` lists the grouped convs that stay dense, each with the
        reason it cannot follow.
    """
    not_gateable = []
    for name, why in plan.not_gateable:
        if name in followers.producers:
            continue
        if name in followers.refused:
            conv = model.get_submodule(name)
            why = _grouped(conv, f"cannot follow the conv feeding it: {followers.refused[name]}")
        not_gateable.append((name, why))
    return dataclasses.replace(plan, not_gateable=tuple(not_gateable))
