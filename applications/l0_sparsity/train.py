"""The training loop: one readable loop, in the manner of torchvision's reference scripts.

Per epoch it trains with :class:`conopt.optim.SimultaneousGDA` through the open step path
(``lagrangian`` → backward, with a GradScaler under fp16 AMP → ``apply``), evaluates the test
error with test-time gates, logs metrics (CSV, TensorBoard), and writes an atomic checkpoint
(model, problem, optimizer, scheduler, epoch, config, RNG states). ``resume=True`` continues
from it exactly; data order is a pure function of (seed, epoch).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import conopt
from l0_sparsity import distributed
from l0_sparsity.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_atomic
from l0_sparsity.data import build_datasets, make_loader
from l0_sparsity.layers import gate_parameters, gated_layers, test_density, weight_parameters
from l0_sparsity.metrics import MetricsLogger
from l0_sparsity.models import build_model
from l0_sparsity.presets import TrainConfig
from l0_sparsity.problem import SparsityProblem

CHECKPOINT_NAME = "checkpoint.pt"
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
        config: The configuration that ran.
        history: One metrics dictionary per epoch (the rows of ``metrics.csv``).
        model: The trained gated model (unwrapped from DDP).
        problem: The sparsity problem (multipliers included).
        output_dir: Where the run's files are.
    """

    config: TrainConfig
    history: list[dict[str, Any]]
    model: nn.Module
    problem: SparsityProblem
    output_dir: Path

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's metrics."""
        return self.history[-1]


def validate_config(config: TrainConfig) -> None:
    """Reject inconsistent settings with one clear message each."""
    checks = [
        (config.epochs >= 1, f"epochs must be >= 1, got {config.epochs}"),
        (config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}"),
        (
            config.optimizer in ("sgd", "adam"),
            f"optimizer must be 'sgd' or 'adam', got {config.optimizer!r}",
        ),
        (
            config.lr > 0 and config.gates_lr > 0 and config.dual_lr > 0,
            "learning rates must be > 0",
        ),
        (0 < config.target <= 1, f"target must be a density in (0, 1], got {config.target}"),
        (
            all(0 < t <= 1 for t in config.layer_targets),
            f"layer_targets must be in (0, 1], got {config.layer_targets}",
        ),
        (
            config.penalty is None or config.penalty >= 0,
            f"penalty must be >= 0, got {config.penalty}",
        ),
        (
            0 < config.droprate_init < 1,
            f"droprate_init must be in (0, 1), got {config.droprate_init}",
        ),
        (
            config.amp in ("off", "bf16", "fp16"),
            f"amp must be 'off', 'bf16' or 'fp16', got {config.amp!r}",
        ),
        (config.weight_decay >= 0, f"weight_decay must be >= 0, got {config.weight_decay}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message + ".")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _make_optimizer(kind: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.Adam(params, lr=lr)


def _problem(config: TrainConfig, model: nn.Module) -> SparsityProblem:
    if config.penalty is not None:
        return SparsityProblem(model, penalty=config.penalty, weight_decay=config.weight_decay)
    if config.layer_targets:
        targets = list(config.layer_targets)
        if len(targets) == 1:
            targets = targets * len(gated_layers(model))
        return SparsityProblem(model, layer_targets=targets, weight_decay=config.weight_decay)
    return SparsityProblem(model, target=config.target, weight_decay=config.weight_decay)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, loader: Any, device: torch.device, amp: str = "off"
) -> tuple[float, int]:
    """Top-1 accuracy of ``model`` (eval mode, test-time gates) and the number of samples."""
    model.eval()
    correct = total = 0
    for inputs, targets, _ in loader:
        inputs, targets = (
            inputs.to(device, non_blocking=True),
            targets.to(device, non_blocking=True),
        )
        with torch.autocast(
            device.type, dtype=_AMP_DTYPES.get(amp, torch.float32), enabled=amp != "off"
        ):
            logits = model(inputs)
        correct += int((logits.argmax(dim=1) == targets).sum())
        total += targets.numel()
    model.train()
    return correct / max(total, 1), total


def _progress(iterable: Any, enabled: bool, description: str) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=description, leave=False, dynamic_ncols=True)


