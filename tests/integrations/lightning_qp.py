"""A quadratic program with a known optimum, as a LightningModule (shared by the tests and the
2-process DDP script).

    minimize   mean_i ½‖x − a_i‖²
    subject to mean_i w_iᵀx − 1 ≤ 0      (data-dependent: reduction="mean")
               x₀ − x₂ − 0.5 = 0         (parameters only: reduction=None)

The samples come in pairs (t + e, t − e), so the mean of every batch that holds whole pairs is
ā = (1, 0.8, −0.2) and w̄ = (1, 1, 0): every such batch poses the same problem, whose solution is
x* = (0.5, 0.5, 0) with multipliers λ* = 0.3 (inequality) and μ* = 0.2 (equality). Under DDP,
Lightning's DistributedSampler gives the even samples (t + e) to rank 0 and the odd ones (t − e) to
rank 1: the ranks' constraint values differ, and only their all-reduced mean is the batch's.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import conopt
from conopt.integrations.lightning import ConstrainedLightningModule, LightningConstrainedOptimizer

TARGET = torch.tensor([1.0, 0.8, -0.2])
NORMAL = torch.tensor([1.0, 1.0, 0.0])
SOLUTION = torch.tensor([0.5, 0.5, 0.0])
LAMBDA, MU = 0.3, 0.2


def paired_dataset(pairs: int = 32, noise: float = 0.3, seed: int = 0, mix: bool = False):
    """``2 * pairs`` samples (a, w) in pairs (mean + e, mean − e); ``mix``: in a random order
    (then batches differ from each other, and only the whole set's mean is the problem's)."""
    generator = torch.Generator().manual_seed(seed)
    e_a = noise * torch.randn(pairs, 3, generator=generator)
    e_w = noise * torch.randn(pairs, 3, generator=generator)
    a = torch.stack([TARGET + e_a, TARGET - e_a], dim=1).reshape(-1, 3)
    w = torch.stack([NORMAL + e_w, NORMAL - e_w], dim=1).reshape(-1, 3)
    if mix:
        order = torch.randperm(2 * pairs, generator=generator)
        a, w = a[order], w[order]
    return TensorDataset(a, w)


def loader(batch_size: int, pairs: int = 32, mix: bool = False) -> DataLoader:
    return DataLoader(paired_dataset(pairs, mix=mix), batch_size=batch_size, shuffle=False)


class QP(conopt.ConstrainedProblem):
    def __init__(self) -> None:
        super().__init__()
        self.budget = conopt.Constraint("<=")
        self.balance = conopt.Constraint("==", reduction=None)

    def evaluate(self, x, a, w):
        return conopt.ProblemState(
            loss=0.5 * (x - a).pow(2).sum(dim=1).mean(),
            constraints={self.budget: (w @ x).mean() - 1, self.balance: x[0] - x[2] - 0.5},
        )


class QPModule(ConstrainedLightningModule):
    def __init__(self, lr=0.2, dual_lr=0.2, dual_momentum=0.0, adam=False, restarts=False):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(3))
        self.problem = QP()
        self.settings = dict(
            lr=lr, dual_lr=dual_lr, dual_momentum=dual_momentum, adam=adam, restarts=restarts
        )
        self.reports = []

    def training_step(self, batch, batch_idx):
        a, w = batch
        return self.lagrangian(self.problem.evaluate(self.x, a, w))

    def configure_optimizers(self):
        s = self.settings
        primal_class = torch.optim.Adam if s["adam"] else torch.optim.SGD
        gda = conopt.optim.SimultaneousGDA(
            self.problem,
            primal=primal_class(self.primal_parameters(), lr=s["lr"]),
            dual=torch.optim.SGD(
                self.problem.dual_parameters(),
                lr=s["dual_lr"],
                momentum=s["dual_momentum"],
                maximize=True,
            ),
            dual_restarts=s["restarts"],
        )
        return LightningConstrainedOptimizer(gda)

    def log_report(self, report):
        self.reports.append(report)
        super().log_report(report)

    def multipliers(self):
        weights = [
            c.multiplier.weight.reshape(-1) for c in (self.problem.budget, self.problem.balance)
        ]
        return torch.cat(weights).detach()


def assert_float32_duals(problem: conopt.ConstrainedProblem, report) -> None:
    """The multipliers, and the report's Lagrangian, values and multipliers, are float32."""
    for constraint in problem.constraints():
        assert constraint.multiplier.weight.dtype == torch.float32
    assert report.lagrangian.dtype == torch.float32
    for entry in report.constraints.values():
        assert {entry.value.dtype, entry.strict_value.dtype, entry.multiplier.dtype} == {
            torch.float32
        }


def assert_bitwise_equal(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    """The two lists hold equal tensors, bit for bit, pair by pair (and are as long)."""
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def make_trainer(**options) -> pl.Trainer:
    """A CPU Trainer for the tests: no progress bar, logger, checkpoints or summary by default."""
    settings = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    settings.update(options)
    return pl.Trainer(**settings)
