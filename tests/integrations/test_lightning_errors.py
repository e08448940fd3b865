"""conopt.integrations.lightning: bad use gets an error that says what is wrong and what to do."""

import lightning.pytorch as pl
import pytest
import torch
from fresh_python import import_error_without
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_qp import QP, QPModule, loader, make_trainer

import conopt
from conopt.integrations.lightning import LightningConstrainedOptimizer


def _fit(module, **options):
    make_trainer(max_steps=2, **options).fit(module, loader(16))


# ------------------------------------------------------------------ optimizer configuration
def test_a_bare_conopt_optimizer_from_configure_optimizers_is_refused():
    class Bare(QPModule):
        def configure_optimizers(self):
            return {"optimizer": super().configure_optimizers().constrained}

    with pytest.raises(TypeError, match=r"returned conopt's SimultaneousGDA.*dual step"):
        _fit(Bare())


def test_a_plain_torch_optimizer_that_would_skip_the_dual_step_is_refused():
    class PrimalOnly(QPModule):
        def configure_optimizers(self):
            return torch.optim.SGD(self.primal_parameters(), lr=0.1)

    with pytest.raises(RuntimeError, match=r"\['SGD'\].*never take their dual step"):
        _fit(PrimalOnly())


def test_a_dual_optimizer_without_maximize_is_refused():
    class Minimizing(QPModule):
        def configure_optimizers(self):
            return LightningConstrainedOptimizer(
                conopt.optim.SimultaneousGDA(
                    self.problem,
                    primal=torch.optim.SGD(self.primal_parameters(), lr=0.1),
                    dual=torch.optim.SGD(self.problem.dual_parameters(), lr=0.1),
                )
            )

    with pytest.raises(TypeError, match="maximize=True"):
        _fit(Minimizing())


def test_an_optimizer_without_an_open_step_is_refused():
    problem = QP()
    x = torch.nn.Parameter(torch.zeros(3))
    alternating = conopt.optim.AlternatingGDA(
        problem,
        primal=torch.optim.SGD([x], lr=0.1),
        dual=torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
    )
    with pytest.raises(TypeError, match=r"AlternatingGDA.*use conopt\.optim\.SimultaneousGDA"):
        LightningConstrainedOptimizer(alternating)
    with pytest.raises(TypeError, match="got SGD"):
        LightningConstrainedOptimizer(torch.optim.SGD([x], lr=0.1))


def test_a_group_holding_a_multiplier_is_refused():
    module = QPModule()
    optimizer = module.configure_optimizers()
    with pytest.raises(ValueError, match="dual optimizer alone"):
        optimizer.add_param_group({"params": list(module.problem.dual_parameters())})


def test_a_problem_outside_the_module_is_refused():
    class Detached(QPModule):
        def configure_optimizers(self):
            problem = QP()  # not an attribute of the module: not moved, not saved
            return LightningConstrainedOptimizer(
                conopt.optim.SimultaneousGDA(
                    problem,
                    primal=torch.optim.SGD(self.primal_parameters(), lr=0.1),
                    dual=torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
                )
            )

    with pytest.raises(RuntimeError, match=r"not a sub-module of Detached.*self.problem"):
        _fit(Detached())


def test_a_training_step_that_returns_its_own_loss_is_refused():
    class OwnLoss(QPModule):
        def training_step(self, batch, batch_idx):
            a, w = batch
            return self.problem.evaluate(self.x, a, w).loss

    with pytest.raises(RuntimeError, match=r"training_step must return self.lagrangian\(state\)"):
        _fit(OwnLoss())


def test_the_lagrangian_outside_training_is_refused():
    class Validated(QPModule):
        def validation_step(self, batch, batch_idx):
            a, w = batch
            return self.lagrangian(self.problem.evaluate(self.x, a, w))

    with pytest.raises(RuntimeError, match="is for training_step"):
        make_trainer(max_steps=2).fit(Validated(), loader(16), loader(16))


# ---------------------------------------------------------------------------- checkpoints
class Unconstrained(pl.LightningModule):
    """The same model before constraints were added: its checkpoints hold no multipliers."""

    def __init__(self):
        super().__init__()
        self.x = torch.nn.Parameter(torch.zeros(3))

    def training_step(self, batch, batch_idx):
        a, _ = batch
        return 0.5 * (self.x - a).pow(2).sum(dim=1).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_resuming_from_a_checkpoint_without_multipliers_is_refused(tmp_path):
    trainer = make_trainer(max_steps=1)
    trainer.fit(Unconstrained(), loader(16))
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(KeyError, match=r"no multipliers for \['problem.balance.multiplier"):
        make_trainer(max_steps=2).fit(QPModule(), loader(16), ckpt_path=tmp_path / "plain.ckpt")


def test_resuming_from_a_weights_only_checkpoint_is_refused(tmp_path):
    weights_only = ModelCheckpoint(dirpath=tmp_path, save_weights_only=True, filename="w")
    make_trainer(max_steps=1, callbacks=[weights_only], enable_checkpointing=True).fit(
        QPModule(), loader(16)
    )
    with pytest.raises(KeyError, match="no dual optimizer state"):
        make_trainer(max_steps=2).fit(QPModule(), loader(16), ckpt_path=tmp_path / "w.ckpt")


def test_loading_a_plain_optimizer_state_into_the_wrapper_is_refused():
    optimizer = QPModule().configure_optimizers()
    plain = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1).state_dict()
    with pytest.raises(ValueError, match=r"no conopt dual optimizer state.*'param_groups'"):
        optimizer.load_state_dict(plain)


def test_loading_weights_for_evaluation_needs_no_duals(tmp_path):
    trainer = make_trainer(max_steps=1)
    trainer.fit(QPModule(), loader(16))
    trainer.save_checkpoint(tmp_path / "qp.ckpt")
    checkpoint = torch.load(tmp_path / "qp.ckpt", weights_only=False)
    checkpoint.pop("optimizer_states")
    torch.save(checkpoint, tmp_path / "weights.ckpt")
    restored = QPModule.load_from_checkpoint(tmp_path / "weights.ckpt")
    assert torch.equal(restored.x, checkpoint["state_dict"]["x"])


# -------------------------------------------------------------------------------- imports
def test_the_integration_names_its_extra_when_lightning_is_missing():
    message = import_error_without("lightning", "conopt.integrations.lightning")
    assert "pip install torch-conopt[lightning]" in message
