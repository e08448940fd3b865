"""Sentence encoders: the pretrained MiniLM, mean pooling, and agreement with a teacher.

* :mod:`~l0_sparsity.encoders.minilm`: the all-MiniLM-L6-v2 encoder and its tokenizer, offline.
* :mod:`~l0_sparsity.encoders.pooling`: :class:`SentenceEncoder`, a model that maps token ids
  and an attention mask to mean-pooled sentence embeddings.
* :mod:`~l0_sparsity.encoders.export`: a (purged) encoder as an ONNX file, checked in
  onnxruntime.
* :mod:`~l0_sparsity.encoders.agreement`: how close a student's embeddings are to a teacher's
  (mean cosine similarity, nearest-neighbour agreement).
* :mod:`~l0_sparsity.encoders.magnitude`: the baseline of distillation: one-shot magnitude
  pruning of heads and FFN units to the same MACs budget.
* :mod:`~l0_sparsity.encoders.finetuning`: the purged encoder's weights fine-tuned towards the
  teacher with the distillation's training budget.
"""

from l0_sparsity.encoders.agreement import EmbeddingAgreement, embedding_agreement
from l0_sparsity.encoders.export import export_encoder_onnx
from l0_sparsity.encoders.finetuning import FinetuneResult, finetune_encoder
from l0_sparsity.encoders.magnitude import (
    MagnitudePattern,
    MagnitudeScores,
    magnitude_pattern,
    magnitude_prune,
    magnitude_scores,
    set_gate_pattern,
)
from l0_sparsity.encoders.minilm import load_minilm, minilm_path
from l0_sparsity.encoders.pooling import SentenceEncoder, mean_pool

__all__ = [
    "EmbeddingAgreement",
    "FinetuneResult",
    "MagnitudePattern",
    "MagnitudeScores",
    "SentenceEncoder",
    "embedding_agreement",
    "export_encoder_onnx",
    "finetune_encoder",
    "load_minilm",
    "magnitude_pattern",
    "magnitude_prune",
    "magnitude_scores",
    "mean_pool",
    "minilm_path",
    "set_gate_pattern",
]
