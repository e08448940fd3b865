"""The parts of :class:`~l0_sparsity.measures.LatencyModel`: its layers, cache key and calibration.

:func:`probe_layers` finds the layers a purge can shrink (the width rules of
:func:`~l0_sparsity.nn.structure.purge_structure`), their input shapes (one forward pass) and
where their widths are in the count vector; a :class:`LayerProbe` builds a plain layer of the
same kind at a kept fraction of its outputs and inputs, to be timed. :func:`cache_key` names a
measurement; :func:`fit_calibration` fits the rest of the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from l0_sparsity.measures.counting import RuleCounts
from l0_sparsity.nn import GatedBatchNorm2d
from l0_sparsity.nn.graph import GatedGraph
from l0_sparsity.nn.structure import purge_structure

__all__ = [
    "LayerProbe",
    "cache_key",
    "default_cache_dir",
    "fit_calibration",
    "probe_layers",
    "threads_set",
]

_FORMAT = 1  # bump when the cached fit changes meaning


@dataclass(frozen=True)
class LayerProbe:
    """A shrinkable layer as the latency model times it.

    Attributes:
        target: The layer's module target.
        kind: ``"conv"`` or ``"linear"``.
        out_full: Its full number of outputs (rows).
        in_full: Its full number of inputs (columns).
        input_shape: Its input's shape at the measured batch size.
        conv: ``(kernel, stride, padding, dilation)`` of a convolution, else ``None``.
        bias: Whether it has a bias.
        rows: ``(slot, scale)``: the kept fraction of its rows is ``scale · v[slot]``.
        cols: ``(slot, scale)`` of its columns.
        groups: The convolution's groups; a grouped one keeps whole groups (its kept fraction
            of rows, rounded to groups) and all the columns of each (``in_full`` per group).
    """

    target: str
    kind: str
    out_full: int
    in_full: int
    input_shape: tuple[int, ...]
    conv: tuple[object, ...] | None
    bias: bool
    rows: tuple[int, float]
    cols: tuple[int, float]
    groups: int = 1

    def widths(self, r: float, c: float) -> tuple[int, int]:
        """Outputs and inputs (per group) kept at fractions ``r`` and ``c`` (at least one each)."""
        if self.groups > 1:
            kept = max(1, round(r * self.groups))
            return kept * (self.out_full // self.groups), self.in_full
        return max(1, round(r * self.out_full)), max(1, round(c * self.in_full))

    def achieved(self, r: float, c: float) -> tuple[float, float]:
        """The fractions of outputs and inputs really kept at ``r``, ``c`` (after rounding)."""
        out, inp = self.widths(r, c)
        return out / self.out_full, inp / self.in_full

    def build(self, r: float, c: float) -> tuple[nn.Module, tuple[int, ...]]:
        """A plain layer of this kind at fractions ``r``, ``c``, and its input shape."""
        out, inp = self.widths(r, c)
        shape = list(self.input_shape)
        if self.conv is None:
            shape[-1] = inp
            return nn.Linear(inp, out, bias=self.bias), tuple(shape)
        kernel, stride, padding, dilation = self.conv
        groups = out // (self.out_full // self.groups) if self.groups > 1 else 1
        shape[1] = inp * groups
        module = nn.Conv2d(
            inp * groups,
            out,
            kernel,  # type: ignore[arg-type]
            stride,  # type: ignore[arg-type]
            padding,  # type: ignore[arg-type]
            dilation,  # type: ignore[arg-type]
            groups,
            bias=self.bias,
        )
        return module, tuple(shape)


def probe_layers(
    model: nn.Module, input_shape: tuple[int, ...], counts: RuleCounts
) -> list[LayerProbe]:
    """The layers a purge can shrink, with their input shapes and count slots.

    Args:
        model: The gated model.
        input_shape: The measured batch's shape.
        counts: The width counts of :func:`~l0_sparsity.measures.cost_terms.build_terms` for
            ``model`` (slots are registered in it).

    Returns:
        One probe per shrinkable convolution or linear layer, in call order.
    """
    graph = GatedGraph(model)
    structure = purge_structure(graph)
    targets = []
    for target in graph.calls:
        module = graph.modules[target]
        rules = structure.outputs.get(target), structure.inputs.get(target)
        if isinstance(module, GatedBatchNorm2d) or rules == (None, None):
            continue
        targets.append(target)
    shapes = _input_shapes(model, targets, input_shape)
    probes = []
    for target in targets:
        module = graph.modules[target]
        out_full, in_full = module.weight.shape[:2]
        rows = counts.slot(structure.outputs.get(target), out_full)
        cols = counts.slot(structure.inputs.get(target), in_full)
        conv = None
        if module.weight.dim() == 4:
            conv = (
                tuple(module.weight.shape[2:]),
                module.stride,
                module.padding,
                module.dilation,
            )
        probes.append(
            LayerProbe(
                target=target,
                kind="linear" if conv is None else "conv",
                out_full=int(out_full),
                in_full=int(in_full),
                input_shape=shapes[target],
                conv=conv,
                bias=getattr(module, "bias", None) is not None,
                rows=(rows[0], rows[1] / out_full),
                cols=(cols[0], cols[1] / in_full),
                groups=getattr(module, "groups", 1),
            )
        )
    return probes


def _input_shapes(
    model: nn.Module, targets: list[str], input_shape: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """Each target's input shape at batch ``input_shape[0]`` (one eval forward at batch 1)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(target: str):  # noqa: ANN202 - a forward pre-hook
        def hook(_: nn.Module, args: tuple[Tensor, ...]) -> None:
            shapes[target] = (input_shape[0], *args[0].shape[1:])

        return hook

    handles = [model.get_submodule(t).register_forward_pre_hook(record(t)) for t in targets]
    was_training = model.training
    ref = next(iter(model.parameters()))
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(torch.zeros((1, *input_shape[1:]), device=ref.device, dtype=ref.dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def default_cache_dir() -> Path:
    """The directory where latency models are cached by default.

    Returns:
        ``$L0_SPARSITY_CACHE/latency``, else ``$XDG_CACHE_HOME/l0_sparsity/latency``, else
        ``~/.cache/l0_sparsity/latency``.
    """
    if os.environ.get("L0_SPARSITY_CACHE"):
        return Path(os.environ["L0_SPARSITY_CACHE"]) / "latency"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "l0_sparsity" / "latency"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model_name = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return f"{device.type}:{model_name}:{os.cpu_count()}"


def cache_key(
    model: nn.Module,
    probes: Sequence[LayerProbe],
    input_shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    threads: int,
    settings: dict[str, object],
) -> str:
    """The SHA-256 naming one measurement: structure, device, shape, dtype, threads, settings.

    Args:
        model: The gated model (its traced code and gate counts enter the key).
        probes: Its shrinkable layers.
        input_shape: The measured batch's shape.
        dtype: The timed dtype.
        device: The timed device.
        threads: CPU threads while timing.
        settings: The measurement's settings (grid, repeats, ...).

    Returns:
        A hex digest.
    """
    described = {
        "format": _FORMAT,
        "model": type(model).__qualname__,
        "code": GatedGraph(model).gm.code,
        "layers": [repr(probe) for probe in probes],
        "input_shape": list(input_shape),
        "dtype": str(dtype),
        "device": _device_name(device),
        "threads": threads,
        "torch": torch.__version__,
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def fit_calibration(raw: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """Least squares ``measured ≈ offset + gain · raw`` with ``offset, gain >= 0``.

    Args:
        raw: The summed layer fits of each calibration model.
        measured: Their measured latencies.

    Returns:
        ``(offset, gain)``.
    """
    x = torch.tensor(raw, dtype=torch.float64)
    y = torch.tensor(measured, dtype=torch.float64)
    if len(raw) >= 2 and float(x.std()) > 0:
        gain = float(((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).square().sum())
        offset = float(y.mean() - gain * x.mean())
        if gain >= 0 and offset >= 0:
            return offset, gain
        if gain < 0:
            return float(y.mean()), 0.0
    gain = float((x * y).sum() / x.square().sum()) if float(x.abs().sum()) > 0 else 0.0
    return 0.0, max(gain, 0.0)


@contextlib.contextmanager
def threads_set(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the old count after.

    Args:
        threads: Threads to use (``<= 0``: leave the current setting).
    """
    old = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
