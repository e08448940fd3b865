"""Per-step overhead of conopt against a hand-written Lagrangian loop and Cooper.

Model: MLP 20→64→64→1, batch 128, MSE loss, SGD on both players, one thread. Prints the median
microseconds per training step for:

* ``plain``: an unconstrained loop;
* ``hand-written``: a hand-written Lagrangian loop: one backward of ``loss + λ·g``, the
  multiplier stepped by ``torch.optim.SGD(maximize=True)`` and clamped at 0 (what conopt does,
  written by hand); ``hand (manual λ)``: the same with ``λ += η g`` written in place;
* ``conopt``: :class:`conopt.optim.SimultaneousGDA`;
* ``cooper``: Cooper's ``SimultaneousOptimizer`` (``cooper-optim`` 1.0.1, if installed);

first with the single constraint ``mean(prediction) <= -0.5``, then with 100 constraints
``prediction_i <= -0.5`` (the first 100 samples) declared once as one vector constraint and once
as 100 separate scalar constraints (unpacked, and packed by ``problem.pack_multipliers()``).
Run: ``python benchmarks/overhead.py [--steps 400]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import conopt

LR = 1e-3
DUAL_LR = 1e-2
NUM_CONSTRAINTS = 100


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(128, 20, generator=generator), torch.randn(128, 1, generator=generator)


def constraint_values(prediction: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "single":
        return prediction.mean() + 0.5
    return prediction[:NUM_CONSTRAINTS, 0] + 0.5


# --------------------------------------------------------------------------------- step makers
def plain_step(layout: str) -> Callable[[], None]:
    model, (x, y) = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=LR, foreach=True)

    def step() -> None:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    return step


def hand_written_step(layout: str, dual_optimizer: bool = True) -> Callable[[], None]:
    """A hand-written loop: one backward of ``loss + λ·g``, then both steps.

    λ is stepped by a torch SGD optimizer (``maximize=True``) and clamped, or
    (``dual_optimizer=False``) by an in-place ``λ += η g; λ = max(λ, 0)``.
    """
    model, (x, y) = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=LR, foreach=True)
    lam = torch.zeros(() if layout == "single" else (NUM_CONSTRAINTS,), requires_grad=True)
    dual = torch.optim.SGD([lam], lr=DUAL_LR, maximize=True, foreach=True)

    def step() -> None:
        opt.zero_grad()
        dual.zero_grad()
        prediction = model(x)
        g = constraint_values(prediction, layout)
        multiplier = lam if dual_optimizer else lam.detach()
        lagrangian = nn.functional.mse_loss(prediction, y) + (multiplier * g).sum()
        lagrangian.backward()
        opt.step()
        with torch.no_grad():
            if dual_optimizer:
                dual.step()
            else:
                lam.add_(g.detach(), alpha=DUAL_LR)
            lam.clamp_(min=0)

    return step


def conopt_step(layout: str, packed: bool = False) -> Callable[[], None]:
    """A SimultaneousGDA step; with ``packed``, the multipliers share one parameter."""
    model, (x, y) = make_model(), make_data()

    class Problem(conopt.ConstrainedProblem):
        def __init__(self) -> None:
            super().__init__()
            if layout == "separate":
                self.each = nn.ModuleList(conopt.Constraint("<=") for _ in range(NUM_CONSTRAINTS))
            else:
                shape = () if layout == "single" else NUM_CONSTRAINTS
                self.bound = conopt.Constraint("<=", shape=shape)

        def evaluate(self) -> conopt.ProblemState:
            prediction = model(x)
            g = constraint_values(prediction, layout)
            if layout == "separate":
                constraints = dict(zip(self.each, g.unbind(), strict=True))
            else:
                constraints = {self.bound: g}
            return conopt.ProblemState(nn.functional.mse_loss(prediction, y), constraints)

    problem = Problem()
    if packed:
        problem.pack_multipliers()
    optimizer = conopt.optim.SimultaneousGDA(
        problem,
        primal=torch.optim.SGD(model.parameters(), lr=LR, foreach=True),
        dual=torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR, maximize=True, foreach=True),
    )
    return lambda: optimizer.step(problem.evaluate) and None


def cooper_step(layout: str) -> Callable[[], None] | None:
    try:
        import cooper
    except ImportError:
        return None
    model, (x, y) = make_model(), make_data()
    ineq = cooper.ConstraintType.INEQUALITY

    class Problem(cooper.ConstrainedMinimizationProblem):
        def __init__(self) -> None:
            super().__init__()
            if layout == "separate":
                self.each = [
                    cooper.Constraint(ineq, multiplier=cooper.multipliers.DenseMultiplier(1))
                    for _ in range(NUM_CONSTRAINTS)
                ]
                for i, constraint in enumerate(self.each):
                    setattr(self, f"c{i}", constraint)
            else:
                count = 1 if layout == "single" else NUM_CONSTRAINTS
                multiplier = cooper.multipliers.DenseMultiplier(count)
                self.bound = cooper.Constraint(ineq, multiplier=multiplier)

        def compute_cmp_state(self) -> cooper.CMPState:
            prediction = model(x)
            g = constraint_values(prediction, layout).reshape(-1)
            if layout == "separate":
                observed = {
                    c: cooper.ConstraintState(violation=v.reshape(1))
                    for c, v in zip(self.each, g.unbind(), strict=True)
                }
            else:
                observed = {self.bound: cooper.ConstraintState(violation=g)}
            loss = nn.functional.mse_loss(prediction, y)
            return cooper.CMPState(loss=loss, observed_constraints=observed)

    problem = Problem()
    optimizer = cooper.optim.SimultaneousOptimizer(
        problem,
        primal_optimizers=torch.optim.SGD(model.parameters(), lr=LR, foreach=True),
        dual_optimizers=torch.optim.SGD(
            problem.dual_parameters(), lr=DUAL_LR, maximize=True, foreach=True
        ),
    )
    return lambda: optimizer.roll() and None


# ------------------------------------------------------------------------------------ timing
def median_microseconds(steps: dict[str, Callable[[], None]], count: int, rounds: int) -> dict:
    """Interleave the contenders in rounds; median µs of this thread's CPU time per step.

    Thread CPU time (with one torch thread) is insensitive to other processes on the machine,
    unlike wall-clock time.
    """
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        for _ in range(20):
            step()
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(count // rounds):
                start = time.thread_time()
                step()
                samples[name].append(time.thread_time() - start)
    return {name: 1e6 * statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="timed steps per contender")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)

    single = {
        "plain": plain_step("single"),
        "hand-written": hand_written_step("single"),
        "hand (manual λ)": hand_written_step("single", dual_optimizer=False),
    }
    single["conopt"] = conopt_step("single")
    if (cooper := cooper_step("single")) is not None:
        single["cooper"] = cooper
    single_us = median_microseconds(single, args.steps, args.rounds)
    print("One constraint mean(prediction) <= -0.5 (median µs of CPU time per step)")
    for name, us in single_us.items():
        print(f"  {name:<14}{us:8.1f} µs   {us / single_us['hand-written']:5.2f}× hand-written")

    many = {
        "hand-written vector": hand_written_step("vector"),
        "conopt vector": conopt_step("vector"),
        "conopt 100 scalars": conopt_step("separate"),
        "conopt 100 packed": conopt_step("separate", packed=True),
    }
    if cooper_step("vector") is not None:
        many["cooper vector"] = cooper_step("vector")  # type: ignore[assignment]
        many["cooper 100 scalars"] = cooper_step("separate")  # type: ignore[assignment]
    many_us = median_microseconds(many, args.steps, args.rounds)
    print(f"\n{NUM_CONSTRAINTS} constraints prediction_i <= -0.5 (median µs of CPU time per step)")
    for name, us in many_us.items():
        print(f"  {name:<22}{us:8.1f} µs")
    print("\nRatios")
    print(
        f"  conopt / hand-written (one constraint):   "
        f"{single_us['conopt'] / single_us['hand-written']:.2f}  (goal <= 1.10)"
    )
    print(
        f"  conopt 100 scalars / conopt vector:       "
        f"{many_us['conopt 100 scalars'] / many_us['conopt vector']:.2f}  (goal <= 1.50)"
    )
    print(
        f"  conopt 100 packed scalars / conopt vector:"
        f"{many_us['conopt 100 packed'] / many_us['conopt vector']:.2f}  (goal <= 1.50)"
    )
    print(
        f"  conopt / hand (manual λ):                 "
        f"{single_us['conopt'] / single_us['hand (manual λ)']:.2f}"
    )
    if "cooper" in single_us:
        print(
            f"  cooper / hand-written (one constraint):   "
            f"{single_us['cooper'] / single_us['hand-written']:.2f}"
        )
        print(
            f"  cooper 100 scalars / cooper vector:       "
            f"{many_us['cooper 100 scalars'] / many_us['cooper vector']:.2f}"
        )


if __name__ == "__main__":
    main()
