"""The pretrained MiniLM distilled to a MACs budget: agreement with the teacher, purged speed.

For each MACs target τ (a fraction of the dense encoder's MACs at ``--budget-length`` tokens),
:func:`l0_sparsity.encoders.distill_minilm` trains a gated copy of all-MiniLM-L6-v2 (one gate per
attention head and per FFN unit) to match the frozen teacher's sentence embeddings on the
help-topic sentences, then :func:`l0_sparsity.purge` removes the dead heads and units. Printed
per target, in one table:

* the purged encoder's MACs as a fraction of the dense one's (exact: the count of the purged
  model at the test-time gates) and its parameters; goal: within ±0.02 of τ;
* on the held-out sentences: mean (and smallest) cosine similarity to the teacher's embeddings
  (goal ≥ 0.95 at τ = 0.5) and nearest-neighbour agreement (goal ≥ 90 % at τ = 0.5);
* onnxruntime latency of the purged encoder against the dense one, measured in the same run on
  the same input (batch ``--latency-batch``, ``--budget-length`` tokens); goal ≥ 1.6× at τ = 0.5.

Run (about 10–20 minutes per target on 2 cores; ``--quick`` for a smoke run)::

    python benchmarks/minilm_budget.py [--targets 0.5 0.3] [--epochs 8] [--threads 2]
        [--latency-batch 32] [--budget-length 128] [--repeats 10] [--set FIELD=VALUE ...]
        [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from l0_sparsity.encoders import SentenceEncoder, embedding_agreement, export_encoder_onnx
from l0_sparsity.encoders.training import DistillConfig, distill_minilm, embed
from l0_sparsity.purging import count_params, purge


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


def _row(target: float, config: DistillConfig, args: argparse.Namespace, tmp: Path) -> dict:
    result = distill_minilm(config, max_batches=args.max_batches)
    # The purged BertModel is plain Hugging Face; mean pooling wraps it again.
    purged = SentenceEncoder(purge(result.student.encoder))
    compute = result.problem.test_compute()
    heldout = result.heldout_batches
    agreement = embedding_agreement(embed(purged, heldout), embed(result.teacher, heldout))
    dense_path = export_encoder_onnx(result.teacher, tmp / "dense.onnx")
    purged_path = export_encoder_onnx(purged, tmp / f"purged_{target}.onnx")
    dense_ms, purged_ms = onnx_latencies(
        [dense_path, purged_path],
        args.latency_batch,
        args.budget_length,
        args.repeats,
        args.threads,
    )
    return {
        "target": target,
        "purged_macs": compute["macs"],
        "params": count_params(purged) / count_params(result.teacher),
        "mean_cos": agreement.mean_cosine,
        "min_cos": agreement.min_cosine,
        "nn_agree": agreement.neighbour_agreement,
        "dense_ms": dense_ms,
        "purged_ms": purged_ms,
        "speedup": dense_ms / purged_ms,
        "train_min": result.seconds / 60,
    }


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
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch of 2 batches")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.max_batches, args.repeats, args.latency_batch = 1, 2, 2, 2
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            config = DistillConfig(
                macs_target=target,
                epochs=args.epochs,
                budget_length=args.budget_length,
                **overrides(args.set),
            )
            print(f"τ = {target}: {dataclasses.asdict(config)}", flush=True)
            rows.append(_row(target, config, args, Path(tmp)))
    header = list(rows[0])
    print("  ".join(f"{name:>11}" for name in header))
    for row in rows:
        print("  ".join(f"{row[name]:>11.4g}" for name in header))


if __name__ == "__main__":
    main()
