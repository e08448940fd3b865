"""A sentence encoder as an ONNX file with ``input_ids`` and ``attention_mask`` inputs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from l0_sparsity.purging.exporting import ONNX_RTOL, onnx_session, relative_error

__all__ = ["export_encoder_onnx"]


def export_encoder_onnx(
    encoder: nn.Module,
    path: str | os.PathLike[str],
    example_input_ids: torch.Tensor | None = None,
    opset_version: int = 17,
) -> Path:
    """Write a (purged) sentence encoder to ONNX and check it in onnxruntime.

    The file has inputs ``input_ids`` and ``attention_mask`` (int64, ``(batch, tokens)``, both
    dynamic) and one output ``embeddings``. It runs without this package and without PyTorch.
    The check runs a padded batch of two sentences through both and compares within
    :data:`~l0_sparsity.purging.exporting.ONNX_RTOL`.

    Args:
        encoder: A module called as ``encoder(input_ids, attention_mask)`` made of plain torch
            and Hugging Face modules, e.g. ``SentenceEncoder(l0.purge(student.encoder))``.
        path: Destination file (``*.onnx``).
        example_input_ids: ``(2, tokens)`` token ids of the tracing and checking batch, the
            second sentence then padded over its second half; default: 16 random ids in
            ``[1, 100)`` each.
        opset_version: ONNX opset of the file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If onnxruntime's embeddings differ from the encoder's beyond the tolerance.
    """
    encoder = encoder.eval()
    ids = example_input_ids
    if ids is None:
        ids = torch.randint(1, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, ids.shape[1] // 2 :] = 0  # one padded sentence: the mask must be honoured
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=r".*aten::index operator of advanced indexing")
        torch.onnx.export(
            encoder,
            (ids, mask),
            os.fspath(path),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["embeddings"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "embeddings": {0: "batch"}},
            opset_version=opset_version,
        )
    with torch.no_grad():
        expected = encoder(ids, mask)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    produced = torch.from_numpy(onnx_session(path).run(None, feed)[0])
    error = relative_error(produced, expected)
    if not error <= ONNX_RTOL:
        raise ValueError(
            f"export_encoder_onnx: onnxruntime's embeddings from {path} differ from the "
            f"encoder's by {error:.3g} relative (expected <= {ONNX_RTOL:g})."
        )
    return Path(path)