def train(config: TrainConfig) -> TrainResult:
    """Train a gated model to the configured density and return the run's history.

    Raises:
        ValueError: For an invalid configuration, model or dataset name.
        l0_sparsity.data.DatasetNotFoundError: When the dataset's files are missing.
        l0_sparsity.checkpoint.CheckpointError: When resuming from a corrupted checkpoint or one
            of a different model.
    """
    validate_config(config)
    context = distributed.setup(config.device)
    device = context.device
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    _seed_everything(config.seed)
    output_dir = Path(config.output_dir)
    checkpoint_path = output_dir / CHECKPOINT_NAME

    options = {
        k: v
        for k, v in (("subset", config.subset), ("test_subset", config.test_subset))
        if v is not None
    }
    train_set, test_set, info = build_datasets(config.dataset, config.data_root, **options)
    if config.batch_size % context.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by the world size "
            f"{context.world_size}."
        )
    per_rank = config.batch_size // context.world_size
    train_loader = make_loader(
        train_set,
        per_rank,
        train=True,
        seed=config.seed,
        rank=context.rank,
        world_size=context.world_size,
        num_workers=config.num_workers,
        device=device,
    )
    test_loader = make_loader(
        test_set, 256, train=False, num_workers=config.num_workers, device=device
    )

    model = build_model(
        config.model,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=info.image_size,
        droprate_init=config.droprate_init,
        structured=config.structured,
    ).to(device)
    if config.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    forward_model: nn.Module = model
    if context.enabled:
        forward_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    problem = _problem(config, forward_model).to(device)
    weights_opt = _make_optimizer(config.optimizer, weight_parameters(model), config.lr)
    gates_opt = _make_optimizer(config.optimizer, gate_parameters(model), config.gates_lr)
    dual_params = list(problem.dual_parameters())
    dual_opt = (
        torch.optim.SGD(dual_params, lr=config.dual_lr, maximize=True) if dual_params else None
    )
    optimizer = conopt.optim.SimultaneousGDA(
        problem, [weights_opt, gates_opt], dual_opt, dual_restarts=config.dual_restarts
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        weights_opt, milestones=list(config.lr_milestones), gamma=config.lr_gamma
    )
    use_amp = config.amp != "off" and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp and config.amp == "fp16" else None

    start_epoch = 0
    if config.resume and checkpoint_path.exists():
        payload = load_checkpoint(checkpoint_path)
        if (
            payload["config"].get("model") != config.model
            or payload["config"].get("dataset") != config.dataset
        ):
            raise CheckpointError(
                f"{checkpoint_path} was written for model {payload['config'].get('model')!r} on "
                f"{payload['config'].get('dataset')!r}, not {config.model!r} on {config.dataset!r}."
            )
        try:
            model.load_state_dict(payload["model"])
            problem.load_state_dict(payload["problem"])
            optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"{checkpoint_path} does not fit this model: {error}") from None
        scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        _set_rng_state(payload["rng"])
        start_epoch = payload["epoch"] + 1

    logger = (
        MetricsLogger(output_dir, config.tensorboard and context.is_main, start_epoch)
        if context.is_main
        else None
    )
    history: list[dict[str, Any]] = list(logger.rows) if logger else []
    gated_names = [name for name, _ in gated_layers(model)]
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        train_loader.set_epoch(epoch)
        model.train()
        loss_sum = correct = seen = 0.0
        report = None
        for inputs, targets, _ in _progress(
            train_loader, config.progress and context.is_main, f"epoch {epoch + 1}/{config.epochs}"
        ):
            if config.channels_last and device.type == "cuda" and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                device.type, dtype=_AMP_DTYPES.get(config.amp, torch.float32), enabled=use_amp
            ):
                state = problem.evaluate(inputs, targets)
            lagrangian = optimizer.lagrangian(state)
            (scaler.scale(lagrangian) if scaler is not None else lagrangian).backward()
            report = optimizer.apply(scaler=scaler)
            if scaler is not None:
                scaler.update()
            optimizer.zero_grad()
            batch = targets.numel()
            loss_sum += float(state.extras["cross_entropy"]) * batch
            correct += float((state.extras["logits"].argmax(dim=1) == targets).sum())
            seen += batch
        scheduler.step()
        accuracy, _ = evaluate_accuracy(
            model, test_loader, device, config.amp if use_amp else "off"
        )
        with torch.no_grad():
            density, per_layer = problem.densities()
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "train_error": 1 - correct / max(seen, 1),
            "test_error": 1 - accuracy,
            "expected_density": float(density),
            "purged_density": test_density(model),
            "target": float(problem.targets) if problem.targets.dim() == 0 else math.nan,
            "lr": weights_opt.param_groups[0]["lr"],
            "gates_lr": gates_opt.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - started,
        }
        row.update(
            {f"density/{name}": float(d) for name, d in zip(gated_names, per_layer, strict=True)}
        )
        for name, multiplier in _multipliers(problem).items():
            row[name] = multiplier
        if report is not None:
            row["max_violation"] = report.kkt.max_violation
        history.append(row)
        if logger is not None:
            logger.log(row)
            save_atomic(
                {
                    "format_version": FORMAT_VERSION,
                    "config": dataclasses.asdict(config),
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "problem": problem.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": _rng_state(),
                },
                checkpoint_path,
            )
            if config.progress:
                print(
                    f"epoch {epoch + 1:>4}/{config.epochs}  loss {row['train_loss']:.4f}  "
                    f"test error {row['test_error']:.4f}  density {row['expected_density']:.4f}  "
                    f"purged {row['purged_density']:.4f}  ({row['epoch_seconds']:.1f}s)",
                    flush=True,
                )
    if logger is not None:
        logger.plot()
        logger.close()
    distributed.teardown()
    return TrainResult(config, history, model, problem, output_dir)


def _multipliers(problem: SparsityProblem) -> dict[str, float]:
    values: dict[str, float] = {}
    for name, constraint in problem.named_constraints():
        if constraint.multiplier is None:
            continue
        weight = constraint.multiplier.value(None).detach().reshape(-1)
        if weight.numel() == 1:
            values[f"multiplier/{name}"] = float(weight)
        else:
            for i, value in enumerate(weight.tolist()):
                values[f"multiplier/{name}[{i}]"] = value
    return values
