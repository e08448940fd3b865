r"""Distilling a sentence encoder to a budget: the student's embeddings against a frozen teacher's.

.. math::

    \min_{\theta,\ \log\alpha}\ \mathbb{E}_z\left[\frac{1}{B}\sum_{i}
    \left(1 - \cos\left(f_{\theta \odot z}(x_i),\ t_i\right)\right)\right]
    \quad \text{s.t.} \quad \frac{\mathbb{E}[\mathrm{MACs}]}{\mathrm{MACs}_\text{dense}}
    - \tau \le 0,

where :math:`f` is the gated student (a :class:`~l0_sparsity.encoders.SentenceEncoder`),
:math:`t_i` the frozen teacher's embedding of sentence :math:`i` (computed once, before
training) and the budget any of :class:`~l0_sparsity.problem.SparsityProblem`'s (MACs at a
stated sequence length, parameters, density). The cosine distance is the loss because the model
is used through cosine similarity (its model card normalizes the mean-pooled embeddings).
"""

from __future__ import annotations

import dataclasses

from torch import Tensor
from torch.nn import functional as F

import conopt
from l0_sparsity.problem import SparsityProblem

__all__ = ["DistillationProblem"]


class DistillationProblem(SparsityProblem):
    """A gated sentence encoder matching a teacher's embeddings, under sparsity budgets.

    Takes the arguments of :class:`~l0_sparsity.problem.SparsityProblem` (the model is the
    gated student, called as ``model(input_ids, attention_mask)``); :meth:`evaluate` takes the
    tokenized batch as ``inputs`` and the teacher's embeddings of it as ``targets``.

    Example:
        >>> import torch
        >>> from l0_sparsity.encoders import SentenceEncoder
        >>> from l0_sparsity.encoders.distillation import DistillationProblem
        >>> from l0_sparsity.nn import sparsify
        >>> class Toy(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed = torch.nn.Embedding(10, 4)
        ...         self.ffn = torch.nn.Sequential(
        ...             torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
        ...     def forward(self, input_ids, attention_mask):
        ...         return self.ffn(self.embed(input_ids))
        >>> student = sparsify(SentenceEncoder(Toy()), skip="encoder.embed")
        >>> problem = DistillationProblem(student, target=0.5)
        >>> ids, mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 3)
        >>> state = problem.evaluate((ids, mask), torch.randn(1, 4))
        >>> sorted(state.extras)[:2]
        ['cosine', 'density']
    """

    def evaluate(  # type: ignore[override]
        self, inputs: tuple[Tensor, Tensor], targets: Tensor
    ) -> conopt.ProblemState:
        """The mean cosine distance to the teacher's embeddings, with the budget constraints.

        Args:
            inputs: ``(input_ids, attention_mask)`` of a tokenized batch.
            targets: The teacher's embeddings of the same batch, ``(batch, hidden)``.

        Returns:
            The state of :meth:`~l0_sparsity.problem.SparsityProblem.constrained_state`;
            ``extras`` adds ``cosine`` (the batch's mean cosine similarity to the teacher).

        Raises:
            ValueError: If ``inputs`` is not a pair or the embeddings' shapes differ.
        """
        if not isinstance(inputs, tuple | list) or len(inputs) != 2:
            raise ValueError(
                "DistillationProblem.evaluate takes inputs=(input_ids, attention_mask); got "
                f"{type(inputs).__name__}."
            )
        embeddings = self.model(*inputs).float()
        if embeddings.shape != targets.shape:
            raise ValueError(
                f"the student's embeddings have shape {tuple(embeddings.shape)} but the "
                f"teacher's (targets) have {tuple(targets.shape)}."
            )
        cosine = F.cosine_similarity(embeddings, targets.float(), dim=1)
        state = self.constrained_state((1.0 - cosine).mean())
        return dataclasses.replace(state, extras={"cosine": cosine.mean().detach(), **state.extras})
