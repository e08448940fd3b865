"""The pretrained MiniLM distilled to a MACs budget: agreement with the teacher, purged speed.

For each MACs target τ (a fraction of the dense encoder's MACs at ``--budget-length`` tokens),
:func:`l0_sparsity.encoders.distill_minilm` trains a gated copy of all-MiniLM-L6-v2 (one gate per
attention head and per FFN unit) to match the frozen teacher's sentence embeddings on the
help-topic sentences, then :func:`l0_sparsity.purge` removes the dead heads and units. Printed
per target and method, in one table:

* the purged encoder's MACs as a fraction of the dense one's (exact: the count of the purged
  model at the test-time gates) and its parameters; goal: within ±0.02 of τ;
* on the held-out sentences: mean (and smallest) cosine similarity to the teacher's embeddings
  (goal ≥ 0.95 at τ = 0.5) and nearest-neighbour agreement (goal ≥ 90 % at τ = 0.5);
* onnxruntime latency of the purged encoder against the dense one, measured in the same run on
  the same input (batch ``--latency-batch``, ``--budget-length`` tokens); goal ≥ 1.6× at τ = 0.5;
* ``train_min``: minutes of training (distillation, fine-tuning; the magnitude selection's
  seconds for ``magnitude``; all the bisection's trainings for ``penalty``) and ``trainings``,
  the number of full trainings.

The ``method`` column is ``l0`` (the distillation). With ``--baselines`` each target also gets
one-shot magnitude pruning to the same MACs (:mod:`l0_sparsity.encoders.magnitude`: the same
fraction of heads and of FFN units, lowest weight norms over all layers first, purged MACs at
most τ): ``magnitude`` without fine-tuning, and ``magnitude+ft`` with the purged student's
weights fine-tuned on the same sentences, loss, epochs, batches, learning rate and batch order
as the distillation. Every method of a target is measured the same way, its ONNX latencies
interleaved with the dense encoder's in one run. With ``--penalty-bisection`` the target is
also reached without a constraint: the MACs penalty coefficient (``DistillConfig.macs_penalty``)
is bisected, one full training per try, until the purged MACs are within ±0.02 of τ
(``penalty``). A calibration line gives the scale of the
agreement measures: the teacher against itself with its own dropout on, and the held-out
sentences' nearest-neighbour margins.

Run (about 10–20 minutes per target on 2 cores, the fine-tuning about as long again;
``--quick`` for a smoke run)::

    python benchmarks/minilm_budget.py [--targets 0.5 0.3] [--epochs 8] [--threads 2]
        [--latency-batch 32] [--budget-length 128] [--repeats 10] [--set FIELD=VALUE ...]
        [--baselines] [--penalty-bisection] [--penalty-bracket 1e-3 10] [--max-trainings 8]
        [--quick]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from l0_sparsity.data.text import help_topic_sentences, split_sentences
from l0_sparsity.encoders import (
    SentenceEncoder,
    embedding_agreement,
    export_encoder_onnx,
    finetune_encoder,
    load_minilm,
    magnitude_prune,
)
from l0_sparsity.encoders.training import (
    DistillConfig,
    DistillResult,
    distill_minilm,
    embed,
    training_batches,
)
from l0_sparsity.nn import sparsify
from l0_sparsity.purging import count_params, purge

TOLERANCE = 0.02
"""How close to the target the penalty bisection must bring the purged MACs (the budget's goal)."""


def onnx_latencies(
    paths: Sequence[Path], batch: int, length: int, repeats: int, threads: int
) -> list[float]:
    """Median milliseconds per call of each ONNX file, interleaved in rounds on one input."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions = [
        ort.InferenceSession(os.fspath(p), options, providers=["CPUExecutionProvider"])
        for p in paths
    ]
    ids = torch.randint(1000, 20000, (batch, length), generator=torch.Generator().manual_seed(0))
    feed = {"input_ids": ids.numpy(), "attention_mask": torch.ones_like(ids).numpy()}
    times: list[list[float]] = [[] for _ in sessions]
    for session in sessions:
        session.run(None, feed)  # warm-up
    for _ in range(repeats):
        for session, bucket in zip(sessions, times, strict=True):
            start = time.perf_counter()
            session.run(None, feed)
            bucket.append(time.perf_counter() - start)
    return [1e3 * statistics.median(bucket) for bucket in times]


@dataclasses.dataclass
class Candidate:
    """One purged encoder of a target: how it was made, its exact MACs, its training time."""

    method: str
    model: nn.Module
    macs: float
    seconds: float
    trainings: int = 1


def distilled(config: DistillConfig, args: argparse.Namespace) -> tuple[Candidate, DistillResult]:
    """The distilled, purged student (method ``l0``) and the distillation's result."""
    result = distill_minilm(config, max_batches=args.max_batches)
    # The purged BertModel is plain Hugging Face; mean pooling wraps it again.
    purged = SentenceEncoder(purge(result.student.encoder))
    macs = result.problem.test_compute()["macs"]
    return Candidate("l0", purged, macs, result.seconds), result


def magnitude_baselines(
    teacher: nn.Module, config: DistillConfig, args: argparse.Namespace
) -> list[Candidate]:
    """One-shot magnitude pruning to ``config.macs_target``, without and with fine-tuning.

    The fine-tuning trains on the distillation's batches (the same sentences, batch size,
    length and ``--max-batches``) with its loss, epochs, learning rate, dropout, seed and batch
    order (:func:`l0_sparsity.encoders.finetune_encoder`).
    """
    start = time.perf_counter()
    student = sparsify(copy.deepcopy(teacher), skip="encoder.embeddings.*")
    pattern = magnitude_prune(student, config.macs_target, (1, config.budget_length))
    purged = SentenceEncoder(purge(student.eval().encoder))
    seconds = time.perf_counter() - start
    print(
        f"  magnitude: {pattern.heads_pruned}/{pattern.heads} heads and "
        f"{pattern.units_pruned}/{pattern.units} FFN units pruned, MACs {pattern.macs:.4f}",
        flush=True,
    )
    _, tokenizer = load_minilm()
    heldout = split_sentences(help_topic_sentences()).heldout
    # The distillation's own batches: its sentences, length sort, batch size and truncation.
    batches = training_batches(config, tokenizer, heldout, args.max_batches)
    tuned = copy.deepcopy(purged)
    finetuned = finetune_encoder(
        tuned, teacher, batches, config, progress=lambda line: print(f"  ft: {line}", flush=True)
    )
    return [
        Candidate("magnitude", purged, pattern.macs, seconds, trainings=0),
        Candidate("magnitude+ft", tuned, pattern.macs, finetuned.seconds),
    ]


def penalty_bisection(config: DistillConfig, args: argparse.Namespace) -> Candidate:
    """The same budget reached with a MACs penalty instead of the constraint, by bisection.

    Geometric bisection on ``macs_penalty`` in ``--penalty-bracket`` until the purged MACs are
    within ±``TOLERANCE`` of the target (or ``--max-trainings`` full trainings, each with the
    distillation's settings); the last training is the candidate, its time the total.
    """
    tau = config.macs_target
    low, high = args.penalty_bracket
    trainings, seconds = 0, 0.0
    while True:
        penalty = math.sqrt(low * high)
        result = distill_minilm(
            dataclasses.replace(config, macs_penalty=penalty),
            max_batches=args.max_batches,
            progress=None,
        )
        trainings, seconds = trainings + 1, seconds + result.seconds
        macs = result.problem.test_compute()["macs"]
        print(
            f"  penalty bisection {trainings}: macs_penalty {penalty:.4g} -> purged MACs "
            f"{macs:.4f} ({result.seconds / 60:.1f} min)",
            flush=True,
        )
        if abs(macs - tau) <= TOLERANCE or trainings >= args.max_trainings:
            break
        low, high = (penalty, high) if macs > tau else (low, penalty)
    purged = SentenceEncoder(purge(result.student.encoder))
    return Candidate("penalty", purged, macs, seconds, trainings=trainings)


def measure(
    target: float,
    candidates: Sequence[Candidate],
    result: DistillResult,
    args: argparse.Namespace,
    tmp: Path,
) -> list[dict[str, object]]:
    """One table row per candidate: MACs, parameters, held-out agreement, ONNX latency."""
    teacher, heldout = result.teacher, result.heldout_batches
    reference = embed(teacher, heldout)
    paths = [export_encoder_onnx(teacher, tmp / "dense.onnx")]
    for candidate in candidates:
        name = f"{candidate.method}_{target}.onnx".replace("+", "_")
        paths.append(export_encoder_onnx(candidate.model, tmp / name))
    dense_ms, *purged_ms = onnx_latencies(
        paths, args.latency_batch, args.budget_length, args.repeats, args.threads
    )
    rows: list[dict[str, object]] = []
    for candidate, ms in zip(candidates, purged_ms, strict=True):
        agreement = embedding_agreement(embed(candidate.model, heldout), reference)
        rows.append(
            {
                "target": target,
                "method": candidate.method,
                "purged_macs": candidate.macs,
                "params": count_params(candidate.model) / count_params(teacher),
                "mean_cos": agreement.mean_cosine,
                "min_cos": agreement.min_cosine,
                "nn_agree": agreement.neighbour_agreement,
                "dense_ms": dense_ms,
                "purged_ms": ms,
                "speedup": dense_ms / ms,
                "train_min": candidate.seconds / 60,
                "trainings": candidate.trainings,
            }
        )
    return rows


@torch.no_grad()
def print_calibration(
    teacher: nn.Module, heldout: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """What the agreement measures give for the teacher against itself, as a scale for the table.

    Two references: the teacher with its own dropout active (as in its pretraining: a small,
    structured perturbation of the same function), and how close each held-out sentence's
    nearest neighbour is to its second (a near-tie flips under any perturbation).
    """
    reference = embed(teacher, heldout)
    teacher.train()
    try:
        torch.manual_seed(0)
        noisy = torch.cat([teacher(ids, mask) for ids, mask in heldout])
    finally:
        teacher.eval()
    agreement = embedding_agreement(noisy, reference)
    normalized = torch.nn.functional.normalize(reference.double(), dim=1)
    similarity = normalized @ normalized.T
    similarity.fill_diagonal_(-2.0)
    first, second = similarity.topk(2, dim=1).values.T
    gap = first - second
    print(
        f"calibration: the teacher with its dropout on: mean cos {agreement.mean_cosine:.4f}, "
        f"NN agreement {agreement.neighbour_agreement:.3f}; held-out nearest-neighbour margin "
        f"(top-1 minus top-2 cosine) median {gap.median():.4f}, below 0.01 for "
        f"{(gap < 0.01).double().mean():.3f} of the sentences",
        flush=True,
    )


def print_table(rows: Sequence[dict[str, object]]) -> None:
    """The rows as one right-aligned table (numbers to 4 significant digits)."""
    header = list(rows[0])
    print("  ".join(f"{name:>12}" for name in header))
    for row in rows:
        cells = (v if isinstance(v, str) else f"{v:.4g}" for v in row.values())
        print("  ".join(f"{cell:>12}" for cell in cells))


def overrides(assignments: Sequence[str]) -> dict[str, object]:
    """``FIELD=VALUE`` strings as DistillConfig keyword arguments of the field's type."""
    types = {field.name: type(field.default) for field in dataclasses.fields(DistillConfig)}
    parsed: dict[str, object] = {}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        if name not in types:
            raise SystemExit(f"--set: unknown DistillConfig field {name!r}; one of {list(types)}")
        kind = types[name]
        parsed[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return parsed


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3])
    parser.add_argument("--epochs", type=int, default=DistillConfig.epochs)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-batch", type=int, default=32)
    parser.add_argument("--budget-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="override DistillConfig fields, e.g. --set gates_lr=0.1 dual_restarts=False",
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also magnitude pruning to the same MACs, without and with fine-tuning",
    )
    parser.add_argument(
        "--penalty-bisection",
        action="store_true",
        help=f"also the budget reached with a MACs penalty, bisected to within ±{TOLERANCE}",
    )
    parser.add_argument("--penalty-bracket", type=float, nargs=2, default=[1e-3, 10.0])
    parser.add_argument("--max-trainings", type=int, default=8, help="the bisection's limit")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch of 2 batches")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.max_batches, args.repeats, args.latency_batch = 1, 2, 2, 2
        args.max_trainings = min(args.max_trainings, 2)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            config = DistillConfig(
                macs_target=target,
                epochs=args.epochs,
                budget_length=args.budget_length,
                **overrides(args.set),
            )
            print(f"τ = {target}: {dataclasses.asdict(config)}", flush=True)
            candidate, result = distilled(config, args)
            candidates = [candidate]
            if args.baselines:
                candidates += magnitude_baselines(result.teacher, config, args)
            if args.penalty_bisection:
                candidates.append(penalty_bisection(config, args))
            rows += measure(target, candidates, result, args, Path(tmp))
        print_calibration(result.teacher, result.heldout_batches)
    print_table(rows)


if __name__ == "__main__":
    main()
