"""The CPU demonstration: a density target is reached; a penalty lands wherever it lands.

Runs the ``mnist_mlp`` preset (MLP 784-300-100-10 on MNIST-5k, 200 epochs) twice: constrained
to an expected density of at most ``target``, then with the penalty ``loss + penalty·density``
instead; prints one table row per run: target, expected density, purged density, test error.
"""

from __future__ import annotations

import time
from pathlib import Path

from l0_sparsity.presets import get_preset
from l0_sparsity.train import TrainResult, train


def format_table(rows: list[tuple[str, TrainResult]]) -> str:
    """The demo's table: one line per run."""
    lines = [
        f"{'run':<24}{'target':>8}{'expected density':>18}{'purged density':>16}{'test error':>12}",
    ]
    for label, result in rows:
        final = result.final
        target = "-" if result.config.penalty is not None else f"{result.config.target:.2f}"
        lines.append(
            f"{label:<24}{target:>8}{final['expected_density']:>18.3f}"
            f"{final['purged_density']:>16.3f}{100 * final['test_error']:>11.2f}%"
        )
    return "\n".join(lines)


def run_demo(
    epochs: int | None = None,
    target: float = 0.35,
    penalty: float = 0.1,
    output_dir: str = "runs/demo",
) -> str:
    """Train the constrained and the penalized MLP, print and return the comparison table."""
    base = get_preset("mnist_mlp").replace(progress=False, tensorboard=False, threads=2)
    if epochs is not None:
        base = base.replace(epochs=epochs)
    runs = [
        (
            f"constrained (eps={target})",
            base.replace(target=target, output_dir=str(Path(output_dir) / "constrained")),
        ),
        (
            f"penalized (lambda={penalty})",
            base.replace(penalty=penalty, output_dir=str(Path(output_dir) / "penalized")),
        ),
    ]
    results: list[tuple[str, TrainResult]] = []
    for label, config in runs:
        started = time.perf_counter()
        print(
            f"training {label}: {config.epochs} epochs of {config.model} on {config.dataset} ...",
            flush=True,
        )
        results.append((label, train(config)))
        print(f"  finished in {time.perf_counter() - started:.0f} s", flush=True)
    table = format_table(results)
    print()
    print(table)
    print(f"\nmetrics, plots and checkpoints under {output_dir}/")
    return table
