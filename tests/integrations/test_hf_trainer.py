"""conopt.integrations.hf through the real ``transformers.Trainer``, on CPU.

The problem is the QP of ``lightning_qp.py`` (known solution x* = (0.5, 0.5, 0), λ* = 0.3,
μ* = 0.2), posed by every batch of ``hf_qp.PairDataset`` (see ``hf_qp.py``).
"""

import pytest
import torch
from accelerate_qp import flat_state
from fresh_python import import_error_without
from hf_qp import (
    PairDataset,
    QPModel,
    QPTrainer,
    arguments,
    constrained_optimizer,
    multipliers,
    qp_trainer,
)
from lightning_qp import LAMBDA, MU, QP, SOLUTION, assert_bitwise_equal, assert_float32_duals
from transformers import Trainer

import conopt
from conopt.integrations.hf import AccelerateConstrainedOptimizer, ConstrainedTrainer

torch.set_num_threads(1)
OPTIMUM = torch.tensor([LAMBDA, MU])


# ------------------------------------------------------------------------------- training
def test_the_qp_reaches_its_known_optimum_and_logs_the_kkt_report(tmp_path):
    trainer = qp_trainer(tmp_path, max_steps=400)  # 4 batches an epoch
    trainer.train()

    report = trainer.last_report
    assert trainer.state.global_step == report.step == 400
    kkt = report.kkt
    assert kkt.max_violation < 1e-5 and kkt.max_complementary_slackness < 1e-5
    assert kkt.stationarity < 1e-5 and kkt.min_multiplier > 0.29
    torch.testing.assert_close(trainer.model.x.detach(), SOLUTION, atol=1e-5, rtol=0)
    torch.testing.assert_close(multipliers(trainer.problem), OPTIMUM, atol=1e-5, rtol=0)

    logged = [entry for entry in trainer.state.log_history if "conopt/max_violation" in entry]
    assert [entry["step"] for entry in logged] == list(range(10, 401, 10))  # logging_steps=10
    for key, value in report.as_dict().items():
        assert logged[-1][f"conopt/{key}"] == pytest.approx(value)


def test_evaluation_reports_the_plain_loss(tmp_path):
    trainer = qp_trainer(tmp_path, max_steps=1)
    metrics = trainer.evaluate(PairDataset())
    a = PairDataset().a.reshape(-1, 3)
    assert metrics["eval_loss"] == pytest.approx(0.5 * a.pow(2).sum(dim=1).mean().item())
    assert trainer.last_report is None  # evaluation took no step and built no Lagrangian


@pytest.mark.parametrize("stop_at", [8, 10], ids=["end-of-epoch", "mid-epoch"])
def test_resuming_from_a_trainer_checkpoint_is_bit_for_bit(tmp_path, stop_at):
    options = dict(adam=True, lr=0.05, dual_momentum=0.5, restarts=True)

    def run(directory, **args):
        trainer = qp_trainer(tmp_path / directory, options, PairDataset(mix=True), **args)
        return trainer

    whole = run("whole", max_steps=24)
    whole.train()
    stopped = run("stopped", max_steps=stop_at, save_strategy="steps", save_steps=stop_at)
    stopped.train()
    resumed = run("stopped", max_steps=24)
    resumed.train(resume_from_checkpoint=str(tmp_path / "stopped" / f"checkpoint-{stop_at}"))

    assert resumed.state.global_step == whole.state.global_step == 24
    assert resumed.last_report.step == 24
    assert torch.equal(resumed.model.x, whole.model.x)
    assert torch.equal(multipliers(resumed.problem), multipliers(whole.problem))
    assert_bitwise_equal(
        flat_state(resumed.constrained_optimizer), flat_state(whole.constrained_optimizer)
    )


def test_gradient_accumulation_steps_like_the_whole_batch(tmp_path):
    def run(batch_size, accumulate):
        options = dict(dual_momentum=0.5, restarts=True)
        trainer = qp_trainer(
            tmp_path / f"{batch_size}",
            options,
            PairDataset(mix=True),
            max_steps=12,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulate,
        )
        trainer.train()
        return trainer

    whole, halves = run(8, 1), run(4, 2)
    assert halves.last_report.step == whole.last_report.step == 12
    torch.testing.assert_close(halves.model.x, whole.model.x, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        multipliers(halves.problem), multipliers(whole.problem), atol=1e-6, rtol=0
    )
    for name, entry in whole.last_report.constraints.items():
        value = halves.last_report.constraints[name].strict_value
        torch.testing.assert_close(value, entry.strict_value, atol=1e-6, rtol=0)


def test_bf16_keeps_multipliers_and_constraint_values_float32(tmp_path):
    trainer = qp_trainer(tmp_path, max_steps=120, bf16=True)
    trainer.train()

    assert trainer.model.wx_dtype == torch.bfloat16  # autocast reached the forward pass
    # accelerate returns the forward's outputs in float32 (convert_outputs_to_fp32).
    assert trainer.raw[trainer.problem.budget].dtype == torch.float32
    report = trainer.last_report
    assert_float32_duals(trainer.problem, report)
    assert report.kkt.max_violation < 1e-2
    torch.testing.assert_close(multipliers(trainer.problem), OPTIMUM, atol=1e-2, rtol=0)


