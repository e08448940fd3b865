r"""Packed storage: the multipliers of many dense constraints as views of one parameter.

A problem with tens or hundreds of declared constraints (one per group of a fairness problem,
say) holds as many small multiplier tensors; every dual step, projection, restart and
``zero_grad`` then loops over them. :meth:`ConstrainedProblem.pack_multipliers
<conopt.problem.ConstrainedProblem.pack_multipliers>` moves the weights of plain
:class:`~conopt.multipliers.DenseMultiplier`\ s of one kind, dtype and device into one flat
:class:`MultiplierPack` parameter; each multiplier's ``weight`` becomes a view of its slice.
The dual optimizer then drives one tensor, and a step costs what one vector constraint costs.

What stays the same: constraints are declared, named, evaluated and reported as before, and the
problem's ``state_dict`` keeps one ``<constraint>.multiplier.weight`` entry per constraint (so
checkpoints of packed and unpacked problems load into each other). What differs: a packed
multiplier's ``weight`` is a view, not an ``nn.Parameter`` (its gradient lives in the pack's
``weight.grad``); its dtype follows the widest constraint of the pack; and a step must evaluate
every constraint of a pack or none of them (the pack is stepped as a whole).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from conopt.multipliers.base import _new_dtype_epoch, _same_shape_state

if TYPE_CHECKING:
    from conopt.multipliers.dense import DenseMultiplier

__all__ = [
    "MultiplierPack",
    "converted_dual_state_dict",
    "pack_optimizer_state_",
    "packed_optimizer_state_dict",
    "restart_slice_",
]


class MultiplierPack(nn.Module):
    """One flat parameter holding the weights of several dense multipliers of one kind.

    Built by :meth:`ConstrainedProblem.pack_multipliers
    <conopt.problem.ConstrainedProblem.pack_multipliers>`; members are laid out in order.
    The pack saves nothing in ``state_dict``: each member saves its own slice.

    Args:
        members: The dense multipliers to pack (bound, unpacked, one kind, dtype and device).
        names: The members' constraint names, for error messages.
    """

    def __init__(self, members: list[DenseMultiplier], names: list[str]) -> None:
        super().__init__()
        weights = [m.weight.detach().reshape(-1) for m in members]
        self.weight = nn.Parameter(torch.cat(weights) if weights else torch.zeros(0))
        self.nonnegative = bool(members) and members[0].nonnegative
        self.names = list(names)
        self.offsets: list[int] = []
        offset = 0
        for weight in weights:
            self.offsets.append(offset)
            offset += weight.numel()
        self.members = list(members)  # not sub-modules: they live in their constraints

    def slice_of(self, member: DenseMultiplier) -> tuple[int, int]:
        """The ``(start, stop)`` of ``member``'s entries in the flat weight."""
        index = self.members.index(member)
        start = self.offsets[index]
        return start, start + member.constraint_shape.numel()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        _new_dtype_epoch()  # Module.to(), double(), ...: the members' views follow
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        return  # the members save their slices under their constraints' names

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        return  # the members load their slices


