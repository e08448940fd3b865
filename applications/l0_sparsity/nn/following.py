"""Grouped convolutions that follow the channel gates of the convolution feeding them.

A grouped convolution ``G`` (``groups > 1``: depthwise ones, depthwise ones with a channel
multiplier, ResNeXt / RegNet group convolutions) computes the output channels of group ``j`` from
the ``n = in_channels / groups`` input channels of group ``j`` alone. When a structured
convolution ``P`` feeds it through channel-wise ops that map 0 to 0 and ``P``'s gates each decide
a block of ``n`` consecutive channels (``P``'s ``channels_per_gate``; one gate per channel for a
depthwise ``G``), a group whose gate ``P`` kills reaches ``G`` as exact zeros, so the group's
filters have nothing to read: ``G`` *follows* ``P``'s gates and a purge drops whole groups of
``G`` together with ``P``'s channels (it rebuilds ``G`` with fewer groups).

``G``'s BatchNorm would still turn those zeros into a constant (its shift), so
:func:`~l0_sparsity.nn.sparsifying.sparsify` gates that norm with ``P``'s gates: a
:class:`~l0_sparsity.nn.batchnorm.GatedBatchNorm2d` whose ``gate_layer`` is ``P`` (each gate
applying to the ``out_channels / groups`` channels of its group). In a training pass both norms
must apply the *same* sample of ``P``'s gates; :func:`share_gates` installs the two forward
pre-hooks that hand the leader's sample to the follower.

:func:`find_followers` decides which grouped convs follow (and so which producers get gates tied
per group) and says why the others cannot; those stay dense and are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, fx, nn

from l0_sparsity.nn.batchnorm import GatedBatchNorm2d
from l0_sparsity.nn.channel_ops import keeps_zeros

__all__ = [
    "Followers",
    "SharedGates",
    "can_follow",
    "find_followers",
    "gate_follower_norms",
    "is_depthwise",
    "share_gates",
]


def is_depthwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is a depthwise 2-D convolution without channel multiplier.

    Args:
        conv: Any module.

    Returns:
        ``True`` for a convolution with ``groups == in_channels == out_channels > 1``.
    """
    groups = getattr(conv, "groups", 1)
    in_channels = getattr(conv, "in_channels", None)
    out_channels = getattr(conv, "out_channels", None)
    return groups > 1 and groups == in_channels == out_channels