def test_gradient_clipping_clips_the_model_and_not_the_multipliers(tmp_path):
    trainer = qp_trainer(tmp_path, max_steps=1, max_grad_norm=0.01)
    trainer.train()
    # SGD from x = 0 with the gradient clipped to norm 0.01.
    assert trainer.model.x.detach().norm().item() == pytest.approx(0.2 * 0.01, rel=1e-5)
    # The dual step is not clipped: g(0) = -1 projects to 0, and mu = 0.2 * h(0) = -0.1.
    torch.testing.assert_close(multipliers(trainer.problem), torch.tensor([0.0, -0.1]))


# ------------------------------------------------------------------------------ bad use
def _trainer_with(tmp_path, optimizer) -> None:
    QPTrainer(
        model=QPModel(),
        args=arguments(tmp_path),
        train_dataset=PairDataset(),
        optimizers=(optimizer, None),
        problem=QP(),
    )


def test_a_trainer_without_the_constrained_optimizer_is_refused(tmp_path):
    with pytest.raises(TypeError, match=r"QPTrainer needs optimizers=.*got no optimizer"):
        _trainer_with(tmp_path, None)
    plain = torch.optim.SGD(QPModel().parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"QPTrainer needs optimizers=.*got SGD"):
        _trainer_with(tmp_path, plain)


def test_a_bare_conopt_optimizer_is_refused(tmp_path):
    model, problem = QPModel(), QP()
    gda = conopt.optim.SimultaneousGDA(
        problem,
        primal=torch.optim.SGD(model.parameters(), lr=0.1),
        dual=torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
    )
    with pytest.raises(TypeError, match=r"SimultaneousGDA itself.*dual step would be skipped"):
        _trainer_with(tmp_path, gda)


def test_a_dual_optimizer_that_does_not_maximize_is_refused():
    model, problem = QPModel(), QP()
    with pytest.raises(TypeError, match="must be built with maximize=True"):
        conopt.optim.SimultaneousGDA(
            problem,
            primal=torch.optim.SGD(model.parameters(), lr=0.1),
            dual=torch.optim.SGD(problem.dual_parameters(), lr=0.1),
        )


def test_a_compute_loss_that_returns_its_own_loss_is_refused(tmp_path):
    class OwnLoss(QPTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    model, problem = QPModel(), QP()
    trainer = OwnLoss(
        model=model,
        args=arguments(tmp_path, max_steps=2),
        train_dataset=PairDataset(),
        optimizers=(constrained_optimizer(model, problem), None),
        problem=problem,
    )
    with pytest.raises(RuntimeError, match=r"no Lagrangian to step on"):
        trainer.train()


def test_resuming_from_a_model_only_checkpoint_is_refused(tmp_path):
    qp_trainer(
        tmp_path, max_steps=2, save_strategy="steps", save_steps=2, save_only_model=True
    ).train()
    assert (tmp_path / "checkpoint-2").is_dir()
    with pytest.raises(FileNotFoundError, match=r"checkpoint-2 has no optimizer.pt"):
        qp_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=True)


def test_resuming_from_an_unconstrained_checkpoint_is_refused(tmp_path):
    model = QPModel()
    plain = Trainer(
        model=model,
        args=arguments(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
        train_dataset=PairDataset(),
        optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None),
    )
    plain.train()
    with pytest.raises(ValueError, match=r"holds no conopt multipliers.*'param_groups'"):
        qp_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=True)


# -------------------------------------------------------------------------------- imports
def test_the_integration_names_its_extra_when_transformers_is_missing():
    message = import_error_without("transformers", "conopt.integrations.hf")
    assert "pip install torch-conopt[hf]" in message


# --------------------------------------------------------------- a real transformers model
class Sentences(torch.utils.data.Dataset):
    """Random token ids with labels: enough for a tiny BERT to take a few steps."""

    def __init__(self, count: int = 32) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 50, (count, 8), generator=generator)
        self.labels = torch.randint(0, 2, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def test_a_transformers_model_fine_tunes_under_a_constraint_on_its_logits(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    model = BertForSequenceClassification(config)
    problem = conopt.ConstrainedProblem()
    problem.class_one = conopt.Constraint("<=")

    class LogitBudget(ConstrainedTrainer):
        def problem_state(self, model, inputs, loss, outputs):
            return conopt.ProblemState(
                loss=loss, constraints={problem.class_one: outputs.logits[:, 1].mean() + 1.0}
            )

    optimizer = AccelerateConstrainedOptimizer(
        conopt.optim.SimultaneousGDA(
            problem,
            primal=torch.optim.AdamW(model.parameters(), lr=1e-2),
            dual=torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True),
        )
    )
    trainer = LogitBudget(
        model=model,
        args=arguments(tmp_path, max_steps=6, gradient_accumulation_steps=2, logging_steps=3),
        train_dataset=Sentences(),
        optimizers=(optimizer, None),
    )
    assert trainer.model_accepts_loss_kwargs is False  # BERT takes **kwargs; we do not pass them
    trainer.train()

    assert trainer.last_report.step == 6
    assert problem.class_one.multiplier.weight.item() > 0.0  # the constraint was violated
    assert [e["step"] for e in trainer.state.log_history if "conopt/class_one/value" in e] == [3, 6]
