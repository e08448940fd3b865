r"""Compute measures: the purged model's MACs and parameters, in expectation over the gates.

:class:`ComputeCost` traces the gated model once and reads the same width rules the purge
follows (:func:`~l0_sparsity.nn.structure.purge_structure`): for every layer a purge can shrink,
which gates decide how many of its output rows and input columns survive. A layer's purged MACs
and weights are then ``unit · rows · cols`` (``unit``: MACs per (output, input) pair, i.e. kernel
area × output positions, measured by ``torch.utils.flop_counter`` in one forward pass at batch 1;
weights per pair, i.e. kernel area), its bias ``rows`` and a gated BatchNorm ``2 · rows``;
everything else is a constant. With independent gates

.. math::

    E[\text{MACs}] = c + \sum_\text{layers} \text{unit} \cdot E[\text{rows}] \cdot E[\text{cols}],

where each expected width is the multilinear count of :mod:`~l0_sparsity.measures.counting` at
the keep probabilities ``P(z ≠ 0)``. The same function at the test-time 0/1 pattern gives the
purged model's counts to the unit: MACs as ``FlopCounterMode`` FLOPs / 2 of
:func:`l0_sparsity.purge`'s output, parameters as :func:`~l0_sparsity.purging.count_params` of it.

What the purge does not shrink counts at full width: unstructured gates (the purged weights hold
zeros but keep their shape), grouped convolutions that follow no gates, layers called more than
once, channels that reach a residual addition (scattered back to full width). A gate governing a
block of channels (``channels_per_gate``) counts for its whole block. A depthwise convolution
counts the filters it keeps: its own gates', or those of the convolution it follows; any other
grouped convolution that follows counts the filters of the groups it keeps (``out_channels /
groups`` each) times its fixed ``in_channels / groups`` inputs per filter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from l0_sparsity.measures.bert_cost import bert_terms
from l0_sparsity.measures.cost_terms import CostTerms, build_terms
from l0_sparsity.measures.counting import RuleCounts
from l0_sparsity.nn.bert import holds_bert_gates

__all__ = ["ComputeCost"]


class ComputeCost:
    """Expected MACs and parameters of the model that :func:`l0_sparsity.purge` makes.

    Built once per gated model and input shape (one traced forward); then each call is a short
    sum of products of the gates' expected counts, differentiable in the gate parameters.

    Args:
        model: A gated model (see :func:`l0_sparsity.sparsify`); its live ``log α`` are read at
            every call.
        example_input: An input batch, or its shape, at which spatial sizes are measured (its
            first example is used: MACs are per example). For a BERT-style model with head
            gates: token ids ``(batch, L)`` or their shape (:mod:`~l0_sparsity.measures.bert_cost`).

    Attributes:
        dense_macs: MACs of the dense model (every gate kept), per example.
        dense_params: Parameters of the dense model (gate parameters excluded).
        fixed_macs: MACs of the purge with every gate dead: the ungated layers, plus the one
            group a purge keeps of a layer whose gates are all dead. The floor of any MACs
            budget (no gate pattern purges to fewer).
        fixed_params: Parameters of the purge with every gate dead: the floor of any parameter
            budget.

    Raises:
        ValueError: If the measure could not be exact, naming the module: the model does not
            trace; a gated layer runs inside a module the graph does not see into, or its
            parameters are read outside it; a shrinkable layer shares parameters; a layer's
            rows and columns depend on the same gates.

    Example:
        >>> from l0_sparsity.measures import ComputeCost
        >>> from l0_sparsity.models import build_model
        >>> model = build_model("lenet5")
        >>> cost = ComputeCost(model, (1, 1, 28, 28))
        >>> fraction = cost.expected_macs() / cost.dense_macs  # differentiable in the gates
        >>> cost.fixed_macs <= cost.test_macs() <= cost.dense_macs
        True
    """

    dense_macs: int
    dense_params: int
    fixed_macs: int
    fixed_params: int

    def __init__(self, model: nn.Module, example_input: Tensor | tuple[int, ...]) -> None:
        self._terms: CostTerms = (
            bert_terms(model, example_input)
            if holds_bert_gates(model)
            else build_terms(model, example_input)
        )
        self._counts: RuleCounts = self._terms.counts
        self._anchor = next(iter(model.parameters()), None)  # where a constant result goes
        self.dense_macs, self.dense_params = self._at_pattern(1.0)
        self.fixed_macs, self.fixed_params = self._at_pattern(0.0)

    def expected(self) -> Tensor:
        """Expected ``(MACs, parameters)`` of the purged model, as one differentiable vector.

        One evaluation for both measures (use it when a step needs both). A model whose gates
        cannot change the purge (none structured) gets its constant counts, without gradient.

        Returns:
            A vector of two scalars in the gates' floating dtype (at least float32).
        """
        p, logq = self._counts.keep_probabilities()
        if p.dtype not in (torch.float32, torch.float64):
            p, logq = p.float(), logq.float()
        values = self._terms.evaluate(self._counts.counts(p, logq))
        if not self._counts.layers and self._anchor is not None:
            values = values.to(self._anchor.device)
        return values

    def expected_macs(self) -> Tensor:
        """Expected MACs per example of the purged model: a differentiable scalar."""
        return self.expected()[0]

    def expected_params(self) -> Tensor:
        """Expected parameter count of the purged model: a differentiable scalar."""
        return self.expected()[1]

    def test_macs(self) -> int:
        """MACs per example of the purged model at the test-time gates (exact)."""
        return self._test()[0]

    def test_params(self) -> int:
        """Parameters of the purged model at the test-time gates (exact)."""
        return self._test()[1]

    def test_breakdown(self) -> dict[str, tuple[int, int]]:
        """``{layer: (MACs, params)}`` at the test-time gates, for logs.

        Returns:
            One entry per layer a purge can shrink (by module target), then ``"fixed"`` for
            everything else; the entries sum to :meth:`test_macs` and :meth:`test_params`.
        """
        with torch.no_grad():
            return self._terms.breakdown(self._counts.counts(*self._counts.test_pattern()))

    def _test(self) -> tuple[int, int]:
        with torch.no_grad():
            return _exact(self._terms.evaluate(self._counts.counts(*self._counts.test_pattern())))

    def _at_pattern(self, value: float) -> tuple[int, int]:
        """MACs and parameters with every gate kept (1.0) or dead (0.0)."""
        n = sum(layer.num_gates for layer in self._counts.layers)
        z = torch.full((n,), value, dtype=torch.float64)
        return _exact(self._terms.evaluate(self._counts.counts(z, torch.log1p(-z))))


def _exact(values: Tensor) -> tuple[int, int]:
    """The two counts of a 0/1 evaluation as integers (they are integers in float64)."""
    macs, params = (round(float(v)) for v in values)
    return macs, params
