"""The QP of lightning_qp.py trained by a plain ``accelerate`` loop (shared by the accelerate
tests and the 2-process script).

The loop is the one the how-to shows: ``accelerator.prepare`` the model, the
``AccelerateConstrainedOptimizer`` and the loader; ``accelerator.accumulate``;
``accelerator.backward(constrained.lagrangian(state))``; ``optimizer.step()``;
``optimizer.zero_grad()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from lightning_qp import QP, paired_dataset
from torch import nn
from torch.utils.data import DataLoader

import conopt
from conopt.diagnostics import StepReport
from conopt.integrations.accelerate import AccelerateConstrainedOptimizer


class QPNet(nn.Module):
    """The primal variable x; the forward pass returns the loss and x."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(3, dtype=dtype))

    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 0.5 * (self.x - a).pow(2).sum(dim=1).mean(), self.x


@dataclass
class Run:
    """What a run leaves: the model, problem, optimizers, accelerator and reports."""

    accelerator: Accelerator
    net: QPNet
    problem: QP
    constrained: AccelerateConstrainedOptimizer
    optimizer: torch.optim.Optimizer  # what accelerator.prepare returned
    loader: DataLoader
    reports: list[StepReport] = field(default_factory=list)
    raw_dtypes: set = field(default_factory=set)

    def multipliers(self) -> torch.Tensor:
        weights = [
            c.multiplier.weight.reshape(-1) for c in (self.problem.budget, self.problem.balance)
        ]
        return torch.cat(weights).detach()

    def epoch(self) -> None:
        """One epoch of the how-to's loop (constraints under the accelerator's autocast)."""
        for a, w in self.loader:
            with self.accelerator.accumulate(self.net):
                loss, x = self.net(a)
                with self.accelerator.autocast():
                    budget = (w @ x).mean() - 1
                self.raw_dtypes.add(budget.dtype)
                state = conopt.ProblemState(
                    loss=loss,
                    constraints={
                        self.problem.budget: budget,
                        self.problem.balance: x[0] - x[2] - 0.5,
                    },
                )
                self.accelerator.backward(self.constrained.lagrangian(state))
                self.optimizer.step()
                self.optimizer.zero_grad()
                if self.accelerator.sync_gradients:
                    self.reports.append(self.constrained.last_report)


def reset_accelerate() -> None:
    """Forget the process's accelerate state, so that a new Accelerator may differ."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def make_run(
    batch_size: int,
    accumulation: int = 1,
    mixed_precision: str = "no",
    dtype: torch.dtype = torch.float32,
    mix: bool = True,
    adam: bool = False,
    dual_momentum: float = 0.5,
    restarts: bool = True,
) -> Run:
    """The model, problem, optimizer and loader, prepared by a new CPU Accelerator."""
    accelerator = Accelerator(
        cpu=True, mixed_precision=mixed_precision, gradient_accumulation_steps=accumulation
    )
    net, problem = QPNet(dtype), QP().to(dtype)
    primal = (torch.optim.Adam if adam else torch.optim.SGD)(
        net.parameters(), lr=0.1 if adam else 0.2
    )
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.2, momentum=dual_momentum, maximize=True)
    gda = conopt.optim.SimultaneousGDA(problem, primal=primal, dual=dual, dual_restarts=restarts)
    constrained = AccelerateConstrainedOptimizer(gda)
    a, w = paired_dataset(mix=mix).tensors
    dataset = torch.utils.data.TensorDataset(a.to(dtype), w.to(dtype))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    net, optimizer, loader = accelerator.prepare(net, constrained, loader)
    return Run(accelerator, net, problem, constrained, optimizer, loader)


def flat_state(optimizer: AccelerateConstrainedOptimizer) -> list[torch.Tensor]:
    """Every tensor of ``optimizer.state_dict()`` (multipliers, both players' states, step
    counters), in a fixed order: for bit-for-bit comparisons of resumed runs."""
    state = optimizer.state_dict()
    tensors = list(state["problem"].values())
    for o in [*state["constrained"]["primal"], state["constrained"]["dual"]]:
        for entry in o["state"].values():
            tensors += [v for v in entry.values() if isinstance(v, torch.Tensor)]
    return [*tensors, torch.tensor(state["constrained"]["step_count"])]
