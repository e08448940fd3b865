r"""Constraints in Hugging Face ``Trainer`` fine-tuning.

Three additions to an existing ``Trainer`` run (see the how-to *Constraints in a Hugging Face
Trainer*):

1. derive the trainer from :class:`ConstrainedTrainer` and override
   :meth:`ConstrainedTrainer.problem_state`: the batch's :class:`~conopt.problem.ProblemState`
   built around the loss the ``Trainer`` computed as usual;
2. pass ``optimizers=(AccelerateConstrainedOptimizer(SimultaneousGDA(...)), None)``;
3. nothing else: ``trainer.train()``, ``trainer.train(resume_from_checkpoint=...)``, logging,
   evaluation and saving are the ``Trainer``'s own.

**Why a Trainer subclass and a custom optimizer.** The ``Trainer`` runs on ``accelerate``: it
hands its optimizer to ``accelerator.prepare`` and calls ``optimizer.step()`` once per
accumulation window, after its gradient clipping and under its mixed precision, then saves
``optimizer.state_dict()`` in every checkpoint and restores it on resume. The optimizer of
:mod:`conopt.integrations.accelerate`, whose ``step()`` is conopt's whole step and whose state
holds the multipliers, therefore gets the dual update after each optimizer step, and exact
resumption, from the ``Trainer``'s own machinery. What an optimizer cannot do is change the
scalar that is backpropagated: only ``compute_loss`` can, so a subclass overrides it (a
``TrainerCallback`` sees neither the loss nor the batch). The subclass also adds the step's
report to the ``Trainer``'s logs, returns the plain loss in evaluation, and refuses what would
silently lose the duals: another optimizer, or a checkpoint without the optimizer state.

Needs ``transformers`` 5.x (which brings ``accelerate``): ``pip install torch-conopt[hf]``.
"""

from __future__ import annotations

try:
    import transformers
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint
except ImportError as error:  # pragma: no cover - exercised with transformers hidden
    raise ImportError(
        "conopt.integrations.hf needs the 'transformers' package (5.x), which is not "
        "installed: pip install torch-conopt[hf]"
    ) from error

if int(transformers.__version__.split(".")[0]) < 5:  # pragma: no cover
    raise ImportError(
        f"conopt.integrations.hf needs transformers 5.x, found {transformers.__version__}: "
        "pip install torch-conopt[hf]"
    )

import os
from typing import Any, ClassVar

import torch
from torch import nn

from conopt.diagnostics import StepReport
from conopt.integrations.accelerate import AccelerateConstrainedOptimizer
from conopt.optim.constrained import ConstrainedOptimizer
from conopt.problem import ProblemState

__all__ = ["AccelerateConstrainedOptimizer", "ConstrainedTrainer"]

# The files in which the Trainer saves the optimizer (and thus the duals) and the scheduler; it
# restores the optimizer only when both are in the checkpoint, and silently skips it otherwise.
_OPTIMIZER_FILE = "optimizer.pt"
_SCHEDULER_FILE = "scheduler.pt"


class _EndOfStep(TrainerCallback):
    """Closes each optimizer step: drops a window whose step a ``GradScaler`` skipped."""

    def __init__(self, optimizer: AccelerateConstrainedOptimizer) -> None:
        self.optimizer = optimizer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """After the ``Trainer``'s step: clear what a skipped step left behind."""
        self.optimizer.zero_grad()


