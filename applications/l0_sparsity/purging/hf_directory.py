"""Saving a head-pruned Hugging Face ``BertModel`` as a directory ``AutoModel`` loads.

:func:`save_pretrained_pruned` purges a gated ``BertModel`` (or takes a purged one) and writes
it with ``save_pretrained``: the kept heads' weights only, and in ``config.json`` the dead heads
of each layer as ``pruned_heads`` (``{layer: [head, ...]}``, Hugging Face's own field for
pruned BERT heads) and the FFN width as ``intermediate_size``.

What each ``transformers`` version does with that directory:

* **transformers 5** (the version this package installs) has dropped ``pruned_heads`` and
  ``prune_heads``: its ``BertModel`` always builds every head, and loading the smaller weights
  fails with a size-mismatch ``RuntimeError``. The directory therefore also holds
  ``pruned_bert.py``, a ``BertModel`` subclass that builds the layers of ``pruned_heads``
  with their kept heads only, declared in ``config.auto_map``: load it with
  ``AutoModel.from_pretrained(directory, trust_remote_code=True)``. The file needs
  ``transformers`` only, not this package.
* **transformers 4** reads ``pruned_heads`` itself: ``AutoModel.from_pretrained(directory)``.

A ``BertConfig`` has one ``intermediate_size`` for all layers, so the FFN units may be pruned
only uniformly (every layer keeping as many units); other FFN widths are refused
(:func:`~l0_sparsity.purging.exporting.export_onnx`,
:func:`~l0_sparsity.encoders.export_encoder_onnx` or
:func:`~l0_sparsity.purging.exporting.export` save them). A layer may not lose all of its
heads in ``pruned_heads`` (transformers 5's attention cannot reshape zero heads): one whose
heads are all dead keeps its first head, whose out-projection columns are zero, as the purge
does, with a warning. A directory without pruned heads is a plain ``BertModel`` directory,
loaded without ``trust_remote_code``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l0_sparsity.nn.bert import BertBlock, HeadGatedLinear, bert_blocks
from l0_sparsity.purging.bert import purge_bert

__all__ = ["REMOTE_CODE_FILE", "save_pretrained_pruned"]

REMOTE_CODE_FILE: str = "pruned_bert.py"
"""Name of the ``BertModel`` subclass file written next to a head-pruned model's weights."""

_REMOTE_CLASS = "PrunedBertModel"

_REMOTE_CODE = '''"""A BertModel that builds the heads of ``config.pruned_heads`` removed.

Written by l0_sparsity next to a head-pruned BERT's weights: transformers 5 no longer reads
``pruned_heads``. Load with ``AutoModel.from_pretrained(directory, trust_remote_code=True)``.
"""

from torch import nn
from transformers import BertModel


class PrunedBertModel(BertModel):
    """``BertModel`` whose layer ``i`` keeps the heads not in ``config.pruned_heads[i]``."""

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        for layer, heads in (getattr(config, "pruned_heads", None) or {}).items():
            attention = self.encoder.layer[int(layer)].attention
            kept = config.num_attention_heads - len(set(heads))
            width = kept * attention.self.attention_head_size
            if attention.self.query.out_features == width:
                continue  # transformers 4 pruned it already
            for name in ("query", "key", "value"):
                old = getattr(attention.self, name)
                new = nn.Linear(old.in_features, width, bias=old.bias is not None)
                setattr(attention.self, name, new)
            old = attention.output.dense
            attention.output.dense = nn.Linear(width, old.out_features, bias=old.bias is not None)
            attention.self.num_attention_heads = kept
            attention.self.all_head_size = width
'''


def _bert_model(model: nn.Module) -> Any:
    """The ``transformers.BertModel`` of ``model`` (itself, or a SentenceEncoder's encoder)."""
    try:
        from transformers import BertModel
    except ImportError as error:
        raise ImportError(
            "save_pretrained_pruned needs transformers: pip install 'torch-conopt[transformers]'"
        ) from error
    from l0_sparsity.encoders.pooling import SentenceEncoder

    bert = model.encoder if isinstance(model, SentenceEncoder) else model
    if not isinstance(bert, BertModel):
        raise TypeError(
            f"save_pretrained_pruned: got a {type(bert).__name__}; expected a "
            "transformers.BertModel (gated, purged or dense) or a SentenceEncoder holding one"
        )
    return bert


def _blocks_by_layer(bert: nn.Module) -> list[BertBlock]:
    """The model's blocks, block ``i`` being ``encoder.layer.i``, each found exactly once."""
    blocks = {block.block: block for block in bert_blocks(bert)}
    layers = len(bert.encoder.layer)
    missing = [f"encoder.layer.{i}" for i in range(layers) if f"encoder.layer.{i}" not in blocks]
    if missing or len(blocks) != layers:
        raise ValueError(
            f"save_pretrained_pruned: the blocks {missing or sorted(blocks)} are not plain "
            f"BERT blocks; expected encoder.layer.0 .. encoder.layer.{layers - 1}, each with "
            "query / key / value, attention.output.dense, intermediate.dense and output.dense"
        )
    return [blocks[f"encoder.layer.{i}"] for i in range(layers)]


