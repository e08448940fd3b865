"""Distilling the pretrained MiniLM to a MACs budget: :func:`distill_minilm`.

The teacher is the pretrained encoder, frozen; the student starts as an exact copy whose gates
keep everything (test-time gates all 1: it starts with the teacher's function), with one gate
per attention head and per FFN hidden unit. Training minimizes the cosine distance to the
teacher's embeddings of the help-topic sentences (:mod:`l0_sparsity.data.text`) under a budget
on the encoder's expected MACs at a stated sequence length
(:class:`~l0_sparsity.encoders.distillation.DistillationProblem`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import conopt
from l0_sparsity.data.text import docstring_sentences, help_topic_sentences, split_sentences
from l0_sparsity.encoders.agreement import EmbeddingAgreement, embedding_agreement
from l0_sparsity.encoders.distillation import DistillationProblem
from l0_sparsity.encoders.minilm import load_minilm
from l0_sparsity.encoders.pooling import SentenceEncoder, mean_pool
from l0_sparsity.nn import gate_parameters, sparsify, weight_parameters

__all__ = [
    "DistillConfig",
    "DistillResult",
    "distill_minilm",
    "embed",
    "tokenized_batches",
    "training_batches",
]


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :func:`distill_minilm`.

    Attributes:
        macs_target: Budget on the encoder's expected MACs, a fraction of the dense encoder's
            at ``budget_length`` tokens.
        macs_penalty: The penalized baseline instead of the budget: this coefficient times the
            expected MACs fraction is added to the loss, and ``macs_target`` is not used (no
            constraint, no multiplier).
        budget_length: Sequence length at which MACs are counted (attention scales with it).
        max_length: Longest tokenized sentence in training and evaluation (truncation).
        epochs: Passes over the training sentences.
        batch_size: Sentences per step.
        lr: Adam learning rate of the weights.
        gates_lr: Adam learning rate of the gates' ``log α``.
        dual_lr: Learning rate of the multipliers' gradient ascent.
        droprate_init: Initial drop rate of the gates: small, so that every test-time gate
            starts at 1 (the student starts with the teacher's function), yet near enough to
            the threshold for the budget to be reached in a few epochs.
        dual_restarts: Reset the multiplier to 0 whenever the budget is strictly met (the
            paper's dual restarts): the task loss then wins back what the budget allows.
        strict_budgets: Let the purged model's MACs (at the test-time gates) drive the
            multiplier, the expected MACs the gates (see
            :class:`~l0_sparsity.problem.SparsityProblem`).
        budget_tolerance: With strict budgets, how far under the budget the purged encoder
            still counts as on it: the multiplier holds instead of restarting (0: plain
            restarts; see :class:`~l0_sparsity.problem.SparsityProblem`).
        token_weight: Weight of the token-level cosine distance between the student's and the
            teacher's last hidden states (see
            :class:`~l0_sparsity.encoders.distillation.DistillationProblem`; 0: sentence
            embeddings only).
        docstrings: Also train on the prose of the standard library's docstrings
            (:func:`~l0_sparsity.data.text.docstring_sentences`, about 10,700 sentences on
            Python 3.11, never a held-out one) besides the help topics' training sentences.
        student_dropout: Drop probability of every ``nn.Dropout`` in the student while it
            trains (``None`` keeps the pretrained model's, 0.1 for MiniLM). Off by default: the
            student imitates the teacher's eval-mode embeddings, and dropout noise on a
            corpus this small costs more than it regularizes.
        seed: Seed of the gates' noise and the batch order.
    """

    macs_target: float = 0.5
    macs_penalty: float | None = None
    budget_length: int = 128
    max_length: int = 128
    epochs: int = 4
    batch_size: int = 32
    lr: float = 5e-5
    gates_lr: float = 0.05
    dual_lr: float = 0.05
    droprate_init: float = 0.07
    dual_restarts: bool = True
    strict_budgets: bool = True
    budget_tolerance: float = 0.01
    token_weight: float = 0.0
    docstrings: bool = False
    student_dropout: float | None = 0.0
    seed: int = 0


