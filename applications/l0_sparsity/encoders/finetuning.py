"""Fine-tuning a (purged) sentence encoder towards a frozen teacher with a distillation's budget.

:func:`finetune_encoder` trains the weights only (no gates, no budget) with the loss, epochs,
batches, learning rate, dropout, seed and batch order of a
:class:`~l0_sparsity.encoders.training.DistillConfig`: the fine-tuned baseline of
:mod:`~l0_sparsity.encoders.magnitude` gets the training budget of
:func:`~l0_sparsity.encoders.training.distill_minilm`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from l0_sparsity.encoders.pooling import mean_pool
from l0_sparsity.encoders.training import DistillConfig
from l0_sparsity.nn import weight_parameters

__all__ = ["FinetuneResult", "finetune_encoder"]

Targets = Tensor | tuple[Tensor, Tensor]  # sentence embeddings, with the last hidden states


@dataclass
class FinetuneResult:
    """What :func:`finetune_encoder` returns (the model is trained in place).

    Attributes:
        history: One dict per epoch: the epoch, mean ``loss`` (cosine distance) and ``cosine``.
        seconds: Wall time of the training.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _cosine_distance(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean ``1 - cos`` along the last dimension, over the entries where ``mask`` is 1."""
    distance = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    if mask is None:
        return distance.mean()
    weights = mask.to(distance.dtype)
    return (distance * weights).sum() / weights.sum().clamp_min(1.0)


def _embeddings(model: nn.Module, batch: tuple[Tensor, Tensor], tokens: bool) -> Targets:
    """The sentence embeddings of a batch, with the last hidden states if ``tokens``."""
    ids, mask = batch
    if not tokens:
        return model(ids, mask)
    if not hasattr(model, "token_embeddings"):
        raise ValueError(
            f"token_weight > 0 needs the last hidden states: {type(model).__name__} has no "
            "token_embeddings (wrap the encoder in a SentenceEncoder)"
        )
    states = model.token_embeddings(ids, mask)
    return mean_pool(states, mask), states


def _distillation_loss(
    student: Targets, teacher: Targets, mask: Tensor, token_weight: float
) -> tuple[Tensor, Tensor]:
    """The loss of a :class:`~l0_sparsity.encoders.distillation.DistillationProblem`.

    Without its constraints; returned with the sentence-level cosine distance (for logs).
    """
    if isinstance(student, Tensor):
        sentence = _cosine_distance(student, teacher if isinstance(teacher, Tensor) else teacher[0])
        return sentence, sentence
    (embeddings, states), (target, target_states) = student, teacher
    sentence = _cosine_distance(embeddings, target)
    return sentence + token_weight * _cosine_distance(states, target_states, mask), sentence


def finetune_encoder(
    model: nn.Module,
    teacher: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    config: DistillConfig,
    *,
    progress: Callable[[str], None] | None = print,
) -> FinetuneResult:
    """Fine-tune a (purged) sentence encoder's weights towards a frozen teacher's embeddings.

    The distillation's budget without its gates: Adam at ``config.lr`` on every non-gate
    parameter (each made trainable: a copy of a frozen teacher starts with none), the loss of
    :class:`~l0_sparsity.encoders.distillation.DistillationProblem` (the mean cosine distance
    to the teacher's embeddings, plus ``config.token_weight`` times that of the last hidden
    states over the real tokens), ``config.epochs`` passes in train mode with every
    ``nn.Dropout`` at ``config.student_dropout`` (``None``: as it is), the batches in the order
    of :func:`torch.randperm` drawn each epoch from one generator seeded with ``config.seed``,
    and ``torch.manual_seed(config.seed)`` first.

    Args:
        model: The student, called as ``model(input_ids, attention_mask)`` (a
            :class:`~l0_sparsity.encoders.SentenceEncoder` with ``token_weight > 0``); trained in
            place and left in eval mode. A gated one keeps its gates (set them with
            :func:`~l0_sparsity.encoders.magnitude.set_gate_pattern`).
        teacher: The frozen teacher (its embeddings of each batch are computed once, in eval
            mode).
        batches: The distillation's training batches (the same sentences, order, batch size
            and length).
        config: The distillation's settings (``epochs``, ``lr``, ``token_weight``,
            ``student_dropout`` and ``seed`` are read).
        progress: Called with one line per epoch (``None``: silent).

    Returns:
        The per-epoch history and the training's wall time.

    Raises:
        ValueError: If there are no batches, or ``token_weight > 0`` and a model has no
            ``token_embeddings``.
    """
    if not batches:
        raise ValueError("finetune_encoder needs at least one batch")
    torch.manual_seed(config.seed)
    tokens = config.token_weight > 0
    with torch.no_grad():
        was_training = teacher.training
        teacher.eval()
        targets = [_embeddings(teacher, batch, tokens) for batch in batches]
        teacher.train(was_training)
    if config.student_dropout is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = config.student_dropout
    weights = weight_parameters(model)
    for weight in weights:
        weight.requires_grad_(True)
    optimizer = torch.optim.Adam(weights, lr=config.lr)
    order = torch.Generator().manual_seed(config.seed)
    result = FinetuneResult()
    start = time.perf_counter()
    model.train()
    for epoch in range(config.epochs):
        losses, cosines = [], []
        for index in torch.randperm(len(batches), generator=order).tolist():
            embeddings = _embeddings(model, batches[index], tokens)
            loss, sentence = _distillation_loss(
                embeddings, targets[index], batches[index][1], config.token_weight
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            cosines.append(1.0 - float(sentence.detach()))
        row = {"epoch": epoch + 1, "loss": _mean(losses), "cosine": _mean(cosines)}
        result.history.append(row)
        if progress is not None:
            progress("  ".join(f"{k}={v:.4g}" for k, v in row.items()))
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
