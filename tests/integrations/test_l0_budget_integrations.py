"""A sparsity budget added to a Lightning module and to a Hugging Face Trainer run.

The same few lines in both: ``l0.sparsify`` the model, build an ``l0.SparsityProblem`` on it,
and train on ``problem.constrained_state(loss)`` around the framework's own loss. A tiny gated
MLP, a few steps: the constraint enters the step's report and its multiplier moves.
"""

import pytest
import torch
import torch.nn.functional as F
from hf_qp import arguments
from lightning_qp import make_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import conopt
import l0_sparsity as l0
from conopt.integrations.hf import AccelerateConstrainedOptimizer, ConstrainedTrainer
from conopt.integrations.lightning import ConstrainedLightningModule, LightningConstrainedOptimizer

torch.set_num_threads(1)


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, 8, generator=generator)
    return inputs, (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0).long()


def _gated_mlp() -> nn.Module:
    torch.manual_seed(0)
    return l0.sparsify(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))


def _optimizer(primal_parameters, problem) -> conopt.optim.SimultaneousGDA:
    return conopt.optim.SimultaneousGDA(
        problem,
        primal=torch.optim.Adam(primal_parameters, lr=1e-2),
        dual=torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True),
    )


class SparseClassifier(ConstrainedLightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _gated_mlp()
        self.problem = l0.SparsityProblem(self.net, target=0.2)
        self.reports = []

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        loss = F.cross_entropy(self.net(inputs), labels)
        return self.lagrangian(self.problem.constrained_state(loss))

    def configure_optimizers(self):
        return LightningConstrainedOptimizer(_optimizer(self.primal_parameters(), self.problem))

    def log_report(self, report):
        self.reports.append(report)
        super().log_report(report)


def test_a_density_budget_in_a_lightning_module():
    module = SparseClassifier()
    trainer = make_trainer(max_steps=8)
    trainer.fit(module, DataLoader(TensorDataset(*_data()), batch_size=16))

    assert len(module.reports) == 8
    first, last = module.reports[0], module.reports[-1]
    assert set(last.constraints) == {"density"}
    assert first.constraints["density"].strict_value > 0  # density 0.5 > 0.2 at the start
    assert module.problem.density.multiplier.weight.item() > 0.0  # the multiplier moved
    assert "conopt/density/multiplier" in trainer.callback_metrics


class Batches(Dataset):
    def __init__(self) -> None:
        self.inputs, self.labels = _data()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"inputs": self.inputs[index], "labels": self.labels[index]}


class HFStyleClassifier(nn.Module):
    """A classifier as the Trainer expects one: keyword inputs, a loss among its outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _gated_mlp()

    def forward(self, inputs, labels=None):
        logits = self.net(inputs)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class SparseTrainer(ConstrainedTrainer):
    def __init__(self, *args, sparsity: l0.SparsityProblem, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sparsity = sparsity

    def problem_state(self, model, inputs, loss, outputs):
        return self.sparsity.constrained_state(loss)


@pytest.mark.parametrize("budget", ["density", "macs"])
def test_a_sparsity_budget_in_a_trainer_run(tmp_path, budget):
    model = HFStyleClassifier()
    if budget == "density":
        sparsity = l0.SparsityProblem(model.net, target=0.2)
    else:
        sparsity = l0.SparsityProblem(model.net, macs_target=0.2, example_input=(1, 8))
    optimizer = AccelerateConstrainedOptimizer(_optimizer(model.parameters(), sparsity))
    trainer = SparseTrainer(
        model=model,
        args=arguments(tmp_path, max_steps=8, per_device_train_batch_size=16, logging_steps=4),
        train_dataset=Batches(),
        optimizers=(optimizer, None),
        sparsity=sparsity,
    )
    trainer.train()

    report = trainer.last_report
    assert report.step == 8 and set(report.constraints) == {budget}
    assert getattr(sparsity, budget).multiplier.weight.item() > 0.0  # the multiplier moved
    logged = [e for e in trainer.state.log_history if f"conopt/{budget}/multiplier" in e]
    assert [e["step"] for e in logged] == [4, 8]
