"""Compute budgets against density targets and penalties on a preset (``mnist_lenet5``).

Three sections, each printing one measured table (one CPU thread):

* ``a``: MACs budgets τ (default 0.25 and 0.5) trained as constraints, twice each: with the
  expected MACs as the constraint (``expected``) and as a proxy constraint whose multiplier
  follows the purged MACs at the test-time gates (``strict``, ``strict_budgets=True``); then
  density constraints at ε = τ. One table, side by side: expected density, purged parameters,
  purged MACs (and their miss against τ), the purged model's latency measured as a ratio to the
  dense model in this process, test error, time. Goal: purged MACs within ±0.02 of τ. Then,
  for the comparison at equal compute, the density target whose purged MACs land within 0.02
  of τ, found by geometric bisection on ε in ``--matched-bracket`` (at most
  ``--matched-trainings`` trainings; the row says how many it took). Goal: the strict budget's
  test error within 1 point of that run's. The last column, ``settled``, is the fraction of
  the second half's evaluations within ±0.02 of τ. ``--rows strict`` (any of ``expected``,
  ``strict``, ``density``, ``matched``) trains only those runs: a sweep over ``--macs-targets``.
* ``b``: constraints against penalties, counted: bisection (geometric, in a bracket) on the
  penalty coefficient of the expected MACs (``--penalize density``: of the expected density)
  until the purged MACs are within 0.01 of τ, against one constrained run at τ: number of full
  trainings and their total wall time.
* ``c``: a latency budget: the latency model's accuracy on purged models at several keep levels
  (predicted against measured), then a run with ``latency_target`` (strict) and its purged
  model's measured latency ratio against the target. Goal: within 15 % (relative).

Run::

    python benchmarks/l0_budgets.py [--preset mnist_lenet5] [--epochs 120] [--dual-lr 0.05]
        [--sections a,b,c] [--macs-targets 0.25,0.5] [--rows expected,strict,density,matched]
        [--latency-target 0.5] [--max-trainings 8] [--matched-trainings 4] [--quick]

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

BAND = 0.02
"""The goal: purged MACs within ``BAND`` of the budget."""

ROWS = ("expected", "strict", "density", "matched")
"""The kinds of run section a can train (``--rows``)."""

KEEP_LEVELS = (0.9, 0.7, 0.5, 0.3, 0.15)
"""Keep levels of the latency model's accuracy table (section c)."""


@dataclass
class Outcome:
    """One full training: final metrics, latency ratio (measured, predicted) and wall time.

    ``settled``: with a MACs budget, the fraction of the second half's evaluations whose purged
    MACs are within :data:`BAND` of it (how steadily the run holds its budget, not only where
    its last epoch happens to land).
    """

    label: str
    setting: str
    final: dict[str, Any]
    latency: float
    predicted: float
    seconds: float
    settled: float = math.nan


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist_lenet5", help="the preset to train")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--dual-lr", type=float, default=None, help="default: the preset's")
    parser.add_argument(
        "--budget-tolerance", type=float, default=None, help="default: the preset's"
    )
    parser.add_argument("--sections", default="a,b,c", help="which tables: a, b, c")
    parser.add_argument("--macs-targets", type=_floats, default=[0.25, 0.5])
    parser.add_argument(
        "--rows",
        type=lambda text: [r for r in text.split(",") if r],
        default=list(ROWS),
        help=f"section a's kinds of run, any of {','.join(ROWS)}",
    )
    parser.add_argument("--bisection-target", type=float, default=0.5, help="τ of section b")
    parser.add_argument("--bracket", type=_floats, default=[1e-2, 1e3], help="penalty bracket")
    parser.add_argument("--max-trainings", type=int, default=8, help="bisection's limit")
    parser.add_argument(
        "--matched-bracket", type=_floats, default=[0.005, 0.5], help="ε bracket of section a"
    )
    parser.add_argument(
        "--matched-trainings", type=int, default=4, help="section a's ε bisection limit (0: none)"
    )
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
    unknown = sorted(set(args.rows) - set(ROWS))
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)} (choose from {', '.join(ROWS)})")
    if args.quick:
        args.epochs, args.subset, args.test_subset = 1, 512, 256
        args.macs_targets, args.max_trainings, args.matched_trainings = [0.5], 2, 1
        args.latency_target = 0.9
    return args


