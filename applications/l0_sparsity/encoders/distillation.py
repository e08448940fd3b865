r"""Distilling a sentence encoder to a budget: the student's embeddings against a frozen teacher's.

.. math::

    \min_{\theta,\ \log\alpha}\ \mathbb{E}_z\left[\frac{1}{B}\sum_{i}
    \left(1 - \cos\left(f_{\theta \odot z}(x_i),\ t_i\right)\right)\right]
    \quad \text{s.t.} \quad \frac{\mathbb{E}[\mathrm{MACs}]}{\mathrm{MACs}_\text{dense}}
    - \tau \le 0,

plus, with ``token_weight`` :math:`w > 0`, :math:`w` times the mean cosine distance between the
student's and the teacher's last hidden states over the real tokens (a denser signal than the
pooled embedding alone: one target per token rather than one per sentence), where :math:`f` is
the gated student (a :class:`~l0_sparsity.encoders.SentenceEncoder`),
:math:`t_i` the frozen teacher's embedding of sentence :math:`i` (computed once, before
training) and the budget any of :class:`~l0_sparsity.problem.SparsityProblem`'s (MACs at a
stated sequence length, parameters, density). The cosine distance is the loss because the model
is used through cosine similarity (its model card normalizes the mean-pooled embeddings).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

import conopt
from l0_sparsity.encoders.pooling import mean_pool
from l0_sparsity.problem import SparsityProblem

__all__ = ["DistillationProblem"]


class DistillationProblem(SparsityProblem):
    """A gated sentence encoder matching a teacher's embeddings, under sparsity budgets.

    Takes the arguments of :class:`~l0_sparsity.problem.SparsityProblem` (the model is the
    gated student, a :class:`~l0_sparsity.encoders.SentenceEncoder`) and ``token_weight``;
    :meth:`evaluate` takes the tokenized batch as ``inputs`` and the teacher's sentence
    embeddings of it as ``targets`` (with ``token_weight > 0``, the pair of the teacher's
    sentence embeddings and last hidden states).

    Args:
        model: The gated student.
        token_weight: Weight of the token-level cosine distance (0: sentence embeddings only).
        **kwargs: The budgets and options of :class:`~l0_sparsity.problem.SparsityProblem`.

    Raises:
        ValueError: If ``token_weight`` is negative.

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

    def __init__(self, model: torch.nn.Module, *, token_weight: float = 0.0, **kwargs: Any) -> None:
        if token_weight < 0:
            raise ValueError(f"token_weight must be >= 0, got {token_weight}.")
        super().__init__(model, **kwargs)
        self.token_weight = float(token_weight)

    def evaluate(  # type: ignore[override]
        self, inputs: tuple[Tensor, Tensor], targets: Tensor | tuple[Tensor, Tensor]
    ) -> conopt.ProblemState:
        """The mean cosine distance to the teacher's embeddings, with the budget constraints.

        Args:
            inputs: ``(input_ids, attention_mask)`` of a tokenized batch.
            targets: The teacher's embeddings of the same batch, ``(batch, hidden)``; with
                ``token_weight > 0``, ``(embeddings, last_hidden_states)``, the second
                ``(batch, tokens, hidden)``.

        Returns:
            The state of :meth:`~l0_sparsity.problem.SparsityProblem.constrained_state`;
            ``extras`` adds ``cosine`` (the batch's mean cosine similarity to the teacher).

        Raises:
            ValueError: If ``inputs`` is not a pair, the targets do not match ``token_weight``
                or the embeddings' shapes differ.
        """
        if not isinstance(inputs, tuple | list) or len(inputs) != 2:
            raise ValueError(
                "DistillationProblem.evaluate takes inputs=(input_ids, attention_mask); got "
                f"{type(inputs).__name__}."
            )
        ids, mask = inputs
        if self.token_weight == 0:
            embeddings = self.model(ids, mask).float()
            _check_shape("embeddings", embeddings, targets)
            sentence_loss, token_loss = _cosine_distance(embeddings, targets), None
        else:
            if not isinstance(targets, tuple | list) or len(targets) != 2:
                raise ValueError(
                    "with token_weight > 0, targets are (embeddings, last_hidden_states) of the "
                    f"teacher; got {type(targets).__name__}."
                )
            tokens = self.model.token_embeddings(ids, mask).float()
            _check_shape("last hidden states", tokens, targets[1])
            embeddings = mean_pool(tokens, mask)
            _check_shape("embeddings", embeddings, targets[0])
            sentence_loss = _cosine_distance(embeddings, targets[0])
            token_loss = _cosine_distance(tokens, targets[1], mask)
        loss = (
            sentence_loss if token_loss is None else sentence_loss + self.token_weight * token_loss
        )
        state = self.constrained_state(loss)
        extras = {"cosine": 1.0 - sentence_loss.detach()}
        if token_loss is not None:
            extras["token_cosine"] = 1.0 - token_loss.detach()
        return dataclasses.replace(state, extras={**extras, **state.extras})


def _check_shape(what: str, student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"the student's {what} have shape {tuple(student.shape)} but the teacher's "
            f"(targets) have {tuple(teacher.shape)}."
        )


def _cosine_distance(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean ``1 - cos`` along the last dimension, over the entries where ``mask`` is 1."""
    distance = 1.0 - F.cosine_similarity(student, teacher.float(), dim=-1)
    if mask is None:
        return distance.mean()
    weights = mask.to(distance.dtype)
    return (distance * weights).sum() / weights.sum().clamp_min(1.0)
