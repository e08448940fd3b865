"""Saving the purged model as a file that runs without this package (``torch.export``)."""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor, nn

from l0_sparsity.nn import GatedBatchNorm2d, gated_layers
from l0_sparsity.purging.rewrite import purge

__all__ = ["export", "save_purged"]


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_input: Tensor,
    dynamic_batch: bool = True,
) -> torch.export.ExportedProgram:
    """Export the purged model with ``torch.export`` and save it to ``path``.

    A gated model is purged first. The file reloads with plain torch, without this package::

        program = torch.export.load(path)
        logits = program.module()(images)

    Args:
        model: A gated model, or an already purged one.
        path: Destination file (conventionally ``*.pt2``).
        example_input: An input batch used for tracing.
        dynamic_batch: Whether the exported program accepts any batch size (>= 2 guaranteed).

    Returns:
        The exported program.
    """
    if gated_layers(model) or any(isinstance(m, GatedBatchNorm2d) for m in model.modules()):
        model = purge(model)
    model = model.eval()
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim.AUTO},)
    program = torch.export.export(model, (example_input,), dynamic_shapes=dynamic_shapes)
    torch.export.save(program, os.fspath(path))
    return program


def save_purged(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_input: Tensor,
    dynamic_batch: bool = True,
) -> torch.export.ExportedProgram:
    """Deprecated name of :func:`export`: same arguments and result, plus a DeprecationWarning.

    It will be removed in the next release.
    """
    warnings.warn(
        "l0_sparsity.purging.save_purged is now l0_sparsity.purging.export (also "
        "l0_sparsity.export), with the same arguments; the old name will be removed in the next "
        "release",
        DeprecationWarning,
        stacklevel=2,
    )
    return export(model, path, example_input, dynamic_batch)
