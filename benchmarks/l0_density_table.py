"""Density targets vs penalties on the CPU preset (MNIST-5k, MLP 784-300-100-10).

Trains the ``mnist_mlp`` preset for each model-wise target with and without dual restarts, and
for each penalty coefficient, then prints one table: mode, target or penalty, final expected
density, purged density, test error and time. Run::

    python benchmarks/l0_density_table.py [--epochs 200] [--targets 0.2,0.35,0.5]
        [--penalties 0.01,0.1,1,10] [--no-restart-runs] [--csv table.csv]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from l0_sparsity.training.presets import get_preset
from l0_sparsity.training.trainer import train


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--targets", type=_floats, default=[0.2, 0.35, 0.5])
    parser.add_argument("--penalties", type=_floats, default=[0.01, 0.1, 1.0, 10.0])
    parser.add_argument(
        "--no-restart-runs", action="store_true", help="skip the runs without restarts"
    )
    parser.add_argument("--output-dir", default="runs/density_table")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    base = get_preset("mnist_mlp").replace(
        epochs=args.epochs, progress=False, tensorboard=False, threads=1
    )
    runs = []
    for target in args.targets:
        runs.append(("constrained, restarts", f"eps={target}", base.replace(target=target)))
        if not args.no_restart_runs:
            runs.append(
                (
                    "constrained, no restarts",
                    f"eps={target}",
                    base.replace(target=target, dual_restarts=False),
                )
            )
    for penalty in args.penalties:
        runs.append(("penalized", f"lambda={penalty}", base.replace(penalty=penalty)))

    rows = []
    header = f"{'mode':<26}{'setting':<14}{'density':>9}{'purged':>9}{'test err':>10}{'time':>8}"
    print(header, flush=True)
    for index, (mode, setting, config) in enumerate(runs):
        config = config.replace(output_dir=str(Path(args.output_dir) / f"run{index}"))
        started = time.perf_counter()
        final = train(config).final
        row = {
            "mode": mode,
            "setting": setting,
            "expected_density": final["expected_density"],
            "purged_density": final["purged_density"],
            "test_error": final["test_error"],
            "seconds": time.perf_counter() - started,
        }
        rows.append(row)
        print(
            f"{mode:<26}{setting:<14}{row['expected_density']:>9.3f}{row['purged_density']:>9.3f}"
            f"{100 * row['test_error']:>9.2f}%{row['seconds']:>7.0f}s",
            flush=True,
        )
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