def can_follow(conv: nn.Module, block: int) -> bool:
    """Whether a plain grouped conv can follow gates that decide its input channels in blocks.

    Args:
        conv: Any module.
        block: Consecutive input channels that one gate decides.

    Returns:
        ``True`` for an ``nn.Conv2d`` with ``groups > 1`` whose groups each read channels of one
        gate: ``in_channels / groups`` divides ``block``.
    """
    if type(conv) is not nn.Conv2d or conv.groups == 1:
        return False
    return block % (conv.in_channels // conv.groups) == 0


class SharedGates:
    """Forward pre-hooks making ``follower`` apply the gate sample that ``leader`` applies.

    Both norms apply the gates of the same convolution. Before ``leader`` runs, the hook takes
    the convolution's gates for this pass (the joint sample it was offered, or a fresh one) and
    offers them back, so that ``leader`` consumes them as usual; before ``follower`` runs, the
    hook offers the same gates again. Eval-mode passes use the deterministic test-time gates and
    are left alone.

    Args:
        leader: The norm right after the convolution whose gates both apply.
        follower: The norm after the grouped convolution that follows it.

    Raises:
        ValueError: If the two norms do not apply the gates of the same convolution.
    """

    def __init__(self, leader: GatedBatchNorm2d, follower: GatedBatchNorm2d) -> None:
        if leader.gate_layer is not follower.gate_layer:
            raise ValueError(
                "share_gates: the leader and follower norms must apply the gates of the same "
                "convolution"
            )
        self.conv = leader.gate_layer
        self._sample: Tensor | None = None
        leader.register_forward_pre_hook(self._take)
        follower.register_forward_pre_hook(self._give)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles carry no sample in flight (it belongs to one forward pass)."""
        return {**self.__dict__, "_sample": None}

    def _take(self, module: nn.Module, args: Any) -> None:
        if not self.conv.training:
            return
        self._sample = self.conv.gates()
        self.conv.offer_gates(self._sample)

    def _give(self, module: nn.Module, args: Any) -> None:
        if self.conv.training and self._sample is not None:
            self.conv.offer_gates(self._sample)
            self._sample = None


def share_gates(leader: GatedBatchNorm2d, follower: GatedBatchNorm2d) -> SharedGates:
    """Make ``follower`` apply, in each training pass, the gate sample ``leader`` applies.

    Args:
        leader: The norm (a :class:`~l0_sparsity.nn.batchnorm.GatedBatchNorm2d`) right after
            the convolution whose gates it applies.
        follower: A norm applying the same convolution's gates after a grouped convolution
            that follows it.

    Returns:
        The installed hooks.
    """
    return SharedGates(leader, follower)


@dataclass(frozen=True)
class Followers:
    """The grouped convs that follow the gates of the conv feeding them (:func:`find_followers`).

    Attributes:
        producers: Follower conv name → name of the conv whose gates it follows.
        ties: Producer name → its ``channels_per_gate`` where above 1 (a follower's
            ``in_channels / groups``).
        refused: Name of each grouped conv offered (other than depthwise ones to gate) that
            cannot follow → why.
    """

    producers: dict[str, str] = field(default_factory=dict)
    ties: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def find_followers(
    graph: fx.Graph | None,
    modules: dict[str, nn.Module],
    targets: dict[str, nn.Module],
    grouped: dict[str, nn.Module],
    pairs: dict[str, str],
) -> Followers:
    """The grouped convs that should follow their producer's gates instead of being gated.

    A grouped conv ``G`` follows a conv ``P`` when ``P`` (an ungrouped conv about to be gated)
    is paired with a BatchNorm, that norm's output reaches ``G`` through a chain of
    single-input nodes used nowhere else, ``G`` is paired with a BatchNorm of its own and
    ``P``'s width is ``G``'s input width. Where ``G``'s groups read several channels each
    (``n = in_channels / groups > 1``), ``P`` gets one gate per ``n`` channels, and the chain
    must keep zeros at zero (activations with ``f(0) = 0``, pooling): otherwise tying ``P``'s
    gates would buy nothing. A depthwise conv (``n = 1``) follows after any such chain: where
    the chain does not keep zeros, the purge keeps its full width and its norm applies ``P``'s
    gates, which the purge folds in exactly
    (:meth:`~l0_sparsity.nn.graph.GatedGraph.consumers` checks).

    Args:
        graph: The traced dense model (``None`` if it does not trace: no followers).
        modules: The model's modules by qualified name.
        targets: The layers about to be gated, by qualified name (depthwise convs among them
            may follow instead).
        grouped: Other plain grouped convs, which stay dense unless they follow.
        pairs: Conv name → name of the BatchNorm that is its only consumer.

    Returns:
        The followers, their producers' gate ties, and why each of ``grouped`` that does not
        follow cannot.
    """
    found = Followers()
    if graph is None:
        found.refused.update(dict.fromkeys(grouped, "the model does not trace with torch.fx"))
        return found
    leaders = {
        norm: conv
        for conv, norm in pairs.items()
        if conv in targets and getattr(targets[conv], "groups", 0) == 1
    }
    for node in graph.nodes:
        name = str(node.target)
        if node.op != "call_module" or not (name in grouped or name in targets):
            continue
        conv = modules[name]
        if name in targets and not is_depthwise(conv):
            continue
        why = _why_not(node, conv, modules, leaders, pairs)
        if isinstance(why, str):
            if name in grouped:
                found.refused[name] = why
            continue
        producer, tie = why
        found.producers[name] = producer
        if tie > 1:
            found.ties[producer] = tie
    return found


def _why_not(
    node: fx.Node,
    conv: nn.Module,
    modules: dict[str, nn.Module],
    leaders: dict[str, str],
    pairs: dict[str, str],
) -> str | tuple[str, int]:
    """Why the grouped conv at ``node`` cannot follow, or ``(producer, channels per gate)``."""
    if str(node.target) not in pairs:
        return "no BatchNorm2d of its own is its only consumer"
    tie = conv.in_channels // conv.groups
    cur = node.all_input_nodes[0] if len(node.all_input_nodes) == 1 else None
    blocker: fx.Node | None = None
    while cur is not None and len(cur.users) == 1:
        if cur.op == "call_module" and str(cur.target) in leaders:
            producer = leaders[str(cur.target)]
            width = modules[producer].out_channels
            if width != conv.in_channels:
                return f"{producer} has {width} channels, it reads {conv.in_channels}"
            if tie > 1 and blocker is not None:
                return (
                    f"{blocker.name!r} between {producer}'s BatchNorm2d and it may not keep "
                    "zeros at zero"
                )
            return producer, tie
        if len(cur.all_input_nodes) != 1:
            break
        if blocker is None and not keeps_zeros(cur, modules):
            blocker = cur
        cur = cur.all_input_nodes[0]
    return (
        "its input is not the output of an ungrouped conv to gate and that conv's BatchNorm2d "
        "(through single-input ops nothing else reads)"
    )


def gate_follower_norms(
    model: nn.Module, followers: dict[str, str], pairs: dict[str, str]
) -> list[str]:
    """Replace each follower's BatchNorm by one applying its producer's gates, in place.

    Called by :func:`~l0_sparsity.nn.sparsifying.sparsify` once the producers are gated.

    Args:
        model: The model being sparsified.
        followers: Follower conv name → producer conv name (:attr:`Followers.producers`).
        pairs: Conv name → name of its BatchNorm; the producers' norms are already gated.

    Returns:
        The names of the replaced norms.
    """
    replaced = []
    for name, producer in followers.items():
        leader = model.get_submodule(pairs[producer])
        bn = model.get_submodule(pairs[name])
        assert isinstance(leader, GatedBatchNorm2d) and isinstance(bn, nn.BatchNorm2d)
        follower = GatedBatchNorm2d.from_batchnorm(bn, leader.gate_layer)
        model.set_submodule(pairs[name], follower)
        share_gates(leader, follower)
        replaced.append(pairs[name])
    return replaced
