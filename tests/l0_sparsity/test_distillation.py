"""Distilling a sentence encoder to a MACs budget: the problem, the export, a smoke run."""

from __future__ import annotations

import copy
from pathlib import Path

import onnxruntime
import pytest
import torch
from tiny_bert import gated_student, tiny_encoder

from l0_sparsity.data.text import help_topic_sentences, split_sentences
from l0_sparsity.encoders import SentenceEncoder, export_encoder_onnx, load_minilm
from l0_sparsity.encoders.distillation import DistillationProblem
from l0_sparsity.encoders.training import (
    DistillConfig,
    distill_minilm,
    tokenized_batches,
    training_batches,
)
from l0_sparsity.purging import purge

torch.set_num_threads(1)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 100, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    return ids, mask


def test_the_loss_is_the_cosine_distance_and_the_budget_a_constraint() -> None:
    student = gated_student()
    problem = DistillationProblem(student, macs_target=0.5, example_input=(1, 16))
    teacher = tiny_encoder().eval()
    with torch.no_grad():
        targets = teacher(*batch())
    student.eval()
    state = problem.evaluate(batch(), targets)
    # Every test-time gate starts at 1: the student starts as the teacher.
    assert float(state.loss.detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(state.extras["cosine"]) == pytest.approx(1.0, abs=1e-6)
    (macs,) = state.constraints.values()
    expected = problem.expected_compute()["macs"].detach()
    assert float(macs.detach()) == pytest.approx(float(expected) - 0.5)


def test_the_token_level_distance_joins_the_loss() -> None:
    student = gated_student().eval()
    problem = DistillationProblem(student, token_weight=0.5, macs_target=0.5, example_input=(1, 16))
    ids, mask = batch()
    with torch.no_grad():
        tokens = tiny_encoder().eval().token_embeddings(ids, mask)
    targets = (student(ids, mask).detach(), tokens)
    state = problem.evaluate((ids, mask), targets)
    assert float(state.loss.detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(state.extras["token_cosine"]) == pytest.approx(1.0, abs=1e-6)
    # A wrong token target on a padded position changes nothing; on a real one, the loss.
    padded = tokens.clone()
    padded[2, 8] = -padded[2, 8]
    state = problem.evaluate((ids, mask), (targets[0], padded))
    assert float(state.loss.detach()) == pytest.approx(0.0, abs=1e-6)
    flipped = tokens.clone()
    flipped[0, 0] = -flipped[0, 0]
    state = problem.evaluate((ids, mask), (targets[0], flipped))
    real_tokens = float(mask.sum())
    assert float(state.loss.detach()) == pytest.approx(0.5 * 2.0 / real_tokens, rel=1e-4)


def test_token_targets_and_weights_are_checked() -> None:
    with pytest.raises(ValueError, match="token_weight must be >= 0"):
        DistillationProblem(gated_student(), token_weight=-1.0, target=0.5)
    problem = DistillationProblem(gated_student(), token_weight=1.0, target=0.5)
    with pytest.raises(ValueError, match="last_hidden_states"):
        problem.evaluate(batch(), torch.zeros(3, 32))
    with pytest.raises(ValueError, match="last hidden states"):
        problem.evaluate(batch(), (torch.zeros(3, 32), torch.zeros(3, 9, 32)))


def test_bad_inputs_are_named() -> None:
    problem = DistillationProblem(gated_student(), target=0.5)
    ids, mask = batch()
    with pytest.raises(ValueError, match="input_ids, attention_mask"):
        problem.evaluate(ids, torch.zeros(3, 32))
    with pytest.raises(ValueError, match="teacher's"):
        problem.evaluate((ids, mask), torch.zeros(3, 7))


def test_the_purged_encoder_exports_to_onnx_with_its_mask(tmp_path: Path) -> None:
    student = gated_student()
    with torch.no_grad():
        for layer in student.modules():
            if hasattr(layer, "log_alpha"):
                layer.log_alpha[::2] = -10.0  # half of the heads and FFN units dead
    student.eval()
    purged = SentenceEncoder(purge(student.encoder))
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(purged(ids, mask), student(ids, mask), rtol=1e-5, atol=1e-5)
    path = export_encoder_onnx(purged, tmp_path / "encoder.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (embeddings,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    torch.testing.assert_close(torch.from_numpy(embeddings), purged(ids, mask).detach())


def test_training_batches_are_length_sorted_and_never_hold_a_heldout_sentence() -> None:
    _, tokenizer = load_minilm()
    split = split_sentences(help_topic_sentences())
    config = DistillConfig(batch_size=16, max_length=512)
    batches = training_batches(config, tokenizer, split.heldout)
    expected = tokenized_batches(tokenizer, sorted(split.train, key=len), 16, 512)
    assert len(batches) == len(expected)
    for (ids, mask), (want_ids, want_mask) in zip(batches, expected, strict=True):
        assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask)
    assert not set(split.train) & set(split.heldout)
    assert len(training_batches(config, tokenizer, split.heldout, max_batches=3)) == 3
    with_docstrings = training_batches(
        DistillConfig(batch_size=16, max_length=512, docstrings=True), tokenizer, split.heldout
    )
    assert sum(len(ids) for ids, _ in with_docstrings) > 5 * len(split.train)


@pytest.mark.slow
def test_a_smoke_distillation_of_the_pretrained_minilm_runs_and_reports() -> None:
    result = distill_minilm(DistillConfig(epochs=1), progress=None, max_batches=2)
    (row,) = result.history
    assert {"loss", "cosine", "expected_macs", "test_macs", "macs_multiplier"} <= set(row)
    assert row["macs_multiplier"] > 0  # the budget 0.5 is violated at the start
    assert 0.9 < result.agreement.mean_cosine <= 1.0
    assert result.agreement.sentences == sum(len(ids) for ids, _ in result.heldout_batches)
    assert copy.deepcopy(result.problem.test_compute())["macs"] <= 1.0


@pytest.mark.slow
def test_a_smoke_run_with_token_targets_docstrings_and_no_student_dropout() -> None:
    config = DistillConfig(epochs=1, token_weight=1.0, docstrings=True, batch_size=8)
    result = distill_minilm(config, progress=None, max_batches=2)
    (row,) = result.history
    assert 0.0 < row["cosine"] <= 1.0
    dropouts = [m for m in result.student.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)
    assert all(m.p > 0.0 for m in result.teacher.modules() if isinstance(m, torch.nn.Dropout))
    # Every weight of the student trains (the frozen teacher's copy is unfrozen).
    assert all(p.requires_grad for p in result.student.parameters())
    assert not any(p.requires_grad for p in result.teacher.parameters())


@pytest.mark.slow
def test_the_penalized_baseline_has_no_constraint_and_no_dual_optimizer() -> None:
    config = DistillConfig(epochs=1, macs_penalty=0.3, batch_size=8)
    result = distill_minilm(config, progress=None, max_batches=2)
    (row,) = result.history
    assert "macs_multiplier" not in row and 0.0 < row["expected_macs"] <= 1.0
    assert list(result.problem.named_constraints()) == []
    assert result.problem.mode == "budget-only" and result.problem.macs_penalty == 0.3


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--macs-target", "2"], "--macs-target must be in (0, 1]"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--macs-penalty", "-1"], "--macs-penalty must be >= 0, got -1.0"),
        (["--onnx", "/no/such/dir/x.onnx"], "its directory does not exist"),
    ],
)
def test_distill_cli_user_errors_are_one_line_and_exit_2(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from l0_sparsity.cli import main

    assert main(["distill", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