@dataclass
class DistillResult:
    """What :func:`distill_minilm` returns.

    Attributes:
        student: The gated student (a :class:`~l0_sparsity.encoders.SentenceEncoder`), in eval
            mode; :func:`l0_sparsity.purge` makes it physically smaller.
        teacher: The frozen teacher.
        problem: The distillation problem (its ``test_compute()`` gives the purged fractions).
        agreement: Agreement with the teacher on the held-out sentences, at the test-time gates.
        heldout_batches: The held-out sentences, tokenized (:func:`tokenized_batches`).
        history: One dict per epoch (loss, cosine, expected and test-time MACs, multiplier).
        seconds: Wall time of the training.
    """

    student: nn.Module
    teacher: nn.Module
    problem: DistillationProblem
    agreement: EmbeddingAgreement
    heldout_batches: list[tuple[Tensor, Tensor]]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def tokenized_batches(
    tokenizer: Any, sentences: Sequence[str], batch_size: int, max_length: int
) -> list[tuple[Tensor, Tensor]]:
    """Tokenize ``sentences`` in batches, each padded to its longest sentence.

    Args:
        tokenizer: A Hugging Face tokenizer.
        sentences: The sentences, in order.
        batch_size: Sentences per batch.
        max_length: Truncation length.

    Returns:
        ``(input_ids, attention_mask)`` per batch.
    """
    batches = []
    for start in range(0, len(sentences), batch_size):
        encoded = tokenizer(
            list(sentences[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        batches.append((encoded["input_ids"], encoded["attention_mask"]))
    return batches


@torch.no_grad()
def embed(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """Sentence embeddings of every batch, in eval mode, concatenated.

    Args:
        model: A sentence encoder called as ``model(input_ids, attention_mask)``.
        batches: Tokenized batches (:func:`tokenized_batches`).

    Returns:
        ``(sentences, hidden)`` embeddings.
    """
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(ids, mask) for ids, mask in batches])
    finally:
        model.train(was_training)


def _optimizer(problem: DistillationProblem, config: DistillConfig) -> conopt.optim.SimultaneousGDA:
    student = problem.model
    primal = torch.optim.Adam(
        [
            {"params": weight_parameters(student), "lr": config.lr},
            {"params": gate_parameters(student), "lr": config.gates_lr},
        ]
    )
    multipliers = list(problem.dual_parameters())
    dual = torch.optim.SGD(multipliers, lr=config.dual_lr, maximize=True) if multipliers else None
    return conopt.optim.SimultaneousGDA(
        problem, primal=primal, dual=dual, dual_restarts=config.dual_restarts
    )


PROGRESS_EVERY = 100
"""Batches between two progress lines within an epoch."""


def training_batches(
    config: DistillConfig,
    tokenizer: Any,
    heldout: Sequence[str],
    max_batches: int | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """The distillation's training batches: sentences sorted by length, then tokenized in batches.

    The help-topic training sentences, with the standard library's docstring sentences when
    ``config.docstrings`` (never one of ``heldout``). Each batch holds sentences of similar
    length, which cuts the padded tokens a step computes; :func:`distill_minilm` shuffles the
    batches' order every epoch. A baseline that fine-tunes on the same data (as
    ``benchmarks/minilm_budget.py`` does for magnitude pruning) takes its batches from here.

    Args:
        config: The run's settings (``docstrings``, ``batch_size``, ``max_length``).
        tokenizer: The MiniLM tokenizer (:func:`~l0_sparsity.encoders.load_minilm`).
        heldout: The held-out sentences, kept out of the training data.
        max_batches: Keep only the first this many batches (the shortest sentences; a smoke
            run).

    Returns:
        ``(token ids, attention mask)`` pairs, shortest sentences first.

    Example:
        >>> from l0_sparsity.data.text import help_topic_sentences, split_sentences
        >>> from l0_sparsity.encoders import load_minilm
        >>> from l0_sparsity.encoders.training import DistillConfig, training_batches
        >>> _, tokenizer = load_minilm()
        >>> heldout = split_sentences(help_topic_sentences()).heldout
        >>> config = DistillConfig(docstrings=False, batch_size=8)
        >>> ids, mask = training_batches(config, tokenizer, heldout, max_batches=2)[0]
        >>> ids.shape[0]
        8
    """
    split = split_sentences(help_topic_sentences())
    sentences = list(split.train)
    if config.docstrings:
        sentences += docstring_sentences(exclude=set(heldout) | set(sentences))
    sentences.sort(key=len)
    batches = tokenized_batches(tokenizer, sentences, config.batch_size, config.max_length)
    return batches[:max_batches]


@torch.no_grad()
def _teacher_targets(
    teacher: SentenceEncoder, batches: Sequence[tuple[Tensor, Tensor]], with_tokens: bool
) -> list[Tensor | tuple[Tensor, Tensor]]:
    """The teacher's embeddings of each batch (with its last hidden states if asked), once."""
    targets: list[Tensor | tuple[Tensor, Tensor]] = []
    for ids, mask in batches:
        if with_tokens:
            tokens = teacher.token_embeddings(ids, mask)
            targets.append((mean_pool(tokens, mask), tokens))
        else:
            targets.append(teacher(ids, mask))
    return targets


def _student(teacher: SentenceEncoder, config: DistillConfig) -> nn.Module:
    """A gated copy of the teacher: gates on every head and FFN unit, dropout as configured."""
    # The teacher is frozen; its copy must train every weight, not only the gated layers.
    student = sparsify(
        copy.deepcopy(teacher).requires_grad_(True),
        droprate_init=config.droprate_init,
        skip="encoder.embeddings.*",
    )
    if config.student_dropout is not None:
        for module in student.modules():
            if isinstance(module, nn.Dropout):
                module.p = config.student_dropout
    return student


def _train_epoch(
    problem: DistillationProblem,
    optimizer: conopt.optim.SimultaneousGDA,
    batches: Sequence[tuple[Tensor, Tensor]],
    targets: Sequence[Tensor | tuple[Tensor, Tensor]],
    order: torch.Generator,
    progress: Callable[[str], None] | None,
) -> dict[str, float]:
    """One pass over the batches in a random order; the epoch's means and the budget's state.

    ``progress`` gets a line every :data:`PROGRESS_EVERY` batches of a long epoch.
    """
    cosines: list[float] = []

    def closure(index: int) -> conopt.ProblemState:
        state = problem.evaluate(batches[index], targets[index])
        cosines.append(float(state.extras["cosine"]))
        return state

    losses = []
    for step, index in enumerate(torch.randperm(len(batches), generator=order).tolist(), 1):
        report = optimizer.step(lambda i=index: closure(i))
        losses.append(float(report.loss))
        if progress is not None and step % PROGRESS_EVERY == 0 and step < len(batches):
            recent = cosines[-PROGRESS_EVERY:]
            progress(f"  batch {step}/{len(batches)}  cosine={sum(recent) / len(recent):.4g}")
    test = problem.test_compute()
    row = {
        "loss": sum(losses) / len(losses),
        "cosine": sum(cosines) / len(cosines),
        "expected_macs": float(problem.expected_compute()["macs"].detach()),
        "test_macs": test["macs"],
        "test_params": test["params"],
    }
    constraint = report.constraints.get("macs")
    if constraint is not None and constraint.multiplier is not None:
        row["macs_multiplier"] = float(constraint.multiplier)
    return row


def distill_minilm(
    config: DistillConfig = DistillConfig(),
    *,
    progress: Callable[[str], None] | None = print,
    max_batches: int | None = None,
) -> DistillResult:
    """Distill the pretrained MiniLM into a gated student under a MACs budget (or penalty).

    Args:
        config: The run's settings.
        progress: Called with one line per epoch (``None``: silent).
        max_batches: Train on the first this many batches only (a smoke run).

    Returns:
        The trained student, the teacher, the problem, the held-out agreement and the history.
    """
    torch.manual_seed(config.seed)
    teacher_bert, tokenizer = load_minilm()
    teacher = SentenceEncoder(teacher_bert).requires_grad_(False).eval()
    heldout_sentences = split_sentences(help_topic_sentences()).heldout
    heldout = tokenized_batches(tokenizer, heldout_sentences, config.batch_size, config.max_length)
    train = training_batches(config, tokenizer, heldout_sentences, max_batches)
    targets = _teacher_targets(teacher, train, with_tokens=config.token_weight > 0)
    student = _student(teacher, config)
    budget = (
        {
            "macs_target": config.macs_target,
            "strict_budgets": config.strict_budgets,
            "budget_tolerance": config.budget_tolerance,
        }
        if config.macs_penalty is None
        else {"macs_penalty": config.macs_penalty}
    )
    problem = DistillationProblem(
        student,
        token_weight=config.token_weight,
        example_input=(1, config.budget_length),
        **budget,
    )
    optimizer = _optimizer(problem, config)
    order = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    student.train()
    for epoch in range(config.epochs):
        row = _train_epoch(problem, optimizer, train, targets, order, progress)
        history.append({"epoch": epoch + 1, **row})
        if progress is not None:
            progress("  ".join(f"{k}={v:.4g}" for k, v in history[-1].items()))
    seconds = time.perf_counter() - start
    student.eval()
    agreement = embedding_agreement(embed(student, heldout), embed(teacher, heldout))
    return DistillResult(student, teacher, problem, agreement, heldout, history, seconds)
