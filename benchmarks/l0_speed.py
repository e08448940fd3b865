"""Speed of the L0-sparsity application: gated training overhead, purged inference, GPU throughput.

Three sections, each printing one table with the goal next to every ratio:

* ``--train`` (a): CPU time of one training step (forward, cross-entropy, backward, optimizer
  step) of the gated model against the same architecture built dense
  (``build_model(name, gated=False)``), for ``mlp`` (batch 128, 1×28×28), ``lenet5`` (batch 128,
  1×28×28) and ``resnet18_cifar`` (batch 32, 3×32×32). Two gated contenders: ``gated`` (the gated
  layers only: cross-entropy, the trainer's optimizer with weights' and gates' parameter groups)
  and ``constrained`` (the trainer's full step: :class:`~l0_sparsity.problem.SparsityProblem`
  with its density constraint and expected-L2 term, :class:`conopt.optim.SimultaneousGDA` with
  dual restarts, through the open ``lagrangian`` / ``apply`` path). A third, ``budget``, adds a
  MACs budget (:data:`BUDGET_MACS`) to ``constrained``: its ratio to ``constrained`` is the cost of
  the compute measure (goal ≤ 1.05). Every variant uses the
  trainer's optimizers (:func:`l0_sparsity.training.optimizers.make_optimizer`, fused SGD or Adam);
  learning
  rates, target and weight decay follow the model's preset. Goal: ratio ≤ 1.3. The ``faults``
  columns count minor page faults per step (see :func:`pin_glibc_heap`).
* ``--purge`` (b): eval-mode inference latency of :func:`l0_sparsity.purging.purge`'s output
  against the gated model at test densities 0.7 / 0.5 / 0.3 (``log α`` set so that that
  fraction of the groups of every gated layer is active), for ``mlp`` and ``resnet18_cifar`` on
  CPU at batch 1 and 64, with parameters and FLOPs (:func:`~l0_sparsity.purging.purge_report`).
  Goal: purged at density 0.3 is ≥ 2× faster.
* ``--gpu`` (c): training throughput (images/s) of ``resnet18_cifar`` and ``wrn28_10`` on CUDA
  with bf16 autocast and channels_last, synthetic data, dense vs the full constrained step.
  Prints ``CUDA not available: skipped`` without a GPU.

CPU sections run single-threaded and measure thread CPU time (``time.thread_time``), which other
load on the machine disturbs less than wall time; contenders are interleaved in rounds, times
are medians over rounds and ratios medians of the per-round ratios. Run (no flag: every
section)::

    python benchmarks/l0_speed.py [--train] [--purge] [--gpu] [--rounds 15] [--models mlp]
        [--batch 512] [--pin-heap]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from l0_sparsity.measures import test_density
from l0_sparsity.models import build_model
from l0_sparsity.nn import gated_layers
from l0_sparsity.purging import purge, purge_report
from l0_sparsity.training.builders import make_problem
from l0_sparsity.training.config import TrainConfig
from l0_sparsity.training.optimizers import (
    make_constrained_optimizer,
    make_optimizer,
    primal_parameter_groups,
)
from l0_sparsity.training.precision import mixed_precision
from l0_sparsity.training.presets import get_preset

TRAIN_GOAL = 1.3
"""Section (a): a gated step may cost at most this many dense steps."""
PURGE_GOAL = 2.0
"""Section (b): the purged model at density 0.3 must be at least this many times faster."""
PURGE_GOAL_DENSITY = 0.3

# name: (batch, channels, side, preset)
TRAIN_SPECS: dict[str, tuple[int, int, int, str]] = {
    "mlp": (128, 1, 28, "mnist_mlp"),
    "lenet5": (128, 1, 28, "mnist_lenet5"),
    "resnet18_cifar": (32, 3, 32, "cifar10_resnet18"),
    "wrn28_10": (128, 3, 32, "cifar10_wrn"),
}
# name: (channels, side)
PURGE_SPECS: dict[str, tuple[int, int]] = {"mlp": (1, 28), "resnet18_cifar": (3, 32)}
VARIANTS = ("dense", "gated", "constrained", "budget")
BUDGET_MACS = 0.5
"""MACs budget of the ``budget`` variant (fraction of dense MACs), beside the density target."""
BUDGET_GOAL = 1.05
"""Goal of the ``budget`` variant's step time over the ``constrained`` one (issue #14: ≤ 5 %)."""


