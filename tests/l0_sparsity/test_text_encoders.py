"""The offline text corpus, mean pooling, the pretrained MiniLM and embedding agreement."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import pytest
import torch

from l0_sparsity.data.text import docstring_sentences, help_topic_sentences, split_sentences
from l0_sparsity.encoders import (
    SentenceEncoder,
    embedding_agreement,
    load_minilm,
    mean_pool,
    minilm_path,
)

torch.set_num_threads(1)


def test_the_corpus_is_prose_sentences_in_a_fixed_order() -> None:
    sentences = help_topic_sentences()
    assert len(sentences) > 1500
    assert sentences == help_topic_sentences()
    assert len(set(sentences)) == len(sentences)
    for sentence in sentences:
        assert 40 <= len(sentence) <= 300
        assert sentence[0].isupper() and sentence[-1] in ".!?"
        assert ">>>" not in sentence and "{" not in sentence


def test_the_split_is_a_fixed_rule_on_each_sentence() -> None:
    sentences = help_topic_sentences()
    split = split_sentences(sentences)
    assert set(split.train).isdisjoint(split.heldout)
    assert len(split.train) + len(split.heldout) == len(sentences)
    assert all(zlib.crc32(s.encode()) % 10 == 0 for s in split.heldout)
    # Membership does not depend on the order or on the other sentences.
    assert split_sentences(list(reversed(sentences))).heldout == tuple(reversed(split.heldout))
    assert 100 < len(split.heldout) < 250


def test_docstring_prose_adds_training_text_and_leaves_out_what_it_is_told() -> None:
    heldout = split_sentences(help_topic_sentences()).heldout
    sentences = docstring_sentences(exclude=heldout)
    assert len(sentences) > 5000
    assert len(set(sentences)) == len(sentences)
    assert set(sentences).isdisjoint(heldout)
    for sentence in sentences:
        assert 40 <= len(sentence) <= 300
        assert sentence[0].isupper() and sentence[-1] in ".!?"
    kept = docstring_sentences(exclude=sentences[1:])
    assert kept == sentences[:1]


@pytest.mark.parametrize("bad", [{"min_chars": 0}, {"min_chars": 50, "max_chars": 40}])
@pytest.mark.parametrize("corpus", [help_topic_sentences, docstring_sentences])
def test_bad_lengths_are_refused(bad: dict[str, int], corpus: Callable[..., list[str]]) -> None:
    with pytest.raises(ValueError, match="min_chars"):
        corpus(**bad)


def test_a_split_needs_two_sides() -> None:
    with pytest.raises(ValueError, match="heldout_every"):
        split_sentences(["A sentence."], heldout_every=1)


def test_mean_pooling_ignores_padding() -> None:
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    pooled = mean_pool(tokens, torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 3.0]]))
    with pytest.raises(ValueError, match="attention_mask"):
        mean_pool(tokens, torch.tensor([[1, 1]]))


def test_agreement_of_identical_and_of_permuted_embeddings() -> None:
    embeddings = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    same = embedding_agreement(embeddings, embeddings)
    assert same.mean_cosine == pytest.approx(1.0) and same.neighbour_agreement == 1.0
    shuffled = embedding_agreement(embeddings.roll(1, dims=1), embeddings)
    assert shuffled.mean_cosine < 0.9
    with pytest.raises(ValueError, match="same shape"):
        embedding_agreement(embeddings, embeddings[:5])


def test_minilm_loads_offline_and_matches_sentence_transformers() -> None:
    import sentence_transformers  # a dependency of the model package: present wherever it is

    model, tokenizer = load_minilm()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)
    sentences = list(split_sentences(help_topic_sentences()).heldout[:8])
    batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ours = SentenceEncoder(model)(batch["input_ids"], batch["attention_mask"])
    reference = sentence_transformers.SentenceTransformer(str(minilm_path()), device="cpu")
    theirs = torch.as_tensor(reference.encode(sentences, convert_to_numpy=True))
    # The reference normalizes (its last module); cosine similarity does not care.
    cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=1)
    assert cosine.min() > 1 - 1e-5
