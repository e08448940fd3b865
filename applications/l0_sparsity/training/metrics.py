"""Per-epoch metrics: a CSV file, TensorBoard events, and a PNG plot of density and multipliers."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any


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

    def _rewrite(self) -> None:
        if not self.rows:
            self.path.unlink(missing_ok=True)
            return
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)

    def log(self, row: dict[str, Any]) -> None:
        """Record one epoch's metrics (``row["epoch"]`` is the step for TensorBoard)."""
        self.rows.append(row)
        new_file = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.rows[0]))
            if new_file:
                writer.writeheader()
            writer.writerow(row)
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
        """Save a PNG of the densities and multipliers over the epochs; returns its path.

        The trainer calls it after every epoch, so that ``training.png`` follows the run.

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
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
        for key in self.rows[0]:
            if key.startswith("density/") or key in ("expected_density", "purged_density"):
                left.plot(epochs, [row[key] for row in self.rows], label=key)
            if key.startswith("multiplier"):
                right.plot(epochs, [row[key] for row in self.rows], label=key)
        target = self.rows[0].get("target")
        if isinstance(target, float) and math.isfinite(target):  # NaN: layer-wise targets
            left.axhline(target, color="black", linestyle="--", linewidth=1, label="target")
        left.set(xlabel="epoch", ylabel="density", title="Density")
        right.set(xlabel="epoch", ylabel="multiplier", title="Multipliers")
        for axis in (left, right):
            handles, _ = axis.get_legend_handles_labels()
            if handles and len(handles) <= 12:
                axis.legend(fontsize=7)
        figure.tight_layout()
        out = Path(path) if path is not None else self.directory / "training.png"
        figure.savefig(out, dpi=120)
        plt.close(figure)
        return out


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value