# ------------------------------------------------------------------------------------- timing
def pin_glibc_heap(size: int = 64 << 20) -> bool:
    """Stop glibc from handing freed heap memory back to the kernel (``mallopt``).

    By default glibc serves large blocks with ``mmap`` (from 128 KiB, a threshold it adjusts on
    the fly) and trims the heap top once more than twice that is free, so a step that frees a
    few large temporaries faults their pages in again on the next step: hundreds of minor page
    faults, each a kernel entry and a zeroed page, charged to the thread's CPU time. Fixing the
    thresholds and padding the heap top keeps those pages mapped, which separates the compute
    cost of the layers from the allocator's. Process-wide; for benchmarking only.

    Returns:
        Whether every setting took effect (``False`` off glibc).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        settings = ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 4 * size), (m_top_pad, size))
        return all(libc.mallopt(option, value) == 1 for option, value in settings)
    except (OSError, AttributeError):
        return False


def _minor_faults() -> int:
    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    return resource.getrusage(who).ru_minflt


@dataclass(frozen=True)
class Timing:
    """Per-round thread-CPU seconds per call of each contender, and page faults per call."""

    samples: dict[str, list[float]]
    faults: dict[str, float]

    def median(self, name: str) -> float:
        """Median seconds per call of ``name``."""
        return statistics.median(self.samples[name])

    def ratio(self, name: str, reference: str) -> float:
        """Median over rounds of ``name``'s time over ``reference``'s time in the same round."""
        pairs = zip(self.samples[name], self.samples[reference], strict=True)
        return statistics.median(a / b for a, b in pairs)


def interleaved(
    contenders: dict[str, Callable[[], Any]], rounds: int, reps: int = 1, warmup: int = 2
) -> Timing:
    """Time the contenders interleaved: each round runs each one ``reps`` times in a row.

    The order rotates from round to round, so that slow drifts of the machine's load hit every
    contender alike; a round records the mean thread-CPU time per call of each contender.
    """
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    faults = dict.fromkeys(names, 0)
    for r in range(max(1, rounds)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = contenders[name]
            before = _minor_faults()
            start = time.thread_time()
            for _ in range(reps):
                fn()
            samples[name].append((time.thread_time() - start) / reps)
            faults[name] += _minor_faults() - before
    calls = max(1, rounds) * reps
    return Timing(samples, {name: count / calls for name, count in faults.items()})


# ------------------------------------------------------------------------ (a) training steps
class SyntheticBatches:
    """A cycle over a few fixed random input batches, with fresh random labels at each call.

    Fresh labels keep the cross-entropy away from 0: on one fixed batch the model would
    memorize it within a few hundred steps, and the vanishing gradients would fill the Adam
    states with subnormal floats, whose arithmetic is many times slower on CPU.
    """

    def __init__(
        self,
        name: str,
        batch: int | None,
        device: torch.device,
        channels_last: bool = False,
        pool: int = 4,
    ) -> None:
        default, channels, side, _ = TRAIN_SPECS[name]
        self.batch = batch or default
        gen = torch.Generator().manual_seed(1)
        self.inputs = [
            torch.randn(self.batch, channels, side, side, generator=gen).to(device)
            for _ in range(pool)
        ]
        if channels_last:
            self.inputs = [x.contiguous(memory_format=torch.channels_last) for x in self.inputs]
        self.device = device
        self.calls = 0

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(inputs, labels)``."""
        x = self.inputs[self.calls % len(self.inputs)]
        self.calls += 1
        return x, torch.randint(0, 10, (self.batch,), device=self.device)


@dataclass(frozen=True)
class TrainStep:
    """A model and the function that takes one training step of it."""

    model: nn.Module
    run: Callable[[], None]

    def __call__(self) -> None:
        """Take one step."""
        self.run()


