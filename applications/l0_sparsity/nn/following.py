"""Depthwise convolutions that follow the channel gates of the convolution feeding them.

A depthwise convolution (``groups == in_channels == out_channels``) computes output channel
``c`` from input channel ``c`` alone. When a structured convolution ``P`` feeds it through
channel-wise ops that map 0 to 0, a channel that ``P``'s gates kill reaches the depthwise
convolution as exact zeros, so its filter ``c`` has nothing to read: the depthwise convolution
*follows* ``P``'s gates and a purge drops its filter ``c`` together with ``P``'s.

Its BatchNorm would still turn those zeros into a constant (its shift), so
:func:`~l0_sparsity.nn.sparsifying.sparsify` gates that norm with ``P``'s gates: a
:class:`~l0_sparsity.nn.batchnorm.GatedBatchNorm2d` whose ``gate_layer`` is ``P``. In a training
pass both norms must apply the *same* sample of ``P``'s gates; :func:`share_gates` installs the
two forward pre-hooks that hand the leader's sample to the follower.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, fx, nn

from l0_sparsity.nn.batchnorm import GatedBatchNorm2d

__all__ = [
    "SharedGates",
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


class SharedGates:
    """Forward pre-hooks making ``follower`` apply the gate sample that ``leader`` applies.

    Both norms apply the gates of the same convolution. Before ``leader`` runs, the hook takes
    the convolution's gates for this pass (the joint sample it was offered, or a fresh one) and
    offers them back, so that ``leader`` consumes them as usual; before ``follower`` runs, the
    hook offers the same gates again. Eval-mode passes use the deterministic test-time gates and
    are left alone.

    Args:
        leader: The norm right after the convolution whose gates both apply.
        follower: The norm after the depthwise convolution that follows it.

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
        follower: A norm applying the same convolution's gates after a depthwise convolution
            that follows it.

    Returns:
        The installed hooks.
    """
    return SharedGates(leader, follower)


def find_followers(
    graph: fx.Graph | None, targets: dict[str, nn.Module], pairs: dict[str, str]
) -> dict[str, str]:
    """The depthwise convs about to be gated that should follow their producer's gates instead.

    A depthwise conv follows a conv ``P`` when ``P`` (an ungrouped conv about to be gated) is
    paired with a BatchNorm, that norm's output reaches the depthwise conv through a chain of
    single-input nodes used nowhere else, and the depthwise conv is paired with a BatchNorm of
    its own. Whether the chain maps zeros to zeros is checked where the purge reads the graph
    (:meth:`~l0_sparsity.nn.graph.GatedGraph.consumers`); where it does not, the depthwise conv
    keeps its full width and its norm applies ``P``'s gates, which the purge folds in exactly.

    Args:
        graph: The traced dense model (``None`` if it does not trace: no followers).
        targets: The layers about to be gated, by qualified name.
        pairs: Conv name → name of the BatchNorm that is its only consumer.

    Returns:
        Depthwise conv name → producer conv name.
    """
    if graph is None:
        return {}
    leaders = {
        norm: conv
        for conv, norm in pairs.items()
        if conv in targets and getattr(targets[conv], "groups", 0) == 1
    }
    found: dict[str, str] = {}
    for node in graph.nodes:
        name = str(node.target)
        if node.op != "call_module" or name not in targets or name not in pairs:
            continue
        if not is_depthwise(targets[name]) or not node.all_input_nodes:
            continue
        cur = node.all_input_nodes[0]
        while len(cur.users) == 1:
            if cur.op == "call_module" and str(cur.target) in leaders:
                found[name] = leaders[str(cur.target)]
                break
            if len(cur.all_input_nodes) != 1:
                break
            cur = cur.all_input_nodes[0]
    return found


def gate_follower_norms(
    model: nn.Module, followers: dict[str, str], pairs: dict[str, str]
) -> list[str]:
    """Replace each follower's BatchNorm by one applying its producer's gates, in place.

    Called by :func:`~l0_sparsity.nn.sparsifying.sparsify` once the producers are gated.

    Args:
        model: The model being sparsified.
        followers: Depthwise conv name → producer conv name (:func:`find_followers`).
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
