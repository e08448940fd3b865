"""Saving the purged model as a file that runs without this package.

Two formats, both loaded with no trace of ``l0_sparsity``:

* :func:`export`: a ``torch.export`` program (``*.pt2``), reloaded with ``torch.export.load``;
* :func:`export_onnx`: an ONNX graph (``*.onnx``), run by ``onnxruntime`` or any ONNX runtime.
  The file is checked at export: onnxruntime's output on the example input must equal the gated
  model's eval output within :data:`ONNX_RTOL` (relative to the output's largest magnitude).

:func:`measure_latency` times the purged model in PyTorch and its ONNX file in onnxruntime on the
same input and thread count, side by side. ``onnx`` and ``onnxruntime`` (the ``onnx`` extra) are
imported only by the ONNX functions.
"""

from __future__ import annotations

import importlib
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from l0_sparsity.nn import GatedBatchNorm2d, gated_layers
from l0_sparsity.purging.rewrite import purge

__all__ = [
    "ONNX_RTOL",
    "Latency",
    "export",
    "export_onnx",
    "measure_latency",
    "onnx_session",
    "relative_error",
    "save_purged",
]

ONNX_RTOL: float = 1e-4
"""Largest accepted :func:`relative_error` of an ONNX file's output against the model's (fp32)."""


def _purged_eval(model: nn.Module) -> nn.Module:
    """``model`` purged if it holds gates, in eval mode."""
    if gated_layers(model) or any(isinstance(m, GatedBatchNorm2d) for m in model.modules()):
        model = purge(model)
    return model.eval()


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
    model = _purged_eval(model)
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


def relative_error(output: Tensor, reference: Tensor) -> float:
    """``max |output − reference| / max |reference|``: an error on the reference's own scale.

    Args:
        output: The values to check.
        reference: The values they should equal (same shape).

    Returns:
        The relative error; ``inf`` if ``reference`` is all zeros and ``output`` is not.

    Raises:
        ValueError: If the shapes differ.
    """
    if output.shape != reference.shape:
        raise ValueError(
            f"relative_error: shapes differ, {tuple(output.shape)} vs {tuple(reference.shape)}"
        )
    difference = (output.double() - reference.double()).abs().max().item()
    scale = reference.double().abs().max().item()
    if scale == 0.0:
        return 0.0 if difference == 0.0 else float("inf")
    return difference / scale


def _import_onnx_extra(module: str, user: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{user} needs {module}, which is not installed: install the 'onnx' extra "
            "(pip install 'torch-conopt[onnx]')"
        ) from error


def onnx_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` on the ONNX file ``path``.

    Args:
        path: An ONNX file, e.g. written by :func:`export_onnx`.
        threads: Intra-op threads; ``None`` uses ``torch.get_num_threads()`` so that timings
            compare with PyTorch's on the same cores.

    Returns:
        The session; ``session.run(None, {"input": array})[0]`` is the output.

    Raises:
        ImportError: If onnxruntime is not installed (the message names the ``onnx`` extra).
    """
    ort = _import_onnx_extra("onnxruntime", "onnx_session")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_input: Tensor,
    dynamic_batch: bool = True,
    opset_version: int = 17,
) -> Path:
    """Export the purged model to an ONNX file and check it in onnxruntime.

    A gated model is purged first; the graph is written by PyTorch's TorchScript-based ONNX
    exporter (``torch.onnx.export(..., dynamo=False)``; the dynamo exporter would need the
    ``onnxscript`` package). The file has one input ``"input"`` and one output ``"output"``, and
    runs without this package (and without PyTorch)::

        session = onnxruntime.InferenceSession(path)
        logits = session.run(None, {"input": images.numpy()})[0]

    Args:
        model: A gated model, or an already purged (or dense) one.
        path: Destination file (conventionally ``*.onnx``).
        example_input: A float32 CPU input batch, used for tracing and for the check.
        dynamic_batch: Whether the file accepts any batch size.
        opset_version: ONNX opset of the file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If onnxruntime's output on ``example_input`` differs from the model's eval
            output by more than :data:`ONNX_RTOL` (:func:`relative_error`).
        ImportError: If onnx or onnxruntime is missing (the message names the ``onnx`` extra).
    """
    _import_onnx_extra("onnx", "export_onnx")
    purged = _purged_eval(model)
    path = Path(path)
    batch_axis = {0: "batch"} if dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (no onnxscript dependency).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        torch.onnx.export(
            purged,
            (example_input,),
            os.fspath(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            opset_version=opset_version,
            dynamic_axes={"input": batch_axis, "output": batch_axis} if batch_axis else None,
        )
    with torch.no_grad():
        expected = purged(example_input)
    produced = torch.from_numpy(onnx_session(path).run(None, {"input": example_input.numpy()})[0])
    error = relative_error(produced, expected)
    if not error <= ONNX_RTOL:
        raise ValueError(
            f"export_onnx: onnxruntime's output of {path} differs from the model's eval output "
            f"by {error:.3g} relative (expected <= {ONNX_RTOL:g}); the model holds an operation "
            "the ONNX exporter does not translate faithfully"
        )
    return path


@dataclass(frozen=True)
class Latency:
    """Median time of one forward pass, in milliseconds, in PyTorch and in onnxruntime.

    Attributes:
        pytorch_ms: The model in eval mode under ``torch.inference_mode()``.
        onnxruntime_ms: Its ONNX file in an onnxruntime CPU session with as many threads.
    """

    pytorch_ms: float
    onnxruntime_ms: float


def _median_ms(run: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure_latency(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    example_input: Tensor,
    repeats: int = 20,
    warmup: int = 3,
) -> Latency:
    """Time ``model`` in PyTorch and its ONNX file in onnxruntime on the same input.

    Both run on the CPU with ``torch.get_num_threads()`` threads; the median of ``repeats``
    timed calls after ``warmup`` untimed ones is reported.

    Args:
        model: The model (a gated one is purged first, as its ONNX file was).
        onnx_path: Its ONNX file (from :func:`export_onnx`).
        example_input: The float32 CPU input batch of every call.
        repeats: Timed calls per runtime.
        warmup: Untimed calls first.

    Returns:
        The two medians.
    """
    purged = _purged_eval(model)
    session = onnx_session(onnx_path)
    feed = {"input": example_input.numpy()}

    def run_pytorch() -> object:
        with torch.inference_mode():
            return purged(example_input)

    return Latency(
        pytorch_ms=_median_ms(run_pytorch, repeats, warmup),
        onnxruntime_ms=_median_ms(lambda: session.run(None, feed), repeats, warmup),
    )
