r"""Width rules as counts: how many rows or columns survive, multilinear in the gates.

A purge keeps the groups whose test-time gate is positive, and the first group of a layer if
none is (:mod:`l0_sparsity.nn.structure`). With ``z_i ∈ {0, 1}`` the kept indicators of a
layer's gates, the number of entries a :class:`~l0_sparsity.nn.structure.Kept` rule keeps is

.. math::

    K(z) = \sum_i z_i + \prod_i (1 - z_i),

(the product is 1 exactly when every gate is dead), and the number of features a
:class:`~l0_sparsity.nn.structure.Picked` rule keeps, for a linear layer with gates ``l`` over
the flattened ``C × r`` channels of a convolution with gates ``a``
(``S_c = Σ_o l_{c,o}``, ``D_c = Π_o (1 − l_{c,o})``), is ``M + 1[M = 0]`` with

.. math::

    M = \sum_c a_c S_c + \prod_c (1 - a_c)\, S_0, \qquad
    1[M = 0] = \prod_c \big(1 - a_c (1 - D_c)\big) - \prod_c (1 - a_c)\,(1 - D_0).

Every count is multilinear (of degree at most one in each gate), so with independent gates its
expectation is the same function of the keep probabilities ``p_i = P(z_i ≠ 0)``:
:meth:`RuleCounts.counts` evaluated at ``p`` is the expected count, and at the test-time 0/1
pattern the purged model's exact count. Products ``K_rows · K_cols`` stay multilinear as long as
rows and columns depend on different gates, which :class:`~l0_sparsity.measures.ComputeCost`
checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from l0_sparsity.nn import GatedLayer, HardConcrete
from l0_sparsity.nn.structure import Kept, Picked, Width

__all__ = ["RuleCounts", "rule_layers"]


def rule_layers(rule: Width | None) -> set[str]:
    """Targets of the gated layers whose gates a rule depends on.

    Args:
        rule: A width rule, or ``None`` (a width no gate changes).

    Returns:
        The layer targets (empty for ``None``).
    """
    if rule is None:
        return set()
    if isinstance(rule, Kept):
        return {rule.layer}
    return {rule.layer} | rule_layers(rule.within)


class RuleCounts:
    """The counts of a fixed set of width rules, evaluated together as one vector.

    Slot 0 of the vector is the constant 1; then one slot per gated layer (its :math:`K`), then
    one per :class:`~l0_sparsity.nn.structure.Picked` rule that reads a convolution's channels.
    :meth:`slot` registers a rule and says where its count is and by what it is scaled.

    Args:
        layers: The structured gated layers that rules may name, by module target (the live
            layers whose ``log α`` the counts follow).

    Raises:
        ValueError: If a layer's distribution overrides the hard-concrete ``P(z ≠ 0)``.
    """

    def __init__(self, layers: dict[str, GatedLayer]) -> None:
        for target, layer in layers.items():
            if type(layer.distribution).prob_nonzero is not HardConcrete.prob_nonzero:
                raise ValueError(
                    f"ComputeCost: the gates of {target!r} follow a distribution whose P(z ≠ 0) "
                    "is not the hard-concrete closed form the counts are written for"
                )
        self.targets = list(layers)
        self.layers = list(layers.values())
        self._position = {target: i for i, target in enumerate(self.targets)}
        self._picked: list[tuple[int, int, int]] = []  # (linear, conv, repeat) positions
        self._picked_slot: dict[Picked, int] = {}
        self._segments: dict[torch.device, Tensor] = {}

    @property
    def num_slots(self) -> int:
        """Length of the count vector."""
        return 1 + len(self.layers) + len(self._picked)

    def slot(self, rule: Width | None, full: int) -> tuple[int, int]:
        """Where the count of ``rule`` is, and its scale: the width is ``scale · v[slot]``.

        Args:
            rule: A width rule, or ``None`` for a width no gate changes.
            full: The full width (used when ``rule`` is ``None``).

        Returns:
            ``(slot, scale)``.
        """
        if rule is None:
            return 0, full
        if isinstance(rule, Kept):
            return 1 + self._position[rule.layer], rule.repeat
        if rule.within is None:
            return 1 + self._position[rule.layer], 1
        if rule not in self._picked_slot:
            self._picked_slot[rule] = self.num_slots
            conv = rule.within
            self._picked.append(
                (self._position[rule.layer], self._position[conv.layer], conv.repeat)
            )
        return self._picked_slot[rule], 1

    def keep_probabilities(self) -> tuple[Tensor, Tensor]:
        """``P(z ≠ 0)`` and ``log P(z = 0)`` of every gate, concatenated in layer order.

        ``log P(z = 0) = log σ(β log(−γ/ζ) − log α)`` is computed directly (finite and with a
        finite gradient even where ``P(z ≠ 0)`` rounds to 1).

        Returns:
            Two flat tensors, differentiable w.r.t. the layers' ``log α``.
        """
        if not self.layers:
            return torch.zeros(0), torch.zeros(0)
        distributions = {layer.distribution for layer in self.layers}
        flat = torch.cat([layer.log_alpha.reshape(-1) for layer in self.layers])
        if len(distributions) == 1:
            (dist,) = distributions
            return dist.prob_nonzero(flat), F.logsigmoid(dist.threshold - flat)
        p = [layer.distribution.prob_nonzero(layer.log_alpha.reshape(-1)) for layer in self.layers]
        logq = [
            F.logsigmoid(layer.distribution.threshold - layer.log_alpha.reshape(-1))
            for layer in self.layers
        ]
        return torch.cat(p), torch.cat(logq)

    def test_pattern(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        """The test-time 0/1 pattern in place of :meth:`keep_probabilities` (``log 0 = −∞``).

        Args:
            dtype: Floating dtype of the pattern (float64 keeps counts exact up to 2⁵³).

        Returns:
            The kept indicators and their ``log(1 − z)``.
        """
        with torch.no_grad():
            masks = [layer.active_mask().reshape(-1) for layer in self.layers]
            z = torch.cat(masks).to(dtype) if masks else torch.zeros(0, dtype=dtype)
        return z, torch.log1p(-z)

    def counts(self, p: Tensor, logq: Tensor) -> Tensor:
        """The count vector at keep indicators or probabilities ``p`` (``logq = log(1 − p)``).

        Args:
            p: One entry per gate, in layer order.
            logq: ``log(1 − p)``, same shape.

        Returns:
            ``v`` of length :attr:`num_slots`, multilinear in ``p``.
        """
        segments = self._segment_index(p.device)
        n = len(self.layers)
        kept_sum = p.new_zeros(n).index_add(0, segments, p)
        all_dead = p.new_zeros(n).index_add(0, segments, logq).exp()
        parts = [p.new_ones(1), kept_sum + all_dead]
        if self._picked:
            sizes = [layer.num_gates for layer in self.layers]
            p_parts, logq_parts = p.split(sizes), logq.split(sizes)
            parts.append(
                torch.stack(
                    [
                        _picked_count(p_parts, logq_parts, all_dead, *picked)
                        for picked in self._picked
                    ]
                )
            )
        return torch.cat(parts)

    def _segment_index(self, device: torch.device) -> Tensor:
        cached = self._segments.get(device)
        if cached is None:
            gates = [layer.num_gates for layer in self.layers]
            sizes = torch.tensor(gates, dtype=torch.long, device=device)
            cached = torch.arange(len(self.layers), device=device).repeat_interleave(sizes)
            self._segments[device] = cached
        return cached


def _picked_count(
    p: Sequence[Tensor],
    logq: Sequence[Tensor],
    all_dead: Tensor,
    linear: int,
    conv: int,
    repeat: int,
) -> Tensor:
    """``M + 1[M = 0]``: the features a linear layer picks among a conv's flattened channels."""
    a = p[conv]
    picked = p[linear].view(-1, repeat).sum(1)  # S_c
    none_picked = logq[linear].view(-1, repeat).sum(1).exp()  # D_c
    conv_dead = all_dead[conv]
    present = (a * picked).sum() + conv_dead * picked[0]
    empty = (1 - a * (1 - none_picked)).prod() - conv_dead * (1 - none_picked[0])
    return present + empty