def make_train_step(
    name: str,
    variant: str,
    *,
    batch: int | None = None,
    device: str | torch.device = "cpu",
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    config: TrainConfig | None = None,
) -> TrainStep:
    """One full training step of ``name`` on synthetic data, as a callable.

    Args:
        name: A model of :data:`TRAIN_SPECS`.
        variant: ``"dense"`` (``gated=False``, cross-entropy), ``"gated"`` (gated model,
            cross-entropy, one optimizer with weights' and gates' groups) or
            ``"constrained"`` (the trainer's step: :class:`~l0_sparsity.problem.SparsityProblem` +
            :class:`conopt.optim.SimultaneousGDA`) or ``"budget"`` (the same with a MACs budget
            of :data:`BUDGET_MACS` as a second constraint).
        batch: Batch size (default: the model's in :data:`TRAIN_SPECS`).
        device: Where to run.
        amp: Autocast dtype, or ``None`` for float32.
        channels_last: Model and inputs in channels_last memory format.
        config: Hyperparameters (default: the model's preset).

    Returns:
        A :class:`TrainStep`: each call takes one step.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    device = torch.device(device)
    config = config or get_preset(TRAIN_SPECS[name][3])
    _, channels, side, _ = TRAIN_SPECS[name]
    torch.manual_seed(0)
    model = build_model(
        name,
        num_classes=10,
        in_channels=channels,
        image_size=side,
        droprate_init=config.droprate_init,
        structured=config.structured,
        gated=variant != "dense",
    ).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    data = SyntheticBatches(name, batch, device, channels_last)
    mixed = mixed_precision(device.type, amp)

    if variant in ("dense", "gated"):
        if variant == "dense":
            opts = [make_optimizer(config.optimizer, list(model.parameters()), config.lr)]
        else:  # as make_constrained_optimizer builds it: one optimizer, two groups
            groups = primal_parameter_groups(config, model)
            opts = [make_optimizer(config.optimizer, groups, config.lr)]

        def step() -> None:
            x, y = data()
            with mixed:
                logits = model(x)
            F.cross_entropy(logits.float(), y).backward()
            for opt in opts:
                opt.step()
            for opt in opts:
                opt.zero_grad()

        return TrainStep(model, step)

    # As the trainer builds and steps it (training.builders, training.step; logging left out).
    if variant == "budget":
        config = config.replace(macs_target=BUDGET_MACS)
    example = (1, channels, side, side)
    problem = make_problem(config, model, example).to(device)
    optimizer = make_constrained_optimizer(config, model, problem)

    def constrained_step() -> None:
        x, y = data()
        with mixed:
            state = problem.evaluate(x, y)
        optimizer.lagrangian(state).backward()
        optimizer.apply()
        optimizer.zero_grad()

    return TrainStep(model, constrained_step)


@dataclass(frozen=True)
class TrainRow:
    """Section (a) result for one model."""

    model: str
    batch: int
    timing: Timing

    def ratio(self, variant: str) -> float:
        """``variant``'s step time over the dense step time (median of per-round ratios)."""
        return self.timing.ratio(variant, "dense")


def train_overhead(
    models: Sequence[str] = ("mlp", "lenet5", "resnet18_cifar"),
    rounds: int = 15,
    reps: int | None = None,
    batch: int | None = None,
    warmup: int = 2,
) -> list[TrainRow]:
    """Section (a): time the three variants of each model, interleaved, and print the table.

    Args:
        models: Models of :data:`TRAIN_SPECS`.
        rounds: Interleaved timing rounds.
        reps: Steps per contender and round (default: 5, or 1 for the residual networks).
        batch: Batch size for every model (default: each model's in :data:`TRAIN_SPECS`).
        warmup: Untimed steps per contender first.

    Returns:
        One row per model.
    """
    rows = []
    print(f"\n(a) training step, CPU, 1 thread, median of {rounds} rounds (thread CPU time)")
    print(
        f"{'model':<16}{'batch':>6}{'dense ms':>10}{'gated ms':>10}{'constr ms':>11}"
        f"{'budget ms':>11}{'gated/dense':>13}{'constr/dense':>14}  {'goal':<13}"
        f"{'budget/constr':>15}  {'goal':<14}{'faults/step d/g/c/b':>21}"
    )
    for name in models:
        steps = {v: make_train_step(name, v, batch=batch) for v in VARIANTS}
        n = reps if reps is not None else (1 if name in ("resnet18_cifar", "wrn28_10") else 5)
        timing = interleaved(steps, rounds, n, warmup)
        row = TrainRow(name, batch or TRAIN_SPECS[name][0], timing)
        rows.append(row)
        g, c = row.ratio("gated"), row.ratio("constrained")
        verdict = "ok" if max(g, c) <= TRAIN_GOAL else "MISSED"
        b = timing.ratio("budget", "constrained")
        budget_verdict = "ok" if b <= BUDGET_GOAL else "MISSED"
        faults = "/".join(f"{timing.faults[v]:.0f}" for v in VARIANTS)
        ms = "".join(
            f"{1e3 * timing.median(v):>{w}.2f}"
            for v, w in zip(VARIANTS, (10, 10, 11, 11), strict=True)
        )
        print(
            f"{name:<16}{row.batch:>6}{ms}{g:>12.2f}x{c:>13.2f}x  "
            f"{f'<= {TRAIN_GOAL}x ' + verdict:<13}{b:>14.3f}x  "
            f"{f'<= {BUDGET_GOAL}x ' + budget_verdict:<14}{faults:>21}",
            flush=True,
        )
    return rows