def _kept_heads(bert: nn.Module, block: BertBlock) -> list[int]:
    """The heads of ``block`` a purge keeps, in the original numbering.

    A gated block keeps the heads whose test-time gate is positive (its first head if none
    is). A purged block has lost the record of which heads it dropped: its ``k`` heads are
    numbered ``0 .. k-1`` (the loaded model computes the same; only the names differ).
    """
    out = bert.get_submodule(block.attention_output)
    if isinstance(out, HeadGatedLinear):
        kept = out.active_mask().nonzero().flatten().tolist()
        if not kept:
            warnings.warn(
                f"save_pretrained_pruned: every head of {block.attention_output} is off; "
                "pruned_heads cannot remove all heads of a layer, so it keeps head 0 with zero "
                "out-projection columns (the layer's attention output is its bias, as purged)",
                stacklevel=3,
            )
            kept = [0]
        return kept
    return list(range(int(bert.get_submodule(block.attention).num_attention_heads)))


def _check_shapes(purged: nn.Module, block: BertBlock, heads: int, head_size: int) -> int:
    """Check the purged block is what the config will build; return its FFN width."""
    width = heads * head_size
    shapes = {name: purged.get_submodule(name).out_features for name in block.projections}
    shapes[block.attention_output] = purged.get_submodule(block.attention_output).in_features
    wrong = {name: size for name, size in shapes.items() if size != width}
    if wrong:
        raise ValueError(
            f"save_pretrained_pruned: {block.block} keeps {heads} heads of {head_size} "
            f"features, so its projections should be {width} wide; found {wrong}"
        )
    units = purged.get_submodule(block.intermediate).out_features
    if purged.get_submodule(block.output).in_features != units:
        raise ValueError(
            f"save_pretrained_pruned: {block.output} reads "
            f"{purged.get_submodule(block.output).in_features} features; expected the "
            f"{units} units of {block.intermediate}"
        )
    return int(units)


def _uniform_ffn_width(blocks: list[BertBlock], widths: list[int]) -> int:
    """The single FFN width of all blocks, refused (naming the layers) if they differ."""
    if len(set(widths)) > 1:
        per_layer = ", ".join(f"{b.intermediate}: {w}" for b, w in zip(blocks, widths, strict=True))
        raise ValueError(
            "save_pretrained_pruned: the FFN units were pruned non-uniformly "
            f"({per_layer}); a Hugging Face BertConfig has one intermediate_size for all "
            "layers, so expected every layer to keep as many units. Save this model with "
            "export_onnx / export_encoder_onnx or torch.export instead"
        )
    return widths[0]


def _set_pruned_heads(config: Any, pruned: dict[int, list[int]]) -> None:
    """Record ``pruned`` (and the class that builds it) in ``config``, or clear stale records."""
    auto_map = dict(getattr(config, "auto_map", None) or {})
    auto_map.pop("AutoModel", None)
    if pruned:
        auto_map["AutoModel"] = f"{Path(REMOTE_CODE_FILE).stem}.{_REMOTE_CLASS}"
        config.pruned_heads = pruned
    elif hasattr(config, "pruned_heads"):
        del config.pruned_heads
    if auto_map:
        config.auto_map = auto_map
    elif hasattr(config, "auto_map"):
        del config.auto_map


def save_pretrained_pruned(
    model: nn.Module,
    directory: str | os.PathLike[str],
    tokenizer: Any | None = None,
) -> Path:
    """Write a Hugging Face directory of the purged ``BertModel``, dead heads removed.

    The weights are those of :func:`~l0_sparsity.purging.bert.purge_bert` (test-time gates
    folded in; the kept heads and FFN units only), and ``config.json`` records the dead heads
    as ``pruned_heads`` and the FFN width as ``intermediate_size``: the loaded model computes
    the gated model's eval-mode ``last_hidden_state``. Where heads were pruned, the directory
    also holds :data:`REMOTE_CODE_FILE` (see :mod:`l0_sparsity.purging.hf_directory`), and
    transformers 5 loads it with ``AutoModel.from_pretrained(directory,
    trust_remote_code=True)``; otherwise it is a plain ``BertModel`` directory. A model without
    its pooler (e.g. :func:`~l0_sparsity.encoders.load_minilm`'s) loads with a newly
    initialised one; the token embeddings do not use it.

    Args:
        model: A ``transformers.BertModel`` gated by :func:`~l0_sparsity.nn.sparsify` (or
            purged, or dense), or a :class:`~l0_sparsity.encoders.SentenceEncoder` holding one
            (only the ``BertModel`` is saved: pool its output yourself); not modified.
        directory: Destination directory (created if needed).
        tokenizer: Optional tokenizer saved into the same directory.

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: If ``model`` is not a ``BertModel`` or a ``SentenceEncoder`` holding one.
        ValueError: If the layers keep different numbers of FFN units (naming each layer's
            width), or a block is not a plain BERT block (naming it).
    """
    bert = _bert_model(model)
    blocks = _blocks_by_layer(bert)
    num_heads = int(bert.config.num_attention_heads)
    head_size = int(bert.config.hidden_size) // num_heads
    kept = [_kept_heads(bert, block) for block in blocks]
    purged = purge_bert(bert)
    widths = [
        _check_shapes(purged, b, len(k), head_size) for b, k in zip(blocks, kept, strict=True)
    ]
    config = purged.config
    config.intermediate_size = _uniform_ffn_width(blocks, widths)
    pruned = {
        i: [h for h in range(num_heads) if h not in set(heads)]
        for i, heads in enumerate(kept)
        if len(heads) < num_heads
    }
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    _set_pruned_heads(config, pruned)
    if pruned:
        (path / REMOTE_CODE_FILE).write_text(_REMOTE_CODE)
    with torch.no_grad():
        purged.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
