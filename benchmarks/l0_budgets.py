"""Compute budgets against density targets and penalties on a preset (``mnist_lenet5``).

Three sections, each printing one measured table (one CPU thread):

* ``a``: MACs budgets τ (default 0.25 and 0.5) trained as constraints, twice each: with the
  expected MACs as the constraint (``expected``) and as a proxy constraint whose multiplier
  follows the purged MACs at the test-time gates (``strict``, ``strict_budgets=True``); then
  density constraints at ε = τ. One table, side by side: expected density, purged parameters,
  purged MACs (and their miss against τ), the purged model's latency measured as a ratio to the
  dense model in this process, test error, time. Goal: purged MACs within ±0.02 of τ.
* ``b``: constraints against penalties, counted: bisection (geometric, in a bracket) on the
  penalty coefficient of the expected MACs (``--penalize density``: of the expected density)
  until the purged MACs are within 0.01 of τ, against one constrained run at τ: number of full
  trainings and their total wall time.
* ``c``: a latency budget: the latency model's accuracy on purged models at several keep levels
  (predicted against measured), then a run with ``latency_target`` (strict) and its purged
  model's measured latency ratio against the target. Goal: within 15 % (relative).

Run::

    python benchmarks/l0_budgets.py [--preset mnist_lenet5] [--epochs 200] [--sections a,b,c]
        [--macs-targets 0.25,0.5] [--latency-target 0.5] [--max-trainings 8] [--quick]

``--preset fashion_resnet18`` runs the same tables on the CIFAR ResNet-18 with a Fashion-MNIST
subset (the preset's subset and epochs unless given).

``--quick`` (a smoke run of about a minute) trains one epoch on 512 images at one τ.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from l0_sparsity import purge
from l0_sparsity.measures import LatencyModel
from l0_sparsity.training.builders import load_datasets, make_model
from l0_sparsity.training.config import TrainConfig
from l0_sparsity.training.presets import get_preset
from l0_sparsity.training.trainer import train

PENALTY_FIELDS = {"macs": "macs_penalty", "density": "penalty"}
"""The ``TrainConfig`` field that section b bisects, by ``--penalize``."""

KEEP_LEVELS = (0.9, 0.7, 0.5, 0.3, 0.15)
"""Keep levels of the latency model's accuracy table (section c)."""


@dataclass
class Outcome:
    """One full training: final metrics, latency ratio (measured, predicted) and wall time."""

    label: str
    setting: str
    final: dict[str, Any]
    latency: float
    predicted: float
    seconds: float


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist_lenet5", help="the preset to train")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--sections", default="a,b,c", help="which tables: a, b, c")
    parser.add_argument("--macs-targets", type=_floats, default=[0.25, 0.5])
    parser.add_argument("--bisection-target", type=float, default=0.5, help="τ of section b")
    parser.add_argument("--bracket", type=_floats, default=[1e-2, 1e3], help="penalty bracket")
    parser.add_argument("--max-trainings", type=int, default=8, help="bisection's limit")
    parser.add_argument(
        "--penalize",
        choices=sorted(PENALTY_FIELDS),
        default="macs",
        help="what section b's penalty multiplies: the expected MACs (default) or the density",
    )
    parser.add_argument("--latency-target", type=float, default=0.5)
    parser.add_argument("--subset", type=int, default=None, help="training images")
    parser.add_argument("--test-subset", type=int, default=None, help="test images")
    parser.add_argument("--output-dir", default="runs/l0_budgets")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 512 images, one τ")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.subset, args.test_subset = 1, 512, 256
        args.macs_targets, args.max_trainings = [0.5], 2
        args.latency_target = 0.9
    return args


def base_config(args: argparse.Namespace) -> TrainConfig:
    """The preset on one CPU thread, without density target (``--epochs``, subsets if given)."""
    preset = get_preset(args.preset)
    given = {
        name: getattr(args, name)
        for name in ("epochs", "subset", "test_subset")
        if getattr(args, name) is not None
    }
    return preset.replace(
        **given,
        target=None,
        device="cpu",
        threads=1,
        num_workers=0,
        progress=False,
        tensorboard=False,
        overwrite=True,
    )


def make_meter(config: TrainConfig) -> LatencyModel:
    """The latency model of the preset's gated model at the run's batch (measured or cached)."""
    *_, info = load_datasets(config)
    model = make_model(config, info)
    return LatencyModel(model, (config.batch_size, *info.input_shape), purge=purge, threads=1)


def run(label: str, setting: str, config: TrainConfig, meter: LatencyModel) -> Outcome:
    """Train ``config`` once; measure its purged model's latency ratio to the dense model."""
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    latency = meter.measured_fraction(result.model)
    own = result.problem.latency_model
    predicted = own.test_fraction() if own is not None else math.nan
    return Outcome(label, setting, result.final, latency, predicted, seconds)


def _row(outcome: Outcome, tau: float | None) -> str:
    final = outcome.final
    miss = final["purged_macs"] - tau if tau is not None else math.nan
    return (
        f"{outcome.label:<18}{outcome.setting:<10}{final['expected_density']:>9.3f}"
        f"{final['purged_params']:>9.3f}{final['purged_macs']:>9.3f}{miss:>+9.3f}"
        f"{outcome.latency:>9.3f}{100 * final['test_error']:>8.2f}%{outcome.seconds:>7.0f}s"
    )


