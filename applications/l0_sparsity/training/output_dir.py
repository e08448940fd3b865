"""A run's output directory: whether it can be written, and what to do with a run already there.

A directory "holds a run" when it contains one of :data:`RUN_FILES`. The trainer checks that
``output_dir`` can be written before anything runs, and claims it (refuse, or clear with
``overwrite``) once the run is set up, before any file is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from l0_sparsity.training.checkpoint import CHECKPOINT_NAME

if TYPE_CHECKING:
    from l0_sparsity.training.config import TrainConfig

__all__ = ["RUN_FILES", "check_output_dir", "claim_output_dir", "existing_run_files"]

RUN_FILES = (CHECKPOINT_NAME, "metrics.csv")
"""The files whose presence in ``output_dir`` means that it holds a run."""


def check_output_dir(output_dir: str | os.PathLike[str]) -> None:
    """Refuse an output directory that cannot be created or written, before anything runs.

    Args:
        output_dir: The run's ``output_dir`` (it need not exist yet).

    Raises:
        ValueError: If ``output_dir`` is a file, lies under a file, or its nearest existing
            directory is not writable.
    """
    path = Path(output_dir)
    for existing in (path, *path.parents):
        if existing.exists() or existing.is_symlink():
            break
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file {str(existing)!r}"
        raise ValueError(f"output_dir {str(path)!r} {where}; expected a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"output_dir {str(path)!r} cannot be written (no write permission in "
            f"{str(existing)!r}); expected a writable directory."
        )


def existing_run_files(output_dir: str | os.PathLike[str]) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``output_dir``.

    Args:
        output_dir: A run's ``output_dir``.

    Returns:
        The names found; empty when it holds no run.
    """
    return [name for name in RUN_FILES if (Path(output_dir) / name).exists()]


def claim_output_dir(config: TrainConfig, refuse_existing_run: bool, is_main: bool) -> None:
    """Refuse, or clear (``overwrite``), a run already in ``output_dir``.

    A resumed run keeps its files. With ``overwrite``, the main process deletes the previous
    run's checkpoint, metrics, plot and TensorBoard events (other files stay).

    Args:
        config: The run's settings (``output_dir``, ``resume``, ``overwrite``).
        refuse_existing_run: Refuse an ``output_dir`` holding a run (:func:`existing_run_files`)
            that is neither resumed nor overwritten; otherwise it is trained into.
        is_main: Whether this process deletes files (rank 0).

    Raises:
        ValueError: If ``output_dir`` holds a run that ``refuse_existing_run`` refuses.
    """
    if config.resume:
        return
    output_dir = Path(config.output_dir)
    if config.overwrite:
        if is_main:
            for name in (*RUN_FILES, "training.png"):
                (output_dir / name).unlink(missing_ok=True)
            for events in (output_dir / "tensorboard").glob("events.out.tfevents.*"):
                events.unlink()
        return
    found = existing_run_files(output_dir)
    if refuse_existing_run and found:
        raise ValueError(
            f"output_dir {str(output_dir)!r} already holds a run ({', '.join(found)}): continue "
            "it with --resume (resume=True), replace it with --overwrite (overwrite=True), or "
            "choose another --output-dir."
        )
