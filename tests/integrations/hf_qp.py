"""The QP of lightning_qp.py as a Hugging Face ``Trainer`` run (shared by the HF tests).

Each dataset item is a whole pair of samples (t + e, t − e), so every batch, in whatever order
the ``Trainer``'s sampler draws it, poses the problem with the known solution x* = (0.5, 0.5, 0),
λ* = 0.3, μ* = 0.2 (see lightning_qp.py).
"""

from __future__ import annotations

import torch
from lightning_qp import QP, paired_dataset
from torch import nn
from transformers import TrainerCallback, TrainingArguments

import conopt
from conopt.integrations.hf import AccelerateConstrainedOptimizer, ConstrainedTrainer


class PairDataset(torch.utils.data.Dataset):
    """``pairs`` items, each ``{"a": (2, 3), "w": (2, 3)}``: one pair of samples."""

    def __init__(self, pairs: int = 32, mix: bool = False, dtype=torch.float32) -> None:
        a, w = paired_dataset(pairs, mix=mix).tensors
        self.a, self.w = a.reshape(pairs, 2, 3).to(dtype), w.reshape(pairs, 2, 3).to(dtype)

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, index: int) -> dict:
        return {"a": self.a[index], "w": self.w[index]}


class QPModel(nn.Module):
    """The primal variable x; its "loss" output is the QP's objective on the batch."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(3, dtype=dtype))

    def forward(self, a: torch.Tensor, w: torch.Tensor, return_loss: bool = True) -> dict:
        # return_loss: how the Trainer learns that the model returns a loss without labels.
        a, w = a.reshape(-1, 3), w.reshape(-1, 3)
        loss = 0.5 * (self.x - a).pow(2).sum(dim=1).mean()
        wx = w @ self.x
        self.wx_dtype = wx.dtype  # bfloat16 under the Trainer's autocast
        return {"loss": loss, "wx": wx, "x": self.x}


class QPTrainer(ConstrainedTrainer):
    """The QP's constraints, from the model's outputs, around the Trainer's loss."""

    def __init__(self, *args, problem: QP, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.problem = problem

    def problem_state(self, model, inputs, loss, outputs):
        x = outputs["x"]
        self.raw = {  # the values as computed (under the Trainer's autocast, if any)
            self.problem.budget: outputs["wx"].mean() - 1,
            self.problem.balance: x[0] - x[2] - 0.5,
        }
        return conopt.ProblemState(loss=loss, constraints=self.raw)


def constrained_optimizer(
    model, problem, lr=0.2, dual_lr=0.2, dual_momentum=0.0, adam=False, restarts=False
) -> AccelerateConstrainedOptimizer:
    primal = (torch.optim.Adam if adam else torch.optim.SGD)(model.parameters(), lr=lr)
    dual = torch.optim.SGD(
        problem.dual_parameters(), lr=dual_lr, momentum=dual_momentum, maximize=True
    )
    gda = conopt.optim.SimultaneousGDA(problem, primal=primal, dual=dual, dual_restarts=restarts)
    return AccelerateConstrainedOptimizer(gda)


def arguments(output_dir, **options) -> TrainingArguments:
    """CPU, constant learning rate, no clipping, no reporting, no saving unless asked."""
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_steps=10,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    settings.update(options)
    return TrainingArguments(**settings)


def qp_trainer(
    output_dir, optimizer_options=None, dataset=None, dtype=torch.float32, **options
) -> QPTrainer:
    model, problem = QPModel(dtype), QP().to(dtype)
    optimizer = constrained_optimizer(model, problem, **(optimizer_options or {}))
    return QPTrainer(
        model=model,
        args=arguments(output_dir, **options),
        train_dataset=dataset if dataset is not None else PairDataset(),
        optimizers=(optimizer, None),
        problem=problem,
    )


def multipliers(problem: QP) -> torch.Tensor:
    weights = [c.multiplier.weight.reshape(-1) for c in (problem.budget, problem.balance)]
    return torch.cat(weights).detach()


class MultiplierHistory(TrainerCallback):
    """Records the multipliers after each optimizer step, in ``history`` (a list of tensors)."""

    def __init__(self, problem: QP) -> None:
        self.problem = problem
        self.history: list[torch.Tensor] = []

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.history.append(multipliers(self.problem).clone())


def ddp_trainer(output_dir, steps: int, per_device_batch: int) -> tuple[QPTrainer, list]:
    """The run of the 2-process test (and its 1-process reference): float64, sequential batches
    of items that differ, dual momentum and restarts; and the multipliers' history it fills."""
    trainer = qp_trainer(
        output_dir,
        dict(dual_momentum=0.5, restarts=True),
        PairDataset(mix=True, dtype=torch.float64),
        dtype=torch.float64,
        max_steps=steps,
        per_device_train_batch_size=per_device_batch,
        train_sampling_strategy="sequential",
        ddp_find_unused_parameters=False,
    )
    recorder = MultiplierHistory(trainer.problem)
    trainer.add_callback(recorder)
    return trainer, recorder.history
