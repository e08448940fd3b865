"""Purge a training checkpoint: rebuild its model, purge it, report sizes, export it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from l0_sparsity.purging import PurgeReport, export, purge, purge_report
from l0_sparsity.training.builders import load_datasets, make_model
from l0_sparsity.training.checkpoint import CheckpointError, load_checkpoint
from l0_sparsity.training.config import TrainConfig


def check_out_path(out: str | os.PathLike[str]) -> None:
    """Refuse a purged model's destination that cannot be written, before any work.

    Args:
        out: The file to write (it need not exist; its directory must).

    Raises:
        ValueError: If ``out`` is a directory, lies under a file, or its directory is missing
            or not writable.
    """
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"out {str(path)!r} is a directory; expected a file path (e.g. x.pt2).")
    directory = path.parent
    if directory.is_dir():
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ValueError(
                f"out {str(path)!r} cannot be written: no write permission in {str(directory)!r}."
            )
        return
    existing = next(p for p in (directory, *directory.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise ValueError(
            f"out {str(path)!r} lies under the file {str(existing)!r}; expected a path in a "
            "directory."
        )
    raise ValueError(
        f"out {str(path)!r}: its directory {str(directory)!r} does not exist; create it first."
    )


def purge_checkpoint(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]
) -> PurgeReport:
    """Build the purged model of ``checkpoint`` and save it (``torch.export``) to ``out``.

    The model is rebuilt from the checkpoint's configuration as the trainer builds it
    (:func:`~l0_sparsity.training.builders.make_model`; the dataset is read only for its input
    shape and class count). ``out`` is not written if anything fails.

    Args:
        checkpoint: A training checkpoint (``checkpoint.pt``).
        out: Where to write the purged model (``.pt2``); its directory must exist.

    Returns:
        The parameter and FLOP counts of the gated and the purged model.

    Raises:
        ValueError: ``out`` cannot be written (:func:`check_out_path`), checked first.
        CheckpointError: The checkpoint is unreadable or does not fit its recorded model.
    """
    check_out_path(out)
    payload = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(payload["config"])
    _, _, info = load_datasets(config)
    model = make_model(config, info)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"{checkpoint} does not fit model {config.model!r}: {error}"
        ) from None
    model.eval()
    example = torch.zeros(2, *info.input_shape)
    purged = purge(model)
    report = purge_report(model, example, purged)
    export(purged, out, example)
    return report
