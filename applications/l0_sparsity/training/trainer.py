"""The training loop: one readable loop, in the manner of torchvision's reference scripts.

:func:`train` is :func:`load_data`, :func:`build` (model, problem, optimizers), :func:`resume`,
then per epoch :func:`train_one_epoch` (:func:`~l0_sparsity.training.step.train_step` on each
batch), :func:`evaluate` (test error with test-time gates), one metrics row (CSV, TensorBoard)
and an atomic checkpoint (model, problem, optimizer, scheduler, epoch, config, RNG states).
``resume=True`` continues from it exactly; data order is a pure function of (seed, epoch).

**Under DDP** (``torchrun --nproc_per_node=N``), each rank trains on its shard of every global
batch (``batch_size`` is global), the test set is sharded too and the metrics are summed over the
ranks; rank 0 alone logs and writes checkpoints, and every rank loads the checkpoint on resume.
All ranks are seeded alike: they start from the same parameters (DDP also broadcasts rank 0's at
wrap time) and draw the *same* gate sample ``z`` at each step, as a single process does for the
whole global batch. So the N-process run computes the same gradients as the single-process run
over the same global batches (up to the summation order of DDP's gradient average), the RNG
state saved by rank 0 is every rank's, and the expected density, a function of the parameters
only (``Constraint(reduction=None)``), is the same on every rank, which keeps the multipliers
identical without any communication. A NaN/Inf on any rank is agreed on by all ranks, which then
raise or skip the step together.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l0_sparsity.data import DatasetInfo, make_loader
from l0_sparsity.training import distributed
from l0_sparsity.training.builders import (
    example_batch,
    load_datasets,
    make_model,
    make_problem,
)
from l0_sparsity.training.calibration import recalibrate_batchnorm
from l0_sparsity.training.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    check_same_problem,
    load_checkpoint,
    one_line,
    rng_state,
    save_atomic,
    seed_everything,
    set_rng_state,
)
from l0_sparsity.training.config import TrainConfig
from l0_sparsity.training.evaluate import count_correct
from l0_sparsity.training.metrics import MetricsLogger, TrainTotals, epoch_metrics
from l0_sparsity.training.optimizers import make_constrained_optimizer, make_scheduler
from l0_sparsity.training.output_dir import check_output_dir, claim_output_dir
from l0_sparsity.training.precision import amp_dtype
from l0_sparsity.training.run import Data, Setup, TrainingInterrupted, TrainResult
from l0_sparsity.training.step import train_step

__all__ = [
    "CHECKPOINT_NAME",
    "Data",
    "Setup",
    "TrainResult",
    "TrainingInterrupted",
    "build",
    "evaluate",
    "load_data",
    "resume",
    "train",
    "train_one_epoch",
]


def load_data(config: TrainConfig, context: distributed.DistributedContext) -> Data:
    """The datasets of ``config`` and this rank's loaders (global batch split over the ranks).

    Args:
        config: The run's settings.
        context: This process's rank, world size and device.

    Returns:
        The loaders and the dataset's description.

    Raises:
        ValueError: For a batch size that the ranks or the micro-batches cannot share.
    """
    train_set, test_set, info = load_datasets(config)
    if config.batch_size % context.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by the world size "
            f"{context.world_size}."
        )
    per_rank = config.batch_size // context.world_size
    if config.accumulation_steps > per_rank:
        raise ValueError(
            f"accumulation_steps {config.accumulation_steps} exceeds the batch of "
            f"{per_rank} samples per process: each micro-batch needs at least one."
        )
    shard = {"rank": context.rank, "world_size": context.world_size, "device": context.device}
    train_loader = make_loader(
        train_set, per_rank, train=True, seed=config.seed, num_workers=config.num_workers, **shard
    )
    test_loader = make_loader(test_set, 256, train=False, num_workers=config.num_workers, **shard)
    return Data(info, train_loader, test_loader, len(test_set))


def build(config: TrainConfig, info: DatasetInfo, context: distributed.DistributedContext) -> Setup:
    """The model, problem, optimizer, schedule and GradScaler of ``config``, on the device.

    Args:
        config: The run's settings.
        info: The dataset's description (classes, channels, image size).
        context: This process's device, and whether DDP wraps the model.

    Returns:
        The setup.

    Raises:
        ValueError: For ``amp="fp16"`` off CUDA, an unknown model, or a compute budget below
            what the model's ungated layers cost.
    """
    device = context.device
    dtype = amp_dtype(config.amp, device)
    model = make_model(config, info).to(device)
    if config.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    forward_model: nn.Module = model
    if context.enabled:
        forward_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        forward_model = torch.compile(forward_model)  # type: ignore[assignment]
    problem = make_problem(config, forward_model, example_batch(info, device)).to(device)
    optimizer = make_constrained_optimizer(config, model, problem)
    scheduler = make_scheduler(config, optimizer.primal_optimizers[0])
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return Setup(config, device, dtype, model, forward_model, problem, optimizer, scheduler, scaler)


def resume(setup: Setup, checkpoint: Path) -> int:
    """Load ``checkpoint`` into ``setup`` (with the RNG states) when ``config.resume`` asks.

    Args:
        setup: The freshly built run.
        checkpoint: The run's checkpoint path (it may not exist: the run starts afresh).

    Returns:
        The epoch to start from (0 without a checkpoint).

    Raises:
        CheckpointError: For a corrupted checkpoint, or one of another model or constraint.
        ValueError: When the checkpoint already holds ``config.epochs`` epochs.
    """
    config = setup.config
    if not (config.resume and checkpoint.exists()):
        return 0
    payload = load_checkpoint(checkpoint)
    check_same_problem(payload["config"], config, checkpoint)
    try:
        setup.load_state_dict(payload)
        set_rng_state(payload["rng"])
        start_epoch = int(payload["epoch"]) + 1
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"{checkpoint} does not fit this run: {one_line(str(error))}"
        ) from None
    if start_epoch >= config.epochs:
        # Exit code 2 on the command line (a ValueError), not 0: a request that cannot be
        # carried out is a user error, and a script must not take it for a finished run.
        done = f"{start_epoch} epoch" + ("s" if start_epoch != 1 else "")
        raise ValueError(
            f"nothing to do: {checkpoint} already holds {done} and epochs is "
            f"{config.epochs}; pass epochs (--epochs) above {start_epoch} to train further."
        )
    return start_epoch


def train_one_epoch(
    setup: Setup, loader: Any, epoch: int, context: distributed.DistributedContext
) -> TrainTotals:
    """Train on every batch of ``epoch`` (one :func:`~l0_sparsity.training.step.train_step` each).

    Args:
        setup: The run.
        loader: This rank's training loader.
        epoch: The epoch (0-based): it selects the data order.
        context: This process's rank (for messages and the progress bar).

    Returns:
        This rank's loss, correct predictions, samples, skipped steps and last step report.
    """
    config = setup.config
    loader.set_epoch(epoch)
    setup.model.train()
    totals = TrainTotals()
    where = f"epoch {epoch + 1}" + (f" (rank {context.rank})" if context.enabled else "")
    description = f"epoch {epoch + 1}/{config.epochs}"
    for inputs, targets, _ in _progress(loader, config.progress and context.is_main, description):
        if config.channels_last and setup.device.type == "cuda" and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        outcome = train_step(
            inputs,
            targets,
            config=config,
            model=setup.forward_model,
            problem=setup.problem,
            optimizer=setup.optimizer,
            scaler=setup.scaler,
            dtype=setup.dtype,
            where=where,
        )
        if outcome is None:  # refused: nothing changed
            totals.skipped += 1
            continue
        totals.report, batch_loss, batch_correct = outcome
        totals.loss_sum += batch_loss
        totals.correct += batch_correct
        totals.seen += targets.numel()
    return totals


def evaluate(setup: Setup, data: Data, context: distributed.DistributedContext) -> tuple[int, int]:
    """Count this rank's correct test predictions with the test-time gates.

    With ``config.bn_recalibration``, the BatchNorm statistics are first recomputed with the
    test-time gates over that many training batches.

    Args:
        setup: The run.
        data: Its loaders.
        context: This process's rank and the world size.

    Returns:
        ``(correct, counted)`` on this rank's shard.
    """
    if setup.config.bn_recalibration:
        batches = itertools.islice(data.train_loader, setup.config.bn_recalibration)
        recalibrate_batchnorm(
            setup.model,
            (inputs for inputs, _, _ in batches),
            device=setup.device,
            dtype=setup.dtype,
        )
    return count_correct(
        setup.model,
        data.test_loader,
        setup.device,
        setup.dtype,
        rank=context.rank,
        world_size=context.world_size,
        num_samples=data.test_size,
    )


@dataclass
class _Run:
    """What :func:`train` tells ``_train`` besides the configuration, and hears back."""

    epoch_lines: bool
    refuse_existing_run: bool
    saved_epoch: int | None = None


def train(
    config: TrainConfig, *, epoch_lines: bool | None = None, refuse_existing_run: bool = False
) -> TrainResult:
    """Train a gated model to the configured density and return the run's history.

    Under ``torchrun`` it joins (or initializes) the process group and trains with DDP; see the
    module docstring. ``training.png`` and the checkpoint are rewritten after every epoch.

    Args:
        config: The run's settings.
        epoch_lines: Print one line per epoch (rank 0); ``None``: when ``config.progress``.
            The command line passes ``True``.
        refuse_existing_run: Refuse (``ValueError``) an ``output_dir`` that holds a run
            (:func:`~l0_sparsity.training.output_dir.existing_run_files`) unless
            ``config.resume`` or ``config.overwrite``; checked after every other setting,
            before any file is written. The command line passes ``True``.

    Returns:
        The run's configuration, per-epoch metrics, model and problem.

    Raises:
        ValueError: For an invalid configuration, model or dataset name, an ``output_dir``
            that is a file (or holds a run, see ``refuse_existing_run``), or a resumed
            checkpoint that already holds ``config.epochs`` epochs (nothing to do).
        TrainingInterrupted: On Ctrl-C (a ``KeyboardInterrupt``), naming the last saved epoch.
        l0_sparsity.data.DatasetNotFoundError: When the dataset's files are missing.
        CheckpointError: When resuming from a corrupted checkpoint or one
            of a different model or constraint.
        conopt.optim.NonFiniteError: When a loss or constraint value is NaN/Inf and
            ``config.on_nonfinite == "raise"``; the message names it.
    """
    config.validate()
    check_output_dir(config.output_dir)
    run = _Run(config.progress if epoch_lines is None else epoch_lines, refuse_existing_run)
    context = distributed.setup(config.device)
    try:
        return _train(config, context, run)
    except KeyboardInterrupt:
        checkpoint = Path(config.output_dir) / CHECKPOINT_NAME
        raise TrainingInterrupted(checkpoint, run.saved_epoch, config.epochs) from None
    finally:
        distributed.teardown(context)


def _train(config: TrainConfig, context: distributed.DistributedContext, run: _Run) -> TrainResult:
    amp_dtype(config.amp, context.device)  # refuse fp16 off CUDA before reading any data
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    data = load_data(config, context)
    setup = build(config, data.info, context)
    checkpoint = Path(config.output_dir) / CHECKPOINT_NAME
    start_epoch = resume(setup, checkpoint)
    run.saved_epoch = start_epoch - 1 if start_epoch else None
    claim_output_dir(config, run.refuse_existing_run, context.is_main)
    main = context.is_main
    logger = (
        MetricsLogger(config.output_dir, config.tensorboard and main, start_epoch) if main else None
    )
    history: list[dict[str, Any]] = list(logger.rows) if logger else []
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        totals = train_one_epoch(setup, data.train_loader, epoch, context)
        setup.scheduler.step()
        test_counts = evaluate(setup, data, context)
        row = epoch_metrics(epoch, setup, totals, test_counts, started)
        history.append(row)
        if logger is not None:
            logger.log(row)
            _save(setup, epoch, checkpoint)
            run.saved_epoch = epoch
            logger.plot()
            if run.epoch_lines:
                print(_epoch_line(config, row), flush=True)
        run.saved_epoch = epoch  # other ranks: rank 0 saved it
    if logger is not None:
        logger.close()
    # The result must not hold the DDP wrapper: it references the process group, which
    # teardown() could then not free, and whose worker threads would outlive the interpreter.
    setup.problem.set_model(setup.model)
    return TrainResult(
        config, history, setup.model, setup.problem, Path(config.output_dir), context.rank
    )


def _save(setup: Setup, epoch: int, checkpoint: Path) -> None:
    """Write the checkpoint of ``epoch`` (the format :func:`resume` reads) atomically."""
    payload = {
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(setup.config),
        "epoch": epoch,
        **setup.state_dict(),
        "rng": rng_state(),
    }
    save_atomic(payload, checkpoint)


def _epoch_line(config: TrainConfig, row: dict[str, Any]) -> str:
    """The line printed after each epoch."""
    return (
        f"epoch {row['epoch'] + 1:>4}/{config.epochs}  loss {row['train_loss']:.4f}  "
        f"test error {row['test_error']:.4f}  density {row['expected_density']:.4f}  "
        f"purged {row['purged_density']:.4f}  ({row['epoch_seconds']:.1f}s)"
    )


def _progress(iterable: Any, enabled: bool, description: str) -> Any:
    """``iterable`` with a tqdm progress bar when ``enabled`` and tqdm is installed."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=description, leave=False, dynamic_ncols=True)
