"""Fashion-MNIST with the CIFAR ResNet-18 (1-channel stem): a short CPU run, then its purge.

Trains the ``fashion_resnet18`` preset (a subset of Fashion-MNIST, a few epochs, structured gates
on every convolution, one model-wise density target) and prints, per epoch, the target, the
expected density, the density of the deterministic test-time gates, the multiplier and the
test error. Then purges the trained model and prints parameters and FLOPs of the gated and the
purged model, the largest difference of their eval-mode logits on test images, and the
inference latency of both (CPU, 1 thread, thread CPU time, interleaved rounds; batch 1 and 64).

Needs the IDX files of Fashion-MNIST (Debian: ``apt install dataset-fashion-mnist``, or
``--data-dir``). Run::

    python benchmarks/l0_fashion_resnet18.py [--epochs 4] [--subset 2000] [--test-subset 500]
        [--target 0.5] [--data-dir DIR] [--rounds 15]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from benchmarks.l0_speed import forward_pass, interleaved
from l0_sparsity.data import build_datasets
from l0_sparsity.purging import purge, purge_report
from l0_sparsity.training.presets import get_preset
from l0_sparsity.training.trainer import train


def main(argv: Sequence[str] | None = None) -> None:
    """Train, print the density trace, purge, and print sizes and latencies.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).
    """
    preset = get_preset("fashion_resnet18")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=preset.epochs)
    parser.add_argument("--subset", type=int, default=preset.subset)
    parser.add_argument("--test-subset", type=int, default=preset.test_subset)
    parser.add_argument("--target", type=float, default=preset.target)
    parser.add_argument("--data-dir", default=preset.data_root)
    parser.add_argument("--rounds", type=int, default=15, help="latency timing rounds")
    parser.add_argument("--output-dir", default="runs/fashion_resnet18_benchmark")
    args = parser.parse_args(argv)

    config = preset.replace(
        epochs=args.epochs,
        subset=args.subset,
        test_subset=args.test_subset,
        target=args.target,
        data_root=args.data_dir,
        output_dir=args.output_dir,
        progress=True,
        tensorboard=False,
    )
    print(
        f"training {config.model} on {config.dataset}: {config.subset} images, "
        f"{config.epochs} epochs, target density {config.target}, "
        f"{config.threads or torch.get_num_threads()} thread(s)",
        flush=True,
    )
    result = train(config)
    print(
        f"\n{'epoch':>5}{'target':>8}{'expected':>10}{'test-time':>11}{'multiplier':>12}"
        f"{'test err':>10}{'time':>8}"
    )
    for row in result.history:
        multiplier = next(v for k, v in row.items() if k.startswith("multiplier/"))
        print(
            f"{row['epoch'] + 1:>5}{row['target']:>8.3f}{row['expected_density']:>10.4f}"
            f"{row['purged_density']:>11.4f}{multiplier:>12.4f}"
            f"{100 * row['test_error']:>9.2f}%{row['epoch_seconds']:>7.0f}s"
        )

    model = result.model.eval()
    purged = purge(model)
    _, test, _ = build_datasets(
        config.dataset, config.data_root, subset=config.subset, test_subset=config.test_subset
    )
    images = torch.stack([test[i][0] for i in range(min(64, len(test)))])
    with torch.inference_mode():
        error = (model(images) - purged(images)).abs().max().item()
    sizes = purge_report(model, (1, *images.shape[1:]), purged)
    print(
        f"\npurge: parameters {sizes.params_gated:,} -> {sizes.params_purged:,} "
        f"({sizes.param_ratio:.3f}), FLOPs per image {sizes.flops_gated / 1e6:.1f} M -> "
        f"{sizes.flops_purged / 1e6:.1f} M ({sizes.flop_ratio:.3f}); "
        f"max |logit difference| on {len(images)} test images {error:.2e}"
    )
    torch.set_num_threads(1)
    print(f"inference latency, CPU, 1 thread, median of {args.rounds} rounds")
    print(f"{'batch':>6}{'gated ms':>10}{'purged ms':>11}{'speedup':>9}")
    for batch in sorted({1, len(images)}):
        x = images[:batch].contiguous()
        timing = interleaved(
            {"gated": forward_pass(model, x), "purged": forward_pass(purged, x)}, args.rounds
        )
        print(
            f"{batch:>6}{1e3 * timing.median('gated'):>10.2f}{1e3 * timing.median('purged'):>11.2f}"
            f"{timing.ratio('gated', 'purged'):>8.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
