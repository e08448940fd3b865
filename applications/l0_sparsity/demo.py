"""The CPU demonstration: a density target is reached; a penalty lands wherever it lands.

Runs the ``mnist_mlp`` preset (MLP 784-300-100-10 on MNIST-5k, 200 epochs) twice: constrained
to an expected density of at most ``target``, then with the penalty ``loss + penalty·density``
instead; prints one table row per run: target, expected density, purged density, test error.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from l0_sparsity.training.config import TrainConfig
from l0_sparsity.training.presets import get_preset
from l0_sparsity.training.trainer import train


def format_table(rows: list[tuple[str, TrainConfig, dict[str, Any]]]) -> str:
    """The demo's table: one line per run.

    Args:
        rows: ``(label, configuration, final metrics)`` of each run.

    Returns:
        The header and one line per run: target (``-`` for a penalty), expected and purged
        density, test error.
    """
    lines = [
        f"{'run':<28}{'target':>8}{'expected density':>18}{'purged density':>16}{'test error':>12}",
    ]
    for label, config, final in rows:
        target = "-" if config.mode == "penalized" else f"{config.target:.2f}"
        lines.append(
            f"{label:<28}{target:>8}{final['expected_density']:>18.3f}"
            f"{final['purged_density']:>16.3f}{100 * final['test_error']:>11.2f}%"
        )
    return "\n".join(lines)


def _final_metrics(config: TrainConfig) -> tuple[dict[str, Any], float]:
    """Train one run (in a worker process) and return its last epoch's metrics and duration."""
    started = time.perf_counter()
    final = train(config).final
    return final, time.perf_counter() - started


def run_demo(
    epochs: int | None = None,
    target: float = 0.35,
    penalty: float = 0.1,
    output_dir: str = "runs/demo",
) -> str:
    """Train the constrained and the penalized MLP side by side, print and return the table.

    The two runs go to two worker processes with one thread each, so the demo takes about the
    time of one run on a 2-core machine.

    Args:
        epochs: Epochs per run (``None``: the ``mnist_mlp`` preset's 200).
        target: The constrained run's target density.
        penalty: The penalized run's coefficient.
        output_dir: Where the two runs' files go (``constrained/`` and ``penalized/``).

    Returns:
        The table that was printed.
    """
    base = get_preset("mnist_mlp").replace(progress=False, tensorboard=False, threads=1)
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
    for label, config in runs:
        print(f"training {label}: {config.epochs} epochs of {config.model} on {config.dataset}")
    print("(both runs train at once, one process each; this takes a few minutes) ...", flush=True)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(runs), mp_context=context) as pool:
        futures = [pool.submit(_final_metrics, config) for _, config in runs]
        outcomes = [future.result() for future in futures]
    rows = []
    for (label, config), (final, seconds) in zip(runs, outcomes, strict=True):
        print(f"  {label}: finished in {seconds:.0f} s")
        rows.append((label, config, final))
    table = format_table(rows)
    print()
    print(table)
    print(f"\nmetrics, plots and checkpoints under {output_dir}/")
    return table
