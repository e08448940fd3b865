"""One training step: the batch in micro-batches, the Lagrangian's backward, one optimizer step.

The step goes through :class:`conopt.optim.SimultaneousGDA`'s open path (``lagrangian`` →
backward, with a GradScaler under fp16 autocast → ``apply``). A NaN/Inf loss or constraint
value either raises (naming where) or, with ``on_nonfinite="skip"``, voids the whole step.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import conopt
from conopt.optim import NonFiniteError
from l0_sparsity.training.precision import mixed_precision

if TYPE_CHECKING:
    from l0_sparsity.problem import SparsityProblem
    from l0_sparsity.training.config import TrainConfig

__all__ = ["train_step"]


def train_step(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    config: TrainConfig,
    model: nn.Module,
    problem: SparsityProblem,
    optimizer: conopt.optim.SimultaneousGDA,
    scaler: torch.amp.GradScaler | None,
    dtype: torch.dtype | None,
    where: str,
) -> tuple[conopt.StepReport, float, float] | None:
    """One training step on a batch, in ``config.accumulation_steps`` micro-batches.

    Each micro-batch's state is weighted by its share of the batch (conopt sums them, see
    :meth:`conopt.ProblemState.scaled`); under DDP only the last backward all-reduces.

    Args:
        inputs: The batch's inputs, on the training device.
        targets: Its labels.
        config: The run's settings (``accumulation_steps``).
        model: The model that runs the forward pass (possibly DDP-wrapped or compiled).
        problem: The sparsity problem, evaluated on each micro-batch.
        optimizer: The constrained optimizer, stepped once for the whole batch.
        scaler: The GradScaler under fp16 autocast, else ``None``.
        dtype: The autocast dtype, or ``None`` for full precision.
        where: Where the step runs (``"epoch 3"``, with the rank under DDP), for error messages.

    Returns:
        The step's report, the batch's summed cross-entropy and its correct predictions; or
        ``None`` when the step was refused (non-finite values, ``on_nonfinite="skip"``).
    """
    micro_batches = list(
        zip(
            inputs.chunk(config.accumulation_steps),
            targets.chunk(config.accumulation_steps),
            strict=True,
        )
    )
    skipped_before = optimizer.skipped_steps
    totals: torch.Tensor | None = None  # summed cross-entropy and hits, left on the device
    for i, (micro_inputs, micro_targets) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else _no_sync(model):
            with mixed_precision(inputs.device.type, dtype):
                state = problem.evaluate(micro_inputs, micro_targets)
            if len(micro_batches) > 1:
                state = state.scaled(micro_targets.numel() / targets.numel())
            try:
                lagrangian = optimizer.lagrangian(state)
            except NonFiniteError as error:
                raise NonFiniteError(
                    f"{where}, step {optimizer.step_count + 1}: {error} "
                    "Set on_nonfinite='skip' (--on-nonfinite skip) to skip such steps."
                ) from None
            if optimizer.skipped_steps > skipped_before:  # refused: the whole step is void
                optimizer.apply()
                optimizer.zero_grad()
                return None
            (scaler.scale(lagrangian) if scaler is not None else lagrangian).backward()
        hits = state.extras["logits"].argmax(dim=1) == micro_targets
        counts = torch.stack(
            [state.extras["cross_entropy"].double() * micro_targets.numel(), hits.sum().double()]
        )
        totals = counts if totals is None else totals + counts
    report = optimizer.apply(scaler=scaler)
    if scaler is not None:
        scaler.update()
    optimizer.zero_grad()
    assert totals is not None
    loss_sum, correct = totals.tolist()  # the step's one host synchronization for metrics
    return report, loss_sum, correct


def _no_sync(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync()`` for a (possibly compiled) DDP model, else a context doing nothing."""
    wrapped = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if isinstance(wrapped, nn.parallel.DistributedDataParallel):
        return wrapped.no_sync()
    return contextlib.nullcontext()
