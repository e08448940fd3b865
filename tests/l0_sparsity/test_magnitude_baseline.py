"""One-shot magnitude pruning of heads and FFN units to a MACs budget, and its fine-tuning."""

from __future__ import annotations

import pytest
import torch
from tiny_bert import gated_student, tiny_encoder
from torch.nn import functional as F

from l0_sparsity.encoders import (
    SentenceEncoder,
    finetune_encoder,
    magnitude_pattern,
    magnitude_prune,
    magnitude_scores,
    set_gate_pattern,
)
from l0_sparsity.encoders.distillation import DistillationProblem
from l0_sparsity.encoders.training import DistillConfig
from l0_sparsity.nn import gated_layers
from l0_sparsity.purging import purge

torch.set_num_threads(1)

LENGTH = 16  # the budget's sequence length
HEADS = "encoder.encoder.layer.{}.attention.output.dense"
UNITS = "encoder.encoder.layer.{}.output.dense"


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 100, (4, 10), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    return ids, mask


def test_a_head_and_a_unit_with_zeroed_weights_score_lowest() -> None:
    student = gated_student()
    block = student.encoder.encoder.layer[1]
    with torch.no_grad():
        rows = slice(2 * 8, 3 * 8)  # head 2 of 4, head width 8
        for linear in (block.attention.self.query, block.attention.self.key):
            linear.weight[rows] = 0.0
        block.attention.self.value.weight[rows] = 0.0
        block.attention.output.dense.weight[:, rows] = 0.0
        block.intermediate.dense.weight[5] = 0.0
        block.output.dense.weight[:, 5] = 0.0
    scores = magnitude_scores(student)
    assert set(scores.heads) == {HEADS.format(0), HEADS.format(1)}
    assert scores.heads[HEADS.format(1)].shape == (4,)
    assert scores.units[UNITS.format(0)].shape == (64,)
    everything = torch.cat(list(scores.heads.values()))
    assert int(everything.argmin()) == 4 + 2 and float(everything.min()) == 0.0
    assert int(torch.cat(list(scores.units.values())).argmin()) == 64 + 5
    pattern = magnitude_pattern(student, 0.9, (1, LENGTH))
    assert not pattern.keep[HEADS.format(1)][2]  # the first head to go
    assert not pattern.keep[UNITS.format(1)][5]  # the first unit to go


@pytest.mark.parametrize("target", [0.9, 0.5, 0.3])
def test_the_selection_reaches_the_target_as_the_exact_measure_counts_it(target: float) -> None:
    student = gated_student()
    before = [layer.log_alpha.clone() for _, layer in gated_layers(student)]
    pattern = magnitude_pattern(student, target, (1, LENGTH))
    # The gates are left as they were until the pattern is set.
    for (_, layer), log_alpha in zip(gated_layers(student), before, strict=True):
        assert torch.equal(layer.log_alpha, log_alpha)
    set_gate_pattern(student, pattern.keep)
    problem = DistillationProblem(student, macs_target=target, example_input=(1, LENGTH))
    macs = problem.test_compute()["macs"]
    assert macs == pytest.approx(pattern.macs, abs=1e-12)
    assert target - 0.02 <= macs <= target
    # The same fraction of the heads and of the units, the units taking up the rounding.
    head_fraction = pattern.heads_pruned / pattern.heads
    unit_fraction = pattern.units_pruned / pattern.units
    assert abs(head_fraction - unit_fraction) <= 1.0 / pattern.heads
    kept = sum(int(mask.sum()) for mask in pattern.keep.values())
    assert kept == pattern.heads + pattern.units - pattern.heads_pruned - pattern.units_pruned


def test_a_target_below_the_floor_or_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="macs_target must be in"):
        magnitude_pattern(gated_student(), 1.5, (1, LENGTH))
    with pytest.raises(ValueError, match="no gated BERT-style"):
        magnitude_scores(tiny_encoder())


def test_the_purged_model_computes_what_the_gated_one_does_at_the_pattern() -> None:
    student = gated_student()
    pattern = magnitude_prune(student, 0.5, (1, LENGTH))
    ids, mask = batch()
    student.eval()
    with torch.no_grad():
        gated = student(ids, mask)
    purged = SentenceEncoder(purge(student.encoder))
    with torch.no_grad():
        torch.testing.assert_close(purged(ids, mask), gated, rtol=1e-5, atol=1e-5)
    heads = sum(layer.attention.self.num_attention_heads for layer in purged.encoder.encoder.layer)
    units = sum(layer.intermediate.dense.out_features for layer in purged.encoder.encoder.layer)
    assert heads == pattern.heads - pattern.heads_pruned
    assert units == pattern.units - pattern.units_pruned


def test_the_set_gates_are_exactly_zero_or_one_in_training_too() -> None:
    student = gated_student()
    pattern = magnitude_prune(student, 0.5, (1, LENGTH))
    student.train()
    for name, layer in gated_layers(student):
        torch.testing.assert_close(layer.gates(), pattern.keep[name].float())
        torch.testing.assert_close(layer.test_gates(), pattern.keep[name].float())


def _distance(model: SentenceEncoder, teacher: SentenceEncoder, batches: list) -> float:
    with torch.no_grad():
        return sum(
            float((1 - F.cosine_similarity(model.eval()(*b), teacher(*b))).mean()) for b in batches
        ) / len(batches)


def test_fine_tuning_lowers_the_cosine_distance_on_a_tiny_batch() -> None:
    teacher = tiny_encoder(seed=0).eval().requires_grad_(False)
    student = gated_student(seed=1)  # other weights: far from the teacher
    magnitude_prune(student, 0.5, (1, LENGTH))
    student.eval()
    model = SentenceEncoder(purge(student.encoder)).requires_grad_(False)  # as a frozen copy
    batches = [batch(1), batch(2)]
    before = _distance(model, teacher, batches)
    config = DistillConfig(epochs=3, lr=1e-3, seed=0)
    lines: list[str] = []
    result = finetune_encoder(model, teacher, batches, config, progress=lines.append)
    assert [row["epoch"] for row in result.history] == [1, 2, 3] and len(lines) == 3
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.history[0]["cosine"] == pytest.approx(1.0 - result.history[0]["loss"], abs=1e-6)
    assert _distance(model, teacher, batches) < before
    assert result.seconds > 0 and not model.training
    assert all(p.grad is not None for p in model.parameters())  # every weight trained
    with pytest.raises(ValueError, match="at least one batch"):
        finetune_encoder(model, teacher, [], config, progress=None)


def test_fine_tuning_follows_the_token_weight_and_the_student_dropout() -> None:
    teacher = tiny_encoder(seed=0).eval().requires_grad_(False)
    model = tiny_encoder(seed=1)
    config = DistillConfig(epochs=1, lr=1e-3, token_weight=0.5, student_dropout=0.0)
    result = finetune_encoder(model, teacher, [batch(1)], config, progress=None)
    (row,) = result.history
    assert row["loss"] > 1.0 - row["cosine"] + 1e-3  # the token-level distance is added
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p == 0.0 for p in dropouts)
    with pytest.raises(ValueError, match="token_embeddings"):
        finetune_encoder(model.encoder, teacher, [batch(1)], config, progress=None)