class ConstrainedTrainer(Trainer):
    """A ``transformers.Trainer`` that trains under constraints.

    Override :meth:`problem_state` and pass
    ``optimizers=(AccelerateConstrainedOptimizer(conopt.optim.SimultaneousGDA(...)), scheduler)``
    (the scheduler may be ``None``: the ``Trainer`` builds its own on the primal learning
    rate). Every other argument is the ``Trainer``'s.

    The ``Trainer``'s loss is computed as usual (the model's ``loss`` output, or
    ``label_smoother``), per micro-batch: the model is not handed ``num_items_in_batch``,
    so that the loss and the constraint values are means over the same micro-batch and the
    ``Trainer``'s gradient-accumulation scaling applies to both alike.

    Example:
        .. code-block:: python

            class Trainer(ConstrainedTrainer):
                def problem_state(self, model, inputs, loss, outputs):
                    return conopt.ProblemState(
                        loss=loss, constraints={problem.mean_logit: outputs.logits.mean()}
                    )

    Args:
        *args: The ``Trainer``'s positional arguments.
        **kwargs: The ``Trainer``'s keyword arguments; ``optimizers`` is required.

    Raises:
        TypeError: ``optimizers`` does not start with an ``AccelerateConstrainedOptimizer``
            (the ``Trainer`` would build or step a plain optimizer, and the multipliers would
            never take their dual step).
        ValueError: ``compute_loss_func`` is given (its loss is normalized over the whole
            accumulation window, not the micro-batch of the constraint values).
    """

    conopt_log_prefix: ClassVar[str | None] = "conopt/"
    """Prefix of the logged report's keys (``"conopt/max_violation"``, ...); ``None``: no logs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        optimizer = (kwargs.get("optimizers") or (None, None))[0]
        if not isinstance(optimizer, AccelerateConstrainedOptimizer):
            raise TypeError(_optimizer_refusal(type(self).__name__, optimizer))
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                f"{type(self).__name__} does not take compute_loss_func: its loss is normalized "
                "over the accumulation window, the constraint values over the micro-batch. "
                "Compute the loss in problem_state instead."
            )
        super().__init__(*args, **kwargs)
        self.constrained_optimizer = optimizer
        self.model_accepts_loss_kwargs = False  # per-micro-batch means; the Trainer divides
        self.add_callback(_EndOfStep(optimizer))

    # ----------------------------------------------------------------------- for the user
    def problem_state(
        self, model: nn.Module, inputs: dict[str, Any], loss: torch.Tensor, outputs: Any
    ) -> ProblemState:
        """The problem's state on this batch: override it.

        Args:
            model: The model (as the ``Trainer`` calls it: possibly wrapped).
            inputs: The batch.
            loss: The ``Trainer``'s loss on the batch.
            outputs: The model's outputs on the batch.

        Returns:
            The state whose Lagrangian is trained on: usually ``ProblemState(loss=loss,
            constraints={...})``.

        Raises:
            NotImplementedError: Not overridden.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override problem_state(model, inputs, loss, outputs) "
            "to return the batch's conopt.ProblemState."
        )

    @property
    def last_report(self) -> StepReport | None:
        """The report of the last optimizer step (``None`` before the first)."""
        return self.constrained_optimizer.last_report

    # ------------------------------------------------------------------ the Trainer's hooks
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """In training, the Lagrangian of :meth:`problem_state`; in evaluation, the loss.

        Args:
            model: The model.
            inputs: The batch.
            return_outputs: Return the model's outputs too.
            num_items_in_batch: Unused (see the class docstring).

        Returns:
            The scalar to backpropagate (training) or to report (evaluation), and the outputs
            if asked for.
        """
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        state = self.problem_state(model, inputs, loss, outputs)
        if model.training and torch.is_grad_enabled():
            objective = self.constrained_optimizer.lagrangian(
                state, accumulation=self.current_gradient_accumulation_steps
            )
        else:
            objective = state.loss
        return (objective, outputs) if return_outputs else objective

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The ``Trainer``'s log, with the last step's report added to its training logs.

        Keys carry :attr:`conopt_log_prefix` (``conopt/max_violation``,
        ``conopt/<constraint>/multiplier``, ...); values not measured are left out.

        Args:
            logs: The values to log.
            start_time: The start of training.
        """
        report = self.constrained_optimizer.last_report
        prefix = self.conopt_log_prefix
        if "loss" in logs and report is not None and prefix is not None:
            numbers = report.as_dict().items()
            logs = {**logs, **{f"{prefix}{k}": v for k, v in numbers if v is not None}}
        super().log(logs, start_time)

    def train(
        self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        """The ``Trainer``'s ``train``, refusing a checkpoint without the duals.

        Args:
            resume_from_checkpoint: As for ``Trainer.train``.
            *args: ``Trainer.train``'s other positional arguments.
            **kwargs: ``Trainer.train``'s other keyword arguments.

        Returns:
            What ``Trainer.train`` returns.

        Raises:
            FileNotFoundError: The checkpoint has no optimizer (or scheduler) state, which the
                ``Trainer`` would skip without a word, restarting the multipliers from zero.
            ValueError: The checkpoint's optimizer state was not written by a constrained run.
        """
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            _check_resumable(resume_from_checkpoint, self.args.output_dir)
        return super().train(resume_from_checkpoint, *args, **kwargs)


def _optimizer_refusal(trainer: str, optimizer: object) -> str:
    """The message refusing ``optimizers=(optimizer, ...)``."""
    if isinstance(optimizer, ConstrainedOptimizer):
        name = type(optimizer).__name__
        return (
            f"{trainer} got conopt's {name} itself: the Trainer would step it as a torch "
            f"optimizer and its dual step would be skipped; pass optimizers=("
            f"AccelerateConstrainedOptimizer({name}(...)), None)."
        )
    found = "no optimizer" if optimizer is None else type(optimizer).__name__
    return (
        f"{trainer} needs optimizers=(AccelerateConstrainedOptimizer(conopt.optim."
        f"SimultaneousGDA(problem, primal=..., dual=...)), None), got {found}: with any other "
        "optimizer the multipliers would never take their dual step."
    )


def _check_resumable(checkpoint: str | bool, output_dir: str | None) -> None:
    """Refuse a checkpoint whose optimizer state (the duals) the Trainer would not restore."""
    path = get_last_checkpoint(output_dir) if checkpoint is True and output_dir else checkpoint
    if not isinstance(path, str | os.PathLike):
        return  # the Trainer reports a missing checkpoint itself
    missing = [f for f in (_OPTIMIZER_FILE, _SCHEDULER_FILE) if not os.path.isfile(f"{path}/{f}")]
    if missing:
        raise FileNotFoundError(
            f"the checkpoint {path} has no {' or '.join(missing)}: the multipliers and the dual "
            "optimizer state live in the optimizer state, and the Trainer would resume without "
            "them (from zero multipliers) without a word. Resume from a checkpoint saved "
            "without save_only_model=True; to start a constrained run from its weights, load "
            "them into the model and call train() without resume_from_checkpoint."
        )