# --------------------------------------------------------------------- (b) purged inference
@torch.no_grad()
def set_density(model: nn.Module, fraction: float, seed: int = 0) -> float:
    """Make ``round(fraction · n)`` of the ``n`` groups of every gated layer active.

    Active groups get ``log α ~ U(−1, 1)`` (a fractional test-time gate), the others
    ``log α = −3`` (below the threshold ≈ −1.6, test-time gate 0), as in the purge tests.

    Returns:
        The resulting test density of the gated weights.
    """
    gen = torch.Generator().manual_seed(seed)
    for _, layer in gated_layers(model):
        la = layer.log_alpha
        n = la.numel()
        alive = torch.zeros(n, dtype=torch.bool)
        alive[torch.randperm(n, generator=gen)[: max(1, round(fraction * n))]] = True
        values = torch.where(alive, -1.0 + 2.0 * torch.rand(n, generator=gen), -3.0)
        la.copy_(values.view_as(la).to(la))
    return test_density(model)


def _mega(count: int) -> str:
    value = count / 1e6
    return f"{value:,.1f}" if value >= 10 else f"{value:.3f}"


@dataclass(frozen=True)
class PurgeRow:
    """Section (b) result for one (model, density, batch)."""

    model: str
    target: float
    density: float
    batch: int
    timing: Timing
    params: tuple[int, int]
    flops: tuple[int, int]

    @property
    def speedup(self) -> float:
        """Gated latency over purged latency (median of per-round ratios)."""
        return self.timing.ratio("gated", "purged")