def base_config(args: argparse.Namespace) -> TrainConfig:
    """The preset on one CPU thread, without density target (overrides given on the line)."""
    preset = get_preset(args.preset)
    given = {
        name: getattr(args, name)
        for name in ("epochs", "dual_lr", "budget_tolerance", "subset", "test_subset")
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
    settled = math.nan
    if config.macs_target is not None:
        late = result.history[len(result.history) // 2 :]
        held = [abs(row["purged_macs"] - config.macs_target) <= BAND for row in late]
        settled = sum(held) / len(held)
    return Outcome(label, setting, result.final, latency, predicted, seconds, settled)


def _row(outcome: Outcome, tau: float | None) -> str:
    final = outcome.final
    miss = final["purged_macs"] - tau if tau is not None else math.nan
    return (
        f"{outcome.label:<18}{outcome.setting:<10}{final['expected_density']:>9.3f}"
        f"{final['purged_params']:>9.3f}{final['purged_macs']:>9.3f}{miss:>+9.3f}"
        f"{outcome.latency:>9.3f}{100 * final['test_error']:>8.2f}%{outcome.seconds:>7.0f}s"
        f"{outcome.settled:>9.2f}"
    )


@dataclass
class Bisection:
    """A geometric bisection of one setting until the purged MACs are within ``tolerance`` of τ.

    Attributes:
        label: The runs' label in the tables.
        field: The ``TrainConfig`` field bisected.
        bracket: ``(low, high)`` of the setting.
        rising: Whether the purged MACs grow with the setting (a density target) or fall (a
            penalty).
        tau: The MACs target.
        tolerance: How close the purged MACs must come.
        limit: The most trainings.
    """

    label: str
    field: str
    bracket: tuple[float, float]
    rising: bool
    tau: float
    tolerance: float
    limit: int

    def run(
        self, base: TrainConfig, meter: LatencyModel, output_dir: str
    ) -> tuple[Outcome | None, int, float]:
        """Train until a setting lands (or the limit), printing each try.

        Returns:
            The run that landed (``None`` if none did), the trainings and their total seconds.
        """
        low, high = self.bracket
        trainings, seconds = 0, 0.0
        while trainings < self.limit:
            value = math.sqrt(low * high)
            config = base.replace(
                **{self.field: value}, output_dir=f"{output_dir}/{self.field}{trainings}"
            )
            outcome = run(self.label, f"{self.field}={value:.4g}", config, meter)
            trainings, seconds = trainings + 1, seconds + outcome.seconds
            macs = outcome.final["purged_macs"]
            print(
                f"  bisection {trainings}: {self.field} = {value:.4g} -> purged MACs {macs:.3f}",
                flush=True,
            )
            if abs(macs - self.tau) <= self.tolerance:
                return outcome, trainings, seconds
            if (macs > self.tau) == self.rising:
                high = value
            else:
                low = value
        return None, trainings, seconds


def section_a(args: argparse.Namespace, base: TrainConfig, meter: LatencyModel) -> list[Outcome]:
    """MACs budgets (expected and strict) and density targets at ε = τ, in one table."""
    print(f"\n(a) MACs budgets vs density targets, {args.preset} (fractions of the dense model)")
    print(
        f"{'run':<18}{'setting':<10}{'density':>9}{'params':>9}{'MACs':>9}{'MACs-τ':>9}"
        f"{'latency':>9}{'test err':>9}{'time':>8}{'settled':>9}",
        flush=True,
    )
    outcomes = []
    out = Path(args.output_dir)
    modes = [strict for strict, row in ((False, "expected"), (True, "strict")) if row in args.rows]
    for tau in args.macs_targets:
        for strict in modes:
            label = "MACs, strict" if strict else "MACs, expected"
            config = base.replace(
                macs_target=tau, strict_budgets=strict, output_dir=str(out / f"macs{tau}{strict}")
            )
            outcomes.append(run(label, f"τ={tau}", config, meter))
            print(_row(outcomes[-1], tau), flush=True)
    for eps in args.macs_targets if "density" in args.rows else []:
        config = base.replace(target=eps, output_dir=str(out / f"density{eps}"))
        outcomes.append(run("density", f"ε={eps}", config, meter))
        print(_row(outcomes[-1], eps), flush=True)
    if args.matched_trainings > 0 and "matched" in args.rows:
        outcomes += _matched_densities(args, base, meter, outcomes)
    return outcomes


def _strict_run(done: list[Outcome], tau: float) -> Outcome | None:
    """The strict-budget run at ``tau`` among ``done``, if section a trained one."""
    return next((o for o in done if o.label == "MACs, strict" and o.setting == f"τ={tau}"), None)


def _matched_densities(
    args: argparse.Namespace, base: TrainConfig, meter: LatencyModel, done: list[Outcome]
) -> list[Outcome]:
    """For each τ, the density run at the same purged MACs, against the strict budget's error."""
    print("\n(a') density targets bisected to the budgets' purged MACs (±0.02)", flush=True)
    low, high = args.matched_bracket
    matched = []
    for tau in args.macs_targets:
        bisection = Bisection(
            "density, matched", "target", (low, high), True, tau, 0.02, args.matched_trainings
        )
        found, trainings, seconds = bisection.run(base, meter, f"{args.output_dir}/matched{tau}")
        strict = _strict_run(done, tau)
        if found is None:
            print(f"  τ={tau}: no ε in [{low}, {high}] landed in {trainings} trainings")
            continue
        matched.append(found)
        print(_row(found, tau))
        if strict is None:
            continue
        gap = 100 * (strict.final["test_error"] - found.final["test_error"])
        print(
            f"  τ={tau}: {trainings} trainings ({seconds:.0f}s); strict budget's test error "
            f"{gap:+.2f} points from it ({'within' if gap <= 1 else 'not within'} 1 point)",
            flush=True,
        )
    return matched


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
    constrained = _strict_run(done, tau)
    if constrained is None:
        config = base.replace(
            macs_target=tau, strict_budgets=True, output_dir=f"{args.output_dir}/b_constrained"
        )
        constrained = run("MACs, strict", f"τ={tau}", config, meter)
    low, high = args.bracket
    field = PENALTY_FIELDS[args.penalize]
    bisection = Bisection("penalty", field, (low, high), False, tau, tol, args.max_trainings)
    found, trainings, seconds = bisection.run(base, meter, f"{args.output_dir}/b")
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
