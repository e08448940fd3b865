"""The LightningModule side: build the Lagrangian, log the step's report, guard checkpoints and DDP.

:class:`ConstrainedLightningModule` is a ``LightningModule`` to use as the base class (or the
first base class) of an existing module. It adds :meth:`~ConstrainedLightningModule.lagrangian`
for ``training_step`` to return, and takes care, in Lightning's own hooks, of what only a
module can do:

* ``optimizer_step``: after Lightning's optimizer step, logs the step's
  :class:`~conopt.diagnostics.StepReport` (loss, Lagrangian, KKT report, each constraint's value
  and multiplier) with ``self.log``, at the trainer's ``log_every_n_steps``;
* ``on_fit_start``: refuses a fit in which the multipliers would never take their dual step;
* ``on_load_checkpoint``: refuses to resume a fit from a checkpoint without the duals;
* ``_ddp_params_and_buffers_to_ignore``: keeps the multipliers out of DDP's gradient
  all-reduce (conopt synchronizes them itself, from all-reduced constraint values);
* a subclass's ``configure_optimizers`` is checked: returning a conopt optimizer itself, which
  Lightning would step as a plain torch optimizer, is refused.

Override these hooks only with a call to ``super()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import nn

from conopt.diagnostics import StepReport
from conopt.integrations.lightning.optimizer import STATE_FORMAT, LightningConstrainedOptimizer
from conopt.optim.constrained import ConstrainedOptimizer
from conopt.problem import Constraint, ProblemState

__all__ = ["ConstrainedLightningModule"]

_WRAP_IT = (
    "Lightning's automatic optimization would step it as a torch optimizer and its dual step "
    "would be skipped; return LightningConstrainedOptimizer({name}(...)) instead "
    "(from conopt.integrations.lightning)."
)


def _returned_optimizers(config: Any) -> Iterator[Any]:
    """The optimizers in what ``configure_optimizers`` returned (any of Lightning's forms)."""
    if isinstance(config, Mapping):
        yield config.get("optimizer")
    elif isinstance(config, (list, tuple)):
        for item in config:
            yield from _returned_optimizers(item)
    else:
        yield config


def _checked_configure_optimizers(method: Callable[..., Any]) -> Callable[..., Any]:
    """``configure_optimizers``, refusing a bare conopt optimizer in what it returns."""

    @functools.wraps(method)
    def configure_optimizers(self: pl.LightningModule) -> Any:
        config = method(self)
        for optimizer in _returned_optimizers(config):
            if isinstance(optimizer, ConstrainedOptimizer):
                name = type(optimizer).__name__
                raise TypeError(
                    f"{type(self).__name__}.configure_optimizers returned conopt's {name}: "
                    + _WRAP_IT.format(name=name)
                )
        return config

    configure_optimizers.conopt_checked = True  # type: ignore[attr-defined]
    return configure_optimizers


class ConstrainedLightningModule(pl.LightningModule):
    """A ``LightningModule`` trained under constraints, by Lightning's automatic optimization.

    Declare the problem as an attribute of the module (so that Lightning moves it to the device
    and saves its multipliers in ``state_dict``), return
    ``self.lagrangian(state)`` from ``training_step``, and return a
    :class:`~conopt.integrations.lightning.optimizer.LightningConstrainedOptimizer` from
    ``configure_optimizers``.

    Example:
        .. code-block:: python

            class Model(ConstrainedLightningModule):
                def __init__(self):
                    super().__init__()
                    self.net = torch.nn.Linear(8, 1)
                    self.problem = conopt.ConstrainedProblem()
                    self.problem.mean_output = conopt.Constraint("<=")

                def training_step(self, batch, batch_idx):
                    x, y = batch
                    out = self.net(x)
                    state = conopt.ProblemState(
                        loss=torch.nn.functional.mse_loss(out, y),
                        constraints={self.problem.mean_output: out.mean() - 0.5},
                    )
                    return self.lagrangian(state)

                def configure_optimizers(self):
                    return LightningConstrainedOptimizer(
                        conopt.optim.SimultaneousGDA(
                            self.problem,
                            primal=torch.optim.Adam(self.primal_parameters(), lr=1e-3),
                            dual=torch.optim.SGD(
                                self.problem.dual_parameters(), lr=1e-2, maximize=True
                            ),
                        )
                    )
    """

    conopt_log_prefix: ClassVar[str | None] = "conopt/"
    """Prefix of the logged report's keys (``"conopt/max_violation"``, ...); ``None``: no logs."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Make the subclass's ``configure_optimizers`` refuse a bare conopt optimizer."""
        super().__init_subclass__(**kwargs)
        method = cls.__dict__.get("configure_optimizers")
        if callable(method) and not getattr(method, "conopt_checked", False):
            cls.configure_optimizers = _checked_configure_optimizers(method)  # type: ignore[method-assign]

    # ----------------------------------------------------------------------- for the user
    def lagrangian(self, state: ProblemState) -> torch.Tensor:
        """The scalar to return from ``training_step``: the Lagrangian of ``state``.

        Args:
            state: The loss and constraint values of this batch.

        Returns:
            The scalar whose backward pass gives the primal gradients; the multipliers'
            gradients are written already.

        Raises:
            RuntimeError: Called outside the training loop (it would add to the next training
                step's dual gradients), or no ``LightningConstrainedOptimizer`` was returned by
                ``configure_optimizers``.
        """
        if not self.trainer.training:
            raise RuntimeError(
                "self.lagrangian(state) is for training_step: it writes the multipliers' "
                "gradients for the next optimizer step. In validation, log the state's values "
                "(state.loss, state.constraints) instead."
            )
        accumulation = self.trainer.accumulate_grad_batches if self.automatic_optimization else 1
        return self.constrained_optimizer.lagrangian(state, accumulation=accumulation)

    def primal_parameters(self) -> Iterator[nn.Parameter]:
        """The module's parameters except the multipliers: what the primal optimizer drives."""
        dual = {id(p) for c in self._constraints() for p in c.parameters()}
        return (p for p in self.parameters() if id(p) not in dual)

    @property
    def constrained_optimizer(self) -> LightningConstrainedOptimizer:
        """The ``LightningConstrainedOptimizer`` of the trainer this module is attached to.

        Raises:
            RuntimeError: ``configure_optimizers`` returned none.
        """
        found = [o for o in self.trainer.optimizers if isinstance(o, LightningConstrainedOptimizer)]
        if not found:
            returned = [type(o).__name__ for o in self.trainer.optimizers]
            raise RuntimeError(
                f"{type(self).__name__}.configure_optimizers returned {returned}, without a "
                "LightningConstrainedOptimizer: the multipliers would never take their dual "
                "step. Return LightningConstrainedOptimizer(conopt.optim.SimultaneousGDA("
                "problem, primal=..., dual=...)) (from conopt.integrations.lightning)."
            )
        return found[0]

    def log_report(self, report: StepReport) -> None:
        """Log ``report`` with ``self.log``: every number of :meth:`StepReport.as_dict`.

        Keys carry :attr:`conopt_log_prefix`; values that were not measured (``None``) are left
        out. Called after each optimizer step that the trainer's ``log_every_n_steps`` logs.

        Args:
            report: The step's report.
        """
        prefix = self.conopt_log_prefix
        if prefix is None:
            return
        values = {f"{prefix}{k}": v for k, v in report.as_dict().items() if v is not None}
        self.log_dict(values, on_step=True, on_epoch=False, batch_size=1)

    # ------------------------------------------------------------------ Lightning's hooks
    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: torch.optim.Optimizer,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """Lightning's optimizer step, then the step's report to the logger.

        Args:
            epoch: The current epoch.
            batch_idx: The index of the batch that closes the accumulation window.
            optimizer: Lightning's wrapper of the ``LightningConstrainedOptimizer``.
            optimizer_closure: Runs ``training_step``, ``zero_grad`` and the backward pass.
        """
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        constrained = getattr(optimizer, "optimizer", optimizer)
        if not isinstance(constrained, LightningConstrainedOptimizer):
            return
        report = constrained.finish_step()
        if report is not None and self._logs_this_step():
            self.log_report(report)

    def on_fit_start(self) -> None:
        """Refuse a fit in which the multipliers would not be stepped or not be saved."""
        super().on_fit_start()
        if not any(c.multiplier is not None for c in self._constraints()):
            return
        optimizer = self.constrained_optimizer  # raises when there is none
        problem = optimizer.problem
        if not any(m is problem for m in self.modules()):
            raise RuntimeError(
                f"the problem {type(problem).__name__} that the LightningConstrainedOptimizer "
                f"drives is not a sub-module of {type(self).__name__}: assign it as an "
                "attribute (self.problem = ...) so that Lightning moves its multipliers to the "
                "device and saves them in checkpoints."
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When resuming a fit, refuse a checkpoint without the multipliers or the dual state.

        Args:
            checkpoint: The loaded checkpoint.

        Raises:
            KeyError: The checkpoint holds no multiplier for some constraint, or no state of a
                ``LightningConstrainedOptimizer``.
        """
        super().on_load_checkpoint(checkpoint)
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return  # loading weights (load_from_checkpoint, validate, test) needs no duals
        weights = checkpoint.get("state_dict", {})
        missing = sorted({n for n in self._constraint_keys() if n not in weights})
        if missing:
            raise KeyError(
                f"the checkpoint holds no multipliers for {missing}: it was not written by this "
                "constrained run. To start constrained training from its weights, load them "
                "with model.load_state_dict(checkpoint['state_dict'], strict=False) and call "
                "Trainer.fit without ckpt_path."
            )
        states = checkpoint.get("optimizer_states") or []
        if not any(isinstance(s, Mapping) and s.get("format") == STATE_FORMAT for s in states):
            raise KeyError(
                "the checkpoint holds no dual optimizer state (no LightningConstrainedOptimizer "
                "state among its optimizer_states; a save_weights_only checkpoint holds none): "
                "resuming from it would not continue the constrained run."
            )

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """What DDP leaves alone: every constraint's parameters and buffers (multipliers).

        conopt keeps the multipliers identical on every rank from all-reduced constraint values;
        their gradients are written in closed form, outside autograd, where DDP's reducer would
        wait for them forever.
        """
        names = [
            f"{prefix}.{name}"
            for prefix, module in self._named_constraints()
            for name, _ in (*module.named_parameters(), *module.named_buffers())
        ]
        return [*names, *self.__dict__.get("_conopt_ddp_ignore", ())]

    @_ddp_params_and_buffers_to_ignore.setter
    def _ddp_params_and_buffers_to_ignore(self, names: Iterable[str]) -> None:
        self.__dict__["_conopt_ddp_ignore"] = list(names)

    # ------------------------------------------------------------------------- internals
    def _constraints(self) -> Iterator[Constraint]:
        return (m for _, m in self._named_constraints())

    def _named_constraints(self) -> Iterator[tuple[str, Constraint]]:
        return ((n, m) for n, m in self.named_modules() if isinstance(m, Constraint))

    def _constraint_keys(self) -> list[str]:
        """The ``state_dict`` keys of the constraints: multipliers, penalty coefficients."""
        return [f"{n}.{key}" for n, c in self._named_constraints() for key in c.state_dict()]

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes this optimizer step's logs (its ``log_every_n_steps``)."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        if every <= 0:
            return False
        # global_step counts the steps completed before this one until the hook returns.
        return (trainer.global_step + 1) % every == 0 or trainer.should_stop
