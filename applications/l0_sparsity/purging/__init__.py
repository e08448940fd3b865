"""Purge: turn a trained gated model into a physically smaller dense one, and export it.

:func:`purge` traces the gated model with torch.fx (gated layers as leaves) and rewrites the
graph into a :class:`torch.fx.GraphModule` made only of plain torch modules and ops:

* every gated layer becomes a plain ``nn.Linear`` / ``nn.Conv2d`` with its test-time gates
  folded into the weights, and every :class:`~l0_sparsity.nn.GatedBatchNorm2d` a plain
  ``nn.BatchNorm2d`` with the gates folded into its affine parameters;
* a structured conv keeps only the filters whose test-time gate is positive (its norm is sliced
  alike). If its output reaches convolutions or a flattened linear layer only through
  channel-wise ops that map 0 to 0 (ReLU, pooling, dropout, ...), those consumers lose the
  matching input channels. Otherwise (e.g. a residual addition, whose width is fixed) the kept
  channels are scattered back to the full width with zeros: ``index_select(pad(x), 1, src)``;
* a structured linear layer keeps the input columns whose gate is positive; the producing
  linear layer (through element-wise activations) loses the matching output rows, or else the
  kept features are picked with ``index_select``.

A group set that is entirely dead keeps its first group, whose folded gate is 0: the layer then
outputs exact zeros of the right shape, and no zero-width tensor is ever created.

The purged model computes the gated model's **eval-mode** output (test-time gates, BatchNorm
running statistics) up to float rounding.

The modules, in the order a purge runs through them: :mod:`l0_sparsity.nn.graph` (trace;
which layers feed which),
:mod:`l0_sparsity.nn.structure` (which gates decide each layer's widths: the analysis the compute
measures of :mod:`l0_sparsity.measures.compute` share, so that they count exactly what the purge
makes), :mod:`~l0_sparsity.purging.plan` (what each layer keeps at the test-time gates),
:mod:`~l0_sparsity.purging.shrink` (the smaller plain modules),
:mod:`~l0_sparsity.purging.rewrite` (:func:`purge` itself: swap them in, rewrite the graph);
then :mod:`~l0_sparsity.purging.report` (parameters, FLOPs, :class:`PurgeReport`) and
:mod:`~l0_sparsity.purging.exporting` (:func:`export`, to a ``torch.export`` file;
:func:`export_onnx`, to an ONNX file checked in onnxruntime; :func:`measure_latency`).
"""

from l0_sparsity.purging.exporting import (
    Latency,
    export,
    export_onnx,
    measure_latency,
    save_purged,
)
from l0_sparsity.purging.hf_directory import save_pretrained_pruned
from l0_sparsity.purging.report import PurgeReport, count_flops, count_params, purge_report
from l0_sparsity.purging.rewrite import purge

__all__ = [
    "Latency",
    "PurgeReport",
    "count_flops",
    "count_params",
    "export",
    "export_onnx",
    "measure_latency",
    "purge",
    "purge_report",
    "save_pretrained_pruned",
    "save_purged",
]
