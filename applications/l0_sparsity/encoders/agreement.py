"""How close a student's sentence embeddings are to a teacher's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["EmbeddingAgreement", "embedding_agreement"]


@dataclass(frozen=True)
class EmbeddingAgreement:
    """Agreement of two embeddings of the same sentences.

    Attributes:
        mean_cosine: The mean over sentences of the cosine similarity between the student's and
            the teacher's embedding of that sentence.
        min_cosine: The smallest of those similarities.
        neighbour_agreement: The fraction of sentences whose most similar *other* sentence
            (cosine similarity) is the same under the student and the teacher.
        sentences: How many sentences were compared.
    """

    mean_cosine: float
    min_cosine: float
    neighbour_agreement: float
    sentences: int


def _nearest_other(embeddings: Tensor) -> Tensor:
    normalized = F.normalize(embeddings.double(), dim=1)
    similarity = normalized @ normalized.T
    similarity.fill_diagonal_(-float("inf"))
    return similarity.argmax(1)


@torch.no_grad()
def embedding_agreement(student: Tensor, teacher: Tensor) -> EmbeddingAgreement:
    """Compare a student's sentence embeddings with a teacher's, sentence by sentence.

    Args:
        student: ``(sentences, hidden)`` embeddings from the student.
        teacher: ``(sentences, hidden)`` embeddings of the same sentences from the teacher.

    Returns:
        The mean and smallest cosine similarity and the nearest-neighbour agreement.

    Raises:
        ValueError: If the shapes differ or fewer than 2 sentences are given.

    Example:
        >>> import torch
        >>> from l0_sparsity.encoders import embedding_agreement
        >>> e = torch.eye(3)
        >>> embedding_agreement(e, e).neighbour_agreement
        1.0
    """
    if student.shape != teacher.shape or student.dim() != 2 or student.shape[0] < 2:
        raise ValueError(
            "student and teacher must be (sentences, hidden) embeddings of the same shape with "
            f"at least 2 sentences; got {tuple(student.shape)} and {tuple(teacher.shape)}."
        )
    cosine = F.cosine_similarity(student.double(), teacher.double(), dim=1)
    agree = (_nearest_other(student) == _nearest_other(teacher)).double().mean()
    return EmbeddingAgreement(
        mean_cosine=float(cosine.mean()),
        min_cosine=float(cosine.min()),
        neighbour_agreement=float(agree),
        sentences=int(student.shape[0]),
    )
