"""Purge a training checkpoint: rebuild its model, purge it, report sizes, export it."""

from __future__ import annotations

import os

import torch

from l0_sparsity.checkpoint import CheckpointError, load_checkpoint
from l0_sparsity.data import build_datasets
from l0_sparsity.models import build_model
from l0_sparsity.purge import PurgeReport, purge, purge_report, save_purged


def purge_checkpoint(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]
) -> PurgeReport:
    """Build the purged model of ``checkpoint`` and save it (``torch.export``) to ``out``.

    The model is rebuilt from the checkpoint's configuration (the dataset is read only for its
    input shape and class count). ``out`` is not written if anything fails.

    Returns:
        The parameter and FLOP counts of the gated and the purged model.

    Raises:
        CheckpointError: The checkpoint is unreadable or does not fit its recorded model.
    """
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