def section_a(args: argparse.Namespace, base: TrainConfig, meter: LatencyModel) -> list[Outcome]:
    """MACs budgets (expected and strict) and density targets at ε = τ, in one table."""
    print(f"\n(a) MACs budgets vs density targets, {args.preset} (fractions of the dense model)")
    print(
        f"{'run':<18}{'setting':<10}{'density':>9}{'params':>9}{'MACs':>9}{'MACs-τ':>9}"
        f"{'latency':>9}{'test err':>9}{'time':>8}",
        flush=True,
    )
    outcomes = []
    out = Path(args.output_dir)
    for tau in args.macs_targets:
        for strict in (False, True):
            label = "MACs, strict" if strict else "MACs, expected"
            config = base.replace(
                macs_target=tau, strict_budgets=strict, output_dir=str(out / f"macs{tau}{strict}")
            )
            outcomes.append(run(label, f"τ={tau}", config, meter))
            print(_row(outcomes[-1], tau), flush=True)
    for eps in args.macs_targets:
        config = base.replace(target=eps, output_dir=str(out / f"density{eps}"))
        outcomes.append(run("density", f"ε={eps}", config, meter))
        print(_row(outcomes[-1], eps), flush=True)
    return outcomes


def section_b(
    args: argparse.Namespace, base: TrainConfig, meter: LatencyModel, done: list[Outcome]
) -> None:
    """Bisection on the penalty coefficient against one constrained run, counted."""
    tau, tol = args.bisection_target, 0.01
    print(
        f"\n(b) constraints vs penalties: purged MACs within {tol} of τ = {tau}, bisecting the "
        f"{args.penalize} penalty",
        flush=True,
    )
    constrained = next(
        (o for o in done if o.label == "MACs, strict" and o.setting == f"τ={tau}"), None
    )
    if constrained is None:
        config = base.replace(
            macs_target=tau, strict_budgets=True, output_dir=f"{args.output_dir}/b_constrained"
        )
        constrained = run("MACs, strict", f"τ={tau}", config, meter)
    low, high = args.bracket
    trainings, seconds, found = 0, 0.0, None
    while trainings < args.max_trainings:
        penalty = math.sqrt(low * high)
        config = base.replace(
            **{PENALTY_FIELDS[args.penalize]: penalty},
            output_dir=f"{args.output_dir}/b_penalty{trainings}",
        )
        outcome = run("penalty", f"λ={penalty:.4g}", config, meter)
        trainings, seconds = trainings + 1, seconds + outcome.seconds
        macs = outcome.final["purged_macs"]
        print(f"  bisection {trainings}: λ = {penalty:.4g} -> purged MACs {macs:.3f}", flush=True)
        if abs(macs - tau) <= tol:
            found = outcome
            break
        low, high = (penalty, high) if macs > tau else (low, penalty)
    print(f"{'method':<26}{'trainings':>10}{'wall time':>11}{'purged MACs':>13}{'met':>6}")
    miss = abs(constrained.final["purged_macs"] - tau) <= tol
    print(
        f"{'constraint (strict MACs)':<26}{1:>10}{constrained.seconds:>10.0f}s"
        f"{constrained.final['purged_macs']:>13.3f}{'yes' if miss else 'no':>6}"
    )
    last = found.final["purged_macs"] if found is not None else math.nan
    print(
        f"{'penalty bisection':<26}{trainings:>10}{seconds:>10.0f}s{last:>13.3f}"
        f"{'yes' if found is not None else 'no':>6}"
        + ("" if found is not None else f"  (stopped at --max-trainings {args.max_trainings})"),
        flush=True,
    )


def section_c(args: argparse.Namespace, base: TrainConfig, meter: LatencyModel) -> None:
    """The latency model's accuracy, then a run to a latency budget."""
    print(
        f"\n(c) latency model of {args.preset} at batch {base.batch_size}, 1 thread "
        f"(dense {meter.dense_seconds * 1e3:.2f} ms, floor {meter.floor:.3f}; "
        f"{'from cache' if meter.from_cache else 'measured now'})"
    )
    print(f"{'keep':>6}{'predicted':>11}{'measured':>10}{'rel. err':>10}")
    for row in meter.accuracy(KEEP_LEVELS):
        print(
            f"{row.keep:>6.2f}{row.predicted:>11.3f}{row.measured:>10.3f}"
            f"{100 * row.relative_error:>+9.1f}%"
        )
    target = args.latency_target
    config = base.replace(
        latency_target=target, strict_budgets=True, output_dir=f"{args.output_dir}/latency{target}"
    )
    outcome = run("latency", f"τ={target}", config, meter)
    final = outcome.final
    print(f"{'latency τ':>10}{'expected':>10}{'predicted':>11}{'measured':>10}{'rel. miss':>11}")
    print(
        f"{target:>10.3f}{final['expected_latency']:>10.3f}{outcome.predicted:>11.3f}"
        f"{outcome.latency:>10.3f}{100 * (outcome.latency / target - 1):>+10.1f}%"
        f"   (test error {100 * final['test_error']:.2f}%, purged MACs "
        f"{final['purged_macs']:.3f}, {outcome.seconds:.0f}s)",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chosen sections and print their tables."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    base = base_config(args)
    meter = make_meter(base)
    sections = set(args.sections.split(","))
    done = section_a(args, base, meter) if "a" in sections else []
    if "b" in sections:
        section_b(args, base, meter, done)
    if "c" in sections:
        section_c(args, base, meter)


if __name__ == "__main__":
    main()
