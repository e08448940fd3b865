"""Purge a training checkpoint: rebuild its model, purge it, report sizes, export it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from l0_sparsity.data import build_datasets
from l0_sparsity.models import build_model
from l0_sparsity.purging import PurgeReport, purge, purge_report, save_purged
from l0_sparsity.training.checkpoint import CheckpointError, load_checkpoint


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

    The model is rebuilt from the checkpoint's configuration (the dataset is read only for its
    input shape and class count). ``out`` is not written if anything fails.

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
    config = payload["config"]
    options = {k: config[k] for k in ("subset", "test_subset") if config.get(k) is not None}
    _, _, info = build_datasets(config["dataset"], config.get("data_root"), **options)
    model = build_model(
        config["model"],
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=info.image_size,
        droprate_init=config["droprate_init"],
        structured=config["structured"],
    )
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"{checkpoint} does not fit model {config['model']!r}: {error}"
        ) from None
    model.eval()
    example = torch.zeros(2, *info.input_shape)
    purged = purge(model)
    report = purge_report(model, example, purged)
    save_purged(purged, out, example)
    return report