def forward_pass(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A callable running ``model(x)`` under ``torch.inference_mode``, for :func:`interleaved`."""

    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


def purge_speed(
    models: Sequence[str] = ("mlp", "resnet18_cifar"),
    densities: Sequence[float] = (0.7, 0.5, 0.3),
    batches: Sequence[int] = (1, 64),
    rounds: int = 15,
    reps: int | None = None,
    warmup: int = 2,
) -> list[PurgeRow]:
    """Section (b): eval-mode latency of the gated and the purged model; print the table.

    Args:
        models: Models of :data:`PURGE_SPECS`.
        densities: Fractions of active groups per gated layer.
        batches: Batch sizes.
        rounds: Interleaved timing rounds.
        reps: Forward passes per contender and round (default: about 64 images' worth for
            the MLP, 1 for the ResNet).
        warmup: Untimed passes per contender first.

    Returns:
        One row per (model, density, batch).
    """
    rows = []
    print(
        f"\n(b) inference latency, CPU, 1 thread, eval mode, median of {rounds} rounds "
        "(thread CPU time)"
    )
    print(
        f"{'model':<16}{'density':>8}{'batch':>6}{'gated ms':>10}{'purged ms':>11}{'speedup':>9}"
        f"  {'goal':<11}{'params gated -> purged':>26}{'MFLOPs gated -> purged':>26}"
    )
    for name in models:
        channels, side = PURGE_SPECS[name]
        torch.manual_seed(0)
        model = build_model(name, num_classes=10, in_channels=channels, image_size=side).eval()
        for target in densities:
            density = set_density(model, target)
            purged = purge(model)
            report = purge_report(model, (1, channels, side, side), purged)
            for batch in batches:
                x = torch.randn(batch, channels, side, side, generator=torch.Generator())
                n = reps if reps is not None else (max(1, 64 // batch) if name == "mlp" else 1)
                timing = interleaved(
                    {"gated": forward_pass(model, x), "purged": forward_pass(purged, x)},
                    rounds,
                    n,
                    warmup,
                )
                row = PurgeRow(
                    name,
                    target,
                    density,
                    batch,
                    timing,
                    (report.params_gated, report.params_purged),
                    (report.flops_gated * batch, report.flops_purged * batch),
                )
                rows.append(row)
                goal = "-"
                if target <= PURGE_GOAL_DENSITY:
                    verdict = "ok" if row.speedup >= PURGE_GOAL else "MISSED"
                    goal = f">= {PURGE_GOAL:g}x {verdict}"
                params = f"{row.params[0]:,} -> {row.params[1]:,}"
                flops = f"{_mega(row.flops[0])} -> {_mega(row.flops[1])}"
                print(
                    f"{name:<16}{density:>8.2f}{batch:>6}{1e3 * timing.median('gated'):>10.3f}"
                    f"{1e3 * timing.median('purged'):>11.3f}{row.speedup:>8.2f}x"
                    f"  {goal:<11}{params:>26}{flops:>26}",
                    flush=True,
                )
    return rows


# ---------------------------------------------------------------------- (c) GPU throughput
@dataclass(frozen=True)
class GpuRow:
    """Section (c) result for one model: images per second of each variant."""

    model: str
    batch: int
    images_per_s: dict[str, float]


def gpu_throughput(
    models: Sequence[str] = ("resnet18_cifar", "wrn28_10"),
    batch: int = 128,
    steps: int = 30,
    warmup: int = 5,
    variants: Sequence[str] = ("dense", "constrained"),
) -> list[GpuRow]:
    """Section (c): CUDA training throughput, bf16 autocast, channels_last; print the table.

    Prints ``CUDA not available: skipped`` and returns ``[]`` without a GPU.

    Args:
        models: Models of :data:`TRAIN_SPECS`.
        batch: Batch size.
        steps: Timed steps per variant.
        warmup: Untimed steps first (cuDNN autotuning, allocator warm-up).
        variants: Variants of :func:`make_train_step`; the last is compared with the first.

    Returns:
        One row per model.
    """
    print("\n(c) training throughput, CUDA, bf16 autocast, channels_last, synthetic data")
    if not torch.cuda.is_available():
        print("CUDA not available: skipped", flush=True)
        return []
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name()}, batch {batch}, {steps} timed steps")
    head = "".join(f"{v + ' img/s':>20}" for v in variants)
    print(f"{'model':<16}{head}{variants[-1] + ' cost':>20}  goal")
    rows = []
    for name in models:
        result: dict[str, float] = {}
        for variant in variants:
            step = make_train_step(
                name, variant, batch=batch, device="cuda", amp=torch.bfloat16, channels_last=True
            )
            for _ in range(warmup):
                step()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            result[variant] = batch * steps / (time.perf_counter() - start)
            del step
            torch.cuda.empty_cache()
        rows.append(GpuRow(name, batch, result))
        cells = "".join(f"{result[v]:>20,.0f}" for v in variants)
        cost = result[variants[0]] / result[variants[-1]]
        print(f"{name:<16}{cells}{cost:>19.2f}x  <= {TRAIN_GOAL}x", flush=True)
    return rows


# ---------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> None:
    """Parse the flags and run the chosen sections (all of them when none is chosen)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="(a) training-step overhead")
    parser.add_argument("--purge", action="store_true", help="(b) purged inference latency")
    parser.add_argument("--gpu", action="store_true", help="(c) CUDA training throughput")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--models", default=None, help="comma-separated models for (a), (b)")
    parser.add_argument(
        "--batch", type=int, default=None, help="(a) batch size for every model (default: each's)"
    )
    parser.add_argument("--gpu-batch", type=int, default=128)
    parser.add_argument("--gpu-steps", type=int, default=30)
    parser.add_argument(
        "--pin-heap",
        action="store_true",
        help="keep freed heap pages mapped (glibc mallopt) to take page faults out",
    )
    args = parser.parse_args(argv)
    every = not (args.train or args.purge or args.gpu)
    chosen = args.models.split(",") if args.models else None
    torch.set_num_threads(1)
    pinned = pin_glibc_heap() if args.pin_heap else False
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"glibc heap: {'pinned (--pin-heap)' if pinned else 'default'}"
    )
    if every or args.train:
        names = chosen or ["mlp", "lenet5", "resnet18_cifar"]
        train_overhead([m for m in names if m in TRAIN_SPECS], args.rounds, batch=args.batch)
    if every or args.purge:
        names = chosen or list(PURGE_SPECS)
        purge_speed([m for m in names if m in PURGE_SPECS], rounds=args.rounds)
    if every or args.gpu:
        gpu_throughput(batch=args.gpu_batch, steps=args.gpu_steps)


if __name__ == "__main__":
    main()
