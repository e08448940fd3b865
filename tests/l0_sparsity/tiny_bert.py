"""A tiny random Hugging Face BERT for the transformer tests (shared by their modules)."""

from __future__ import annotations

import torch
import transformers

from l0_sparsity.encoders import SentenceEncoder
from l0_sparsity.nn import sparsify


def tiny_bert(seed: int = 0, pooling: bool = True, **overrides: object) -> transformers.BertModel:
    """A 2-layer, 4-head, hidden-32, FFN-64 BertModel in eval mode; ``overrides`` its config."""
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    config = transformers.BertConfig(**{**settings, **overrides})
    return transformers.BertModel(config, add_pooling_layer=pooling).eval()


def tiny_encoder(seed: int = 0) -> SentenceEncoder:
    """The tiny BERT without pooler, eager attention, as a mean-pooling sentence encoder."""
    bert = tiny_bert(seed, pooling=False, max_position_embeddings=64, attn_implementation="eager")
    return SentenceEncoder(bert)


def gated_student(seed: int = 0) -> SentenceEncoder:
    """:func:`tiny_encoder` gated as the distillation gates it (every test-time gate 1)."""
    return sparsify(tiny_encoder(seed), droprate_init=0.07, skip="encoder.embeddings.*")