def restart_slice_(
    pack: MultiplierPack,
    start: int,
    stop: int,
    feasible: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Zero the pack's entries ``start:stop`` where ``feasible``, and their optimizer state.

    Args:
        pack: The pack.
        start: First entry.
        stop: One past the last entry.
        feasible: Flat mask of ``stop - start`` entries.
        optimizer: The dual optimizer (its per-entry state of the pack is zeroed alike).
    """
    mask = feasible.reshape(-1)
    with torch.no_grad():
        pack.weight[start:stop].masked_fill_(mask, 0.0)
        for buffer in _same_shape_state(optimizer, pack.weight):
            buffer[start:stop].masked_fill_(mask, 0.0)


def pack_optimizer_state_(
    optimizer: torch.optim.Optimizer,
    packs: Iterable[MultiplierPack],
    old_weights: dict[int, list[torch.Tensor]],
) -> None:
    r"""Make ``optimizer`` drive the packs instead of the members' former parameters.

    Each pack replaces its members' former parameters in the param group of its first member;
    their per-entry state (momentum, moments) is concatenated; counters (``step``) must agree.

    Args:
        optimizer: The dual optimizer built over the unpacked multipliers.
        packs: The new packs.
        old_weights: For each pack (by ``id``), its members' former parameters, in order.

    Raises:
        ValueError: A member's former parameter is not in the optimizer, or the members'
            states cannot be concatenated (named by constraint).
    """
    for pack in packs:
        olds = old_weights[id(pack)]
        ids = {id(p) for p in olds}
        groups = [g for g in optimizer.param_groups if any(id(p) in ids for p in g["params"])]
        held = {id(p) for g in groups for p in g["params"]}
        missing = [n for n, p in zip(pack.names, olds, strict=True) if id(p) not in held]
        if missing or len(groups) > 1:
            raise ValueError(
                f"pack_multipliers: the dual optimizer must hold the multipliers of constraints "
                f"{pack.names} in one param group; missing: {missing}."
            )
        states = [optimizer.state.pop(p, {}) for p in olds]
        shapes = [p.shape for p in olds]
        optimizer.state[pack.weight] = _concatenated_state(states, shapes, pack)
        params = groups[0]["params"]
        position = min(i for i, p in enumerate(params) if id(p) in ids)
        kept = [p for p in params if id(p) not in ids]
        groups[0]["params"] = [*kept[:position], pack.weight, *kept[position:]]


def _concatenated_state(
    states: list[dict[str, Any]], shapes: list[torch.Size], pack: MultiplierPack
) -> dict[str, Any]:
    """The members' optimizer states as one state of the pack's flat weight."""
    if not any(states):
        return {}
    keys = set(states[0])
    if any(set(s) != keys for s in states):
        raise ValueError(
            f"pack_multipliers: the dual optimizer's states of constraints {pack.names} differ "
            "in kind (some were never stepped); pack before the first step."
        )
    merged: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in states]
        per_entry = all(
            isinstance(v, torch.Tensor) and v.shape == shape and key != "step"
            for v, shape in zip(values, shapes, strict=True)
        )
        if per_entry:
            merged[key] = torch.cat([v.reshape(-1) for v in values])
        elif all(_same(v, values[0]) for v in values):
            merged[key] = values[0]
        else:
            raise ValueError(
                f"pack_multipliers: the dual optimizer's {key!r} differs between the "
                f"constraints {pack.names}; they cannot share one state."
            )
    return merged


def converted_dual_state_dict(
    saved: dict[str, Any], multipliers: list[Any], optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """``saved`` as it is, or converted if it was saved before the multipliers were packed.

    Args:
        saved: A dual optimizer ``state_dict``.
        multipliers: The problem's multipliers, in declaration order.
        optimizer: The dual optimizer that will load it.

    Returns:
        A ``state_dict`` in the optimizer's layout (``saved`` itself when nothing is packed
        or it already has the optimizer's layout).
    """
    slots: list[MultiplierPack | None] = []
    for multiplier in multipliers:
        pack = getattr(multiplier, "pack", None)
        slots += [pack] if pack is not None else [None] * len(multiplier.optimized_parameters())
    saved_count = sum(len(g["params"]) for g in saved["param_groups"])
    current = sum(len(g["params"]) for g in optimizer.param_groups)
    if saved_count == current or saved_count != len(slots):
        return saved  # the current layout (or another one, which torch refuses)
    return packed_optimizer_state_dict(saved, slots)


def packed_optimizer_state_dict(
    saved: dict[str, Any], slots: list[MultiplierPack | None]
) -> dict[str, Any]:
    """A dual optimizer's ``state_dict`` saved over unpacked multipliers, for the packs.

    Args:
        saved: The ``state_dict`` of a dual optimizer over the unpacked multipliers (one
            param group).
        slots: For each of its parameters in order: the pack its multiplier now belongs to,
            or ``None`` for a parameter that stays as it was.

    Returns:
        The ``state_dict`` for the dual optimizer over ``problem.dual_parameters()``.

    Raises:
        ValueError: The saved state has several param groups, or its states cannot be
            concatenated (the message says how to convert it instead).
    """
    groups = saved["param_groups"]
    if len(groups) != 1 or len(groups[0]["params"]) != len(slots):
        raise ValueError(
            "this dual optimizer state_dict was saved over unpacked multipliers in a layout that "
            "cannot be converted automatically; build the dual optimizer over the unpacked "
            "problem, load it there, then call problem.pack_multipliers(dual_optimizer)."
        )
    old_ids = groups[0]["params"]
    new_ids: list[int] = []
    state: dict[int, Any] = {}
    first: dict[int, int] = {}  # id(pack) -> its new index
    members: dict[int, list[int]] = {}  # id(pack) -> its members' old indices
    for old, pack in zip(old_ids, slots, strict=True):
        if pack is not None and id(pack) in first:
            members[id(pack)].append(old)
            continue
        index = len(new_ids)
        new_ids.append(index)
        if pack is None:
            if old in saved["state"]:
                state[index] = saved["state"][old]
        else:
            first[id(pack)], members[id(pack)] = index, [old]
    packs = {id(p): p for p in slots if p is not None}
    for key, pack in packs.items():
        shapes = [m.constraint_shape for m in pack.members]
        states = [saved["state"].get(old, {}) for old in members[key]]
        merged = _concatenated_state(states, shapes, pack)
        if merged:
            state[first[key]] = merged
    return {"state": state, "param_groups": [{**groups[0], "params": new_ids}]}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return bool(a == b)
