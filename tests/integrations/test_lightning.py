"""conopt.integrations.lightning through the real ``lightning.Trainer``, on CPU.

The problem is the QP of ``lightning_qp.py`` (known solution x* = (0.5, 0.5, 0), λ* = 0.3,
μ* = 0.2). Each test builds its own Trainer: no progress bar, no logger unless the test reads the
logs, checkpoints only where the test resumes from them.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning_qp import (
    LAMBDA,
    MU,
    SOLUTION,
    QPModule,
    assert_bitwise_equal,
    assert_float32_duals,
    loader,
    make_trainer,
    paired_dataset,
)
from torch.utils.data import DataLoader, TensorDataset

from conopt.integrations.lightning import LightningConstrainedOptimizer

HERE = Path(__file__).parent
OPTIMUM = torch.tensor([LAMBDA, MU])


def _subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


# ------------------------------------------------------------------------------- training
def test_the_qp_reaches_its_known_optimum_and_logs_the_kkt_report(tmp_path):
    module = QPModule()
    logger = CSVLogger(tmp_path, name="qp")
    trainer = make_trainer(max_epochs=100, logger=logger, log_every_n_steps=10)
    trainer.fit(module, loader(16))  # 4 batches an epoch: 400 steps

    report = module.reports[-1]
    assert trainer.global_step == report.step == 400
    kkt = report.kkt
    assert kkt.max_violation < 1e-5 and kkt.max_complementary_slackness < 1e-5
    assert kkt.stationarity < 1e-5 and kkt.min_multiplier > 0.29
    torch.testing.assert_close(module.x.detach(), SOLUTION, atol=1e-5, rtol=0)
    torch.testing.assert_close(module.multipliers(), OPTIMUM, atol=1e-5, rtol=0)

    with open(Path(logger.log_dir) / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("conopt/max_violation")]
    assert len(rows) == 40  # log_every_n_steps=10
    expected = {f"conopt/{k}": v for k, v in report.as_dict().items()}
    assert set(expected) <= set(rows[-1])
    for key in ("budget/multiplier", "balance/multiplier", "budget/value", "max_violation"):
        assert float(rows[-1][f"conopt/{key}"]) == pytest.approx(expected[f"conopt/{key}"])


class StepData(QPModule):
    """The data of a step is a pure function of (epoch, batch_idx): a shuffled epoch of mixed
    samples, so that every batch differs and a resumed run must see the same ones.

    Lightning resumes a mid-epoch checkpoint at the right ``batch_idx`` but restarts a plain
    DataLoader from its first batch (it warns that the loader is not resumable); choosing the
    data from ``batch_idx`` here keeps the comparison about conopt's state alone.
    """

    DATA = paired_dataset(mix=True).tensors

    def training_step(self, batch, batch_idx):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(self.current_epoch))
        rows = order[16 * batch_idx : 16 * (batch_idx + 1)]
        a, w = (t[rows] for t in self.DATA)
        return self.lagrangian(self.problem.evaluate(self.x, a, w))


def _step_run(ckpt_path=None, **trainer_options):
    module = StepData(lr=0.05, adam=True, dual_momentum=0.5, restarts=True)
    trainer = make_trainer(**trainer_options)
    batches = DataLoader(TensorDataset(torch.arange(4)), batch_size=1)  # 4 steps an epoch
    trainer.fit(module, batches, ckpt_path=ckpt_path)
    return module, trainer


def _flat_state(optimizer: LightningConstrainedOptimizer) -> list:
    state = optimizer.state_dict()["constrained"]
    tensors = []
    for o in [*state["primal"], state["dual"]]:
        for entry in o["state"].values():
            tensors += [v for v in entry.values() if isinstance(v, torch.Tensor)]
    return [*tensors, torch.tensor([state["step_count"], state["skipped_steps"]])]


@pytest.mark.parametrize("stop_at", [8, 10], ids=["end-of-epoch", "mid-epoch"])
def test_resuming_from_a_lightning_checkpoint_is_bit_for_bit(tmp_path, stop_at):
    whole, whole_trainer = _step_run(max_epochs=6)

    checkpoints = ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=stop_at, save_top_k=-1, filename="{step}"
    )
    _step_run(max_steps=stop_at, callbacks=[checkpoints], enable_checkpointing=True)
    path = tmp_path / f"step={stop_at}.ckpt"
    resumed, resumed_trainer = _step_run(max_epochs=6, ckpt_path=str(path))

    assert resumed_trainer.global_step == whole_trainer.global_step == 24
    assert torch.equal(resumed.x, whole.x)
    assert torch.equal(resumed.multipliers(), whole.multipliers())
    assert_bitwise_equal(
        _flat_state(resumed.constrained_optimizer), _flat_state(whole.constrained_optimizer)
    )


# ------------------------------------------------------------------- what Lightning brings
class RecordsDtypes(QPModule):
    def training_step(self, batch, batch_idx):
        a, w = batch
        state = self.problem.evaluate(self.x, a, w)
        self.raw_dtypes = {c.name: v.dtype for c, v in state.constraints.items()}
        return self.lagrangian(state)


def test_bf16_mixed_keeps_multipliers_and_constraint_values_float32():
    module = RecordsDtypes()
    make_trainer(max_epochs=30, precision="bf16-mixed").fit(module, loader(8))

    assert module.raw_dtypes["budget"] == torch.bfloat16  # autocast reached the constraint
    report = module.reports[-1]
    assert_float32_duals(module.problem, report)
    assert report.kkt.max_violation < 1e-3
    torch.testing.assert_close(module.multipliers(), OPTIMUM, atol=5e-3, rtol=0)


def test_gradient_accumulation_steps_like_the_whole_batch():
    def run(batch_size, accumulate):
        module = QPModule(dual_momentum=0.5, restarts=True)
        trainer = make_trainer(max_steps=12, accumulate_grad_batches=accumulate)
        trainer.fit(module, loader(batch_size, mix=True))
        return module

    whole, halves = run(16, 1), run(8, 2)
    torch.testing.assert_close(halves.x, whole.x, atol=1e-6, rtol=0)
    torch.testing.assert_close(halves.multipliers(), whole.multipliers(), atol=1e-6, rtol=0)
    assert len(halves.reports) == len(whole.reports) == 12
    for name, entry in whole.reports[-1].constraints.items():
        value = halves.reports[-1].constraints[name].strict_value
        torch.testing.assert_close(value, entry.strict_value, atol=1e-6, rtol=0)


def test_gradient_clipping_clips_the_model_and_not_the_multipliers():
    module = QPModule(lr=0.2, dual_lr=0.2)
    make_trainer(max_steps=1, gradient_clip_val=0.01).fit(module, loader(16))
    # SGD from x = 0 with the gradient clipped to norm 0.01.
    assert module.x.detach().norm().item() == pytest.approx(0.2 * 0.01, rel=1e-5)
    # The dual step is not clipped: g(0) = -1 projects to 0, and mu = 0.2 * h(0) = -0.1.
    torch.testing.assert_close(module.multipliers(), torch.tensor([0.0, -0.1]))


def test_a_grad_scaler_skips_both_players_on_overflow_and_training_recovers():
    module = QPModule()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)  # fp16 gradients overflow at first
    precision = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    trainer = make_trainer(max_epochs=40, plugins=[precision], gradient_clip_val=10.0)
    trainer.fit(module, loader(16))

    stepped = module.constrained_optimizer.constrained.step_count
    assert 0 < stepped < trainer.global_step  # some steps were skipped, for both players
    assert torch.isfinite(module.multipliers()).all()
    torch.testing.assert_close(module.multipliers(), OPTIMUM, atol=1e-2, rtol=0)
    assert module.reports[-1].kkt.max_violation < 1e-2


def test_a_learning_rate_scheduler_on_the_wrapper_drives_the_primal_optimizer():
    class Scheduled(QPModule):
        def configure_optimizers(self):
            optimizer = super().configure_optimizers()
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
            return {"optimizer": optimizer, "lr_scheduler": scheduler}

    module = Scheduled(lr=0.2, dual_lr=0.1)
    make_trainer(max_epochs=3).fit(module, loader(16))
    constrained = module.constrained_optimizer.constrained
    assert constrained.primal_optimizers[0].param_groups[0]["lr"] == pytest.approx(0.2 / 8)
    assert constrained.dual_optimizer.param_groups[0]["lr"] == 0.1


def test_manual_optimization_steps_both_players_through_the_wrapper():
    class Manual(QPModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            a, w = batch
            optimizer.zero_grad()
            self.manual_backward(self.lagrangian(self.problem.evaluate(self.x, a, w)))
            optimizer.step()
            self.log_report(self.constrained_optimizer.last_report)

    module = Manual()
    make_trainer(max_epochs=100).fit(module, loader(16))
    assert module.reports[-1].step == 400
    torch.testing.assert_close(module.x.detach(), SOLUTION, atol=1e-5, rtol=0)
    torch.testing.assert_close(module.multipliers(), OPTIMUM, atol=1e-5, rtol=0)


def test_ddp_keeps_the_multipliers_out_of_the_gradient_all_reduce():
    module = QPModule()
    names = set(module._ddp_params_and_buffers_to_ignore)
    assert {"problem.budget.multiplier.weight", "problem.balance.multiplier.weight"} <= names
    assert "x" not in names
    assert [p for p in module.primal_parameters()] == [module.x]


def test_two_ddp_processes_keep_identical_multipliers_equal_to_one_process(tmp_path):
    """strategy="ddp", 2 CPU processes (gloo), float64: ranks agree, and match 1 process."""
    script = HERE / "lightning_ddp_run.py"
    command = [sys.executable, str(script), str(tmp_path), "10", "8", "64-true"]
    done = subprocess.run(
        command, env=_subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["steps"] == 40
    assert torch.equal(ranks[0]["multipliers"], ranks[1]["multipliers"])
    assert torch.equal(ranks[0]["x"], ranks[1]["x"])

    single = QPModule(dual_momentum=0.5, restarts=True)
    make_trainer(max_epochs=10, precision="64-true").fit(single, loader(16))
    torch.testing.assert_close(ranks[0]["multipliers"], single.multipliers(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ranks[0]["x"], single.x.detach(), atol=1e-6, rtol=0)
    for name, entry in single.reports[-1].constraints.items():
        torch.testing.assert_close(ranks[0]["values"][name], entry.strict_value, atol=1e-6, rtol=0)
