"""Per-epoch metrics: what is measured, and where it goes (CSV, TensorBoard, a PNG plot).

:func:`epoch_metrics` turns an epoch's counts (summed over the ranks) and the problem's state
into one row; :class:`MetricsLogger` appends it to ``metrics.csv`` and TensorBoard and plots
the densities and multipliers.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from l0_sparsity.measures import test_density
from l0_sparsity.nn import gated_layers
from l0_sparsity.training import distributed

if TYPE_CHECKING:
    import conopt
    from l0_sparsity.problem import SparsityProblem
    from l0_sparsity.training.run import Setup


@dataclass
class TrainTotals:
    """What an epoch's training steps add up on this rank.

    Attributes:
        loss_sum: Summed cross-entropy of the samples trained on.
        correct: Their correct predictions.
        seen: Their number.
        skipped: Steps refused for a NaN/Inf (``on_nonfinite="skip"``).
        report: The last step's report, ``None`` while every step was skipped.
    """

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    skipped: int = 0
    report: conopt.StepReport | None = None


def epoch_metrics(
    epoch: int, setup: Setup, totals: TrainTotals, test_counts: tuple[int, int], started: float
) -> dict[str, Any]:
    """One epoch's row of ``metrics.csv``; the counts are summed over the ranks first.

    Args:
        epoch: The epoch (0-based).
        setup: The run (its problem, unwrapped model, primal optimizer and device).
        totals: This rank's training totals.
        test_counts: This rank's ``(correct, counted)`` test predictions.
        started: ``time.perf_counter()`` at the epoch's start.

    Returns:
        ``epoch``, train loss and error, test error, expected and purged density, target,
        expected and purged MACs and parameters (fractions of the dense model's), each
        budget's target (``macs_target``, ``params_target``, when set), learning rates,
        skipped steps, seconds, then ``density/<layer>``, ``multiplier/<constraint>`` and
        ``max_violation`` (NaN when every step was skipped).
    """
    problem, model = setup.problem, setup.model
    (primal,) = setup.optimizer.primal_optimizers
    counts = torch.tensor(
        [totals.loss_sum, totals.correct, totals.seen, *test_counts],
        dtype=torch.float64,
        device=setup.device,
    )
    loss_sum, correct, seen, test_correct, test_total = distributed.all_reduce_sum_(counts).tolist()
    with torch.no_grad():
        density, per_layer = problem.densities()
    row: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": loss_sum / seen if seen else math.nan,
        "train_error": 1 - correct / seen if seen else math.nan,
        "test_error": 1 - test_correct / max(test_total, 1),
        "expected_density": float(density),
        "purged_density": test_density(model),
        "target": float(problem.targets) if problem.targets.dim() == 0 else math.nan,
        **compute_metrics(problem),
        "lr": primal.param_groups[0]["lr"],
        "gates_lr": primal.param_groups[1]["lr"],
        "skipped_steps": totals.skipped,
        "epoch_seconds": time.perf_counter() - started,
    }
    names = [name for name, _ in gated_layers(model)]
    row.update({f"density/{name}": float(d) for name, d in zip(names, per_layer, strict=True)})
    row.update(_multipliers(problem))
    report = totals.report
    row["max_violation"] = report.kkt.max_violation if report is not None else math.nan
    return row


def compute_metrics(problem: SparsityProblem) -> dict[str, float]:
    """The compute columns of a metrics row: expected and purged MACs and parameters.

    Args:
        problem: The run's problem (built with an example input).

    Returns:
        ``expected_macs``, ``purged_macs``, ``expected_params``, ``purged_params`` (fractions
        of the dense model's; the purged ones at the test-time gates, as the purged model has
        them); with a latency model ``expected_latency`` and ``purged_latency`` (the purged
        model's latency measured now, interleaved with the dense model's); then
        ``<budget>_target`` for each budget the problem constrains.
    """
    with torch.no_grad():
        expected = problem.expected_compute()
    purged = problem.test_compute()
    row: dict[str, float] = {}
    for name in ("macs", "params"):
        row[f"expected_{name}"] = float(expected[name])
        row[f"purged_{name}"] = purged[name]
    if problem.latency_model is not None:
        row["expected_latency"] = float(expected["latency"])
        row["purged_latency"] = problem.latency_model.measured_fraction()
    row.update({f"{name}_target": value for name, value in problem.budgets.items()})
    return row


def _multipliers(problem: SparsityProblem) -> dict[str, float]:
    """``multiplier/<constraint>`` (``[i]`` per entry of a vector) for each multiplier."""
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


class MetricsLogger:
    """Appends one row per epoch to ``metrics.csv`` (and TensorBoard, when enabled).

    The CSV header is fixed by the first row; a resumed run appends to the same file after
    dropping rows of epochs that will be trained again.

    Args:
        directory: The run's output directory.
        tensorboard: Also write TensorBoard events (needs the ``tensorboard`` package).
        resume_epoch: Keep only rows with ``epoch < resume_epoch`` from an existing file.
    """

    def __init__(
        self, directory: str | os.PathLike[str], tensorboard: bool = True, resume_epoch: int = 0
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        if resume_epoch > 0 and self.path.exists():
            with self.path.open(newline="") as handle:
                self.rows = [
                    {k: _number(v) for k, v in row.items()}
                    for row in csv.DictReader(handle)
                    if int(float(row["epoch"])) < resume_epoch
                ]
        self._rewrite()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.directory / "tensorboard"))

    def _columns(self) -> list[str]:
        """Every column of the rows, in the order they first appear."""
        return list(dict.fromkeys(key for row in self.rows for key in row))

    def _rewrite(self) -> None:
        if not self.rows:
            self.path.unlink(missing_ok=True)
            return
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._columns())
            writer.writeheader()
            writer.writerows(self.rows)

    def log(self, row: dict[str, Any]) -> None:
        """Record one epoch's metrics (``row["epoch"]`` is the step for TensorBoard).

        A row with a column the file lacks (a run resumed from a version that did not log it)
        rewrites the file with the wider header; the older rows leave that column empty.
        """
        new_columns = not set(row) <= set(self._columns())
        self.rows.append(row)
        if new_columns or not self.path.exists():
            self._rewrite()
        else:
            with self.path.open("a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=self._columns()).writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()

    def plot(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Save a PNG of the densities, compute and multipliers over the epochs.

        The trainer calls it after every epoch, so that ``training.png`` follows the run. The
        middle panel shows the expected and purged MACs and parameters (fractions of the dense
        model's) against the budgets' targets.

        Args:
            path: Where to save it (default: ``training.png`` in the run's directory).

        Returns:
            The PNG's path, or ``None`` when no epoch was logged yet.
        """
        if not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [row["epoch"] + 1 for row in self.rows]
        figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 3.6))
        for key in self._columns():
            values = [_float(row.get(key)) for row in self.rows]
            if key.startswith("density/") or key in ("expected_density", "purged_density"):
                left.plot(epochs, values, label=key)
            if key.startswith("multiplier"):
                right.plot(epochs, values, label=key)
        target = self.rows[0].get("target")
        if isinstance(target, float) and math.isfinite(target):  # NaN: layer-wise targets
            left.axhline(target, color="black", linestyle="--", linewidth=1, label="target")
        self._plot_compute(middle, epochs)
        left.set(xlabel="epoch", ylabel="density", title="Density")
        right.set(xlabel="epoch", ylabel="multiplier", title="Multipliers")
        for axis in (left, middle, right):
            handles, _ = axis.get_legend_handles_labels()
            if handles and len(handles) <= 12:
                axis.legend(fontsize=7)
        figure.tight_layout()
        out = Path(path) if path is not None else self.directory / "training.png"
        figure.savefig(out, dpi=120)
        plt.close(figure)
        return out

    def _plot_compute(self, axis: Any, epochs: list[int]) -> None:
        """Expected and purged MACs, parameters and latency, each budget's target dashed."""
        for name, colour in (
            ("macs", "tab:blue"),
            ("params", "tab:orange"),
            ("latency", "tab:red"),
        ):
            for kind, style in (("expected", "-"), ("purged", ":")):
                key = f"{kind}_{name}"
                values = [_float(row.get(key)) for row in self.rows]
                if any(math.isfinite(v) for v in values):
                    axis.plot(epochs, values, style, color=colour, label=key)
            budget = _float(self.rows[-1].get(f"{name}_target"))
            if math.isfinite(budget):
                axis.axhline(
                    budget, color=colour, linestyle="--", linewidth=1, label=f"{name}_target"
                )
        axis.set(xlabel="epoch", ylabel="fraction of dense", title="Compute")


def _float(value: Any) -> float:
    """A logged value as a float; NaN for an empty cell or a missing column."""
    return float(value) if isinstance(value, int | float) else math.nan


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value
