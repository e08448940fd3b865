r"""One-shot magnitude pruning of heads and FFN units to a MACs budget: distillation's baseline.

The baseline that :func:`~l0_sparsity.encoders.training.distill_minilm` is compared with. It
works on the same gated student (``sparsify(SentenceEncoder(bert), skip="encoder.embeddings.*")``:
one gate per attention head and per FFN hidden unit) but sets the gates once, from the weights'
magnitudes, instead of learning them:

* **Scores** (:func:`magnitude_scores`). A head's score is the L2 norm of all the weights it
  owns: its ``d`` output rows of ``query``, ``key`` and ``value`` (in ``y = x Wᵀ`` layout; the
  head's columns of ``W`` in ``y = x W`` layout) and its ``d`` input columns of the out
  projection ``attention.output.dense``, together (``4 · E · d`` weights). An FFN unit's score is
  the L2 norm of its row of ``intermediate.dense`` and its column of ``output.dense`` together
  (``2 · E`` weights). Biases are not counted. Groups of one kind have the same size, so their
  norms compare across layers; heads and units are never compared with each other.
* **Selection** (:func:`magnitude_pattern`). The same fraction of the heads and of the FFN units
  is pruned, each kind ranked globally (over all layers) by score, lowest first. The fraction
  :math:`f` solves :math:`M_\text{dense} - f \cdot M_\text{variable} = \tau\, M_\text{dense}`
  (:math:`M`: MACs; the variable ones are the heads' and units'); the
  :math:`\mathrm{round}(f \cdot H)` lowest heads go first (fewer if they alone would remove more
  than needed), then units, lowest first, until the purged MACs are at most :math:`\tau`. The
  units take up the heads' rounding, so the purged MACs end less than one unit's MACs below the
  target (for MiniLM at 128 tokens, under 1e-4 of the dense MACs). The MACs are the exact count
  of :class:`~l0_sparsity.measures.ComputeCost` at the test-time gates, checked on the pattern
  (another unit goes while it is over the target).
* **Gates** (:func:`set_gate_pattern`). Each gate's ``log α`` is set to ``±100``: the gate is
  exactly 1 or 0 at test time and in training (its noise cannot move it), so the gated model,
  its purge (:func:`l0_sparsity.purge`) and the exact MACs all follow the pattern.

The fine-tuned baseline trains the purged student's weights with the distillation's budget:
:func:`~l0_sparsity.encoders.finetuning.finetune_encoder`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from l0_sparsity.measures import ComputeCost
from l0_sparsity.nn import L0Linear, gated_layers
from l0_sparsity.nn.bert import HeadGatedLinear, bert_blocks

__all__ = [
    "MagnitudePattern",
    "MagnitudeScores",
    "magnitude_pattern",
    "magnitude_prune",
    "magnitude_scores",
    "set_gate_pattern",
]

GATE_LOG_ALPHA = 100.0  # |log α| of a gate set on or off: exactly 1 / 0, noise or not


@dataclass(frozen=True)
class MagnitudeScores:
    """Magnitude scores of a gated BERT-style student's heads and FFN units.

    Attributes:
        heads: Gated out projection's name → ``(num_heads,)`` scores of its block's heads.
        units: Gated FFN output layer's name → ``(intermediate,)`` scores of its block's units.
    """

    heads: dict[str, Tensor]
    units: dict[str, Tensor]


@dataclass(frozen=True)
class MagnitudePattern:
    """Which heads and FFN units a magnitude pruning keeps, and what the purge costs.

    Attributes:
        keep: Gated layer's name → boolean mask of its gates (``True``: kept), for
            :func:`set_gate_pattern`.
        macs: The purged model's MACs at the pattern, a fraction of the dense model's (exact).
        heads_pruned: Heads switched off, over all blocks.
        heads: Heads, over all blocks.
        units_pruned: FFN units switched off, over all blocks.
        units: FFN units, over all blocks.
    """

    keep: dict[str, Tensor]
    macs: float
    heads_pruned: int
    heads: int
    units_pruned: int
    units: int


def _linear_weight(model: nn.Module, name: str) -> Tensor:
    return model.get_submodule(name).weight.detach()  # type: ignore[return-value]


@torch.no_grad()
def magnitude_scores(student: nn.Module) -> MagnitudeScores:
    """The L2 norm of the weights each head and each FFN unit owns (see the module docstring).

    Args:
        student: A model whose BERT-style blocks :func:`~l0_sparsity.nn.sparsify` gave head and
            FFN-unit gates.

    Returns:
        The scores, keyed by the gated layers' names.

    Raises:
        ValueError: If the model has no gated heads or FFN units.
    """
    heads: dict[str, Tensor] = {}
    units: dict[str, Tensor] = {}
    for block in bert_blocks(student):
        out = student.get_submodule(block.attention_output)
        if isinstance(out, HeadGatedLinear):
            # Squared norms of each head's rows of query, key, value and columns of the output.
            squares = out.weight.detach().square().view(out.out_features, out.num_heads, -1)
            total = squares.sum((0, 2))
            for name in block.projections:
                rows = _linear_weight(student, name).square().view(out.num_heads, -1)
                total = total + rows.sum(1)
            heads[block.attention_output] = total.float().sqrt()
        ffn_out = student.get_submodule(block.output)
        if isinstance(ffn_out, L0Linear) and ffn_out.structured:
            column = _linear_weight(student, block.output).square().sum(0)
            row = _linear_weight(student, block.intermediate).square().sum(1)
            units[block.output] = (column + row).float().sqrt()
    if not heads and not units:
        raise ValueError(
            f"{type(student).__name__} has no gated BERT-style heads or FFN units; gate it "
            'with sparsify(model, skip="encoder.embeddings.*") first.'
        )
    return MagnitudeScores(heads, units)


@torch.no_grad()
def set_gate_pattern(student: nn.Module, keep: Mapping[str, Tensor]) -> None:
    """Set gates to exactly 1 (kept) or 0 (pruned), at test time and in training.

    In place: each named layer's ``log α`` becomes ``+100`` where ``keep`` is true and ``-100``
    elsewhere; layers not named are left as they are.

    Args:
        student: A gated model.
        keep: Gated layer's name → boolean mask of the shape of its gates.

    Raises:
        KeyError: If a name is not a gated layer of ``student``.
        ValueError: If a mask's shape differs from the layer's gates.
    """
    layers = dict(gated_layers(student))
    for name, mask in keep.items():
        if name not in layers:
            raise KeyError(f"{name!r} is not a gated layer of {type(student).__name__}")
        log_alpha = layers[name].log_alpha
        if tuple(mask.shape) != tuple(log_alpha.shape):
            raise ValueError(
                f"the mask of {name!r} has shape {tuple(mask.shape)}; its gates have "
                f"{tuple(log_alpha.shape)}"
            )
        on = torch.full_like(log_alpha, GATE_LOG_ALPHA)
        log_alpha.copy_(torch.where(mask.to(log_alpha.device, torch.bool), on, -on))


@contextlib.contextmanager
def _gates_restored(student: nn.Module) -> Iterator[None]:
    """Put every gate's ``log α`` back as it was on leaving."""
    saved = [(layer, layer.log_alpha.detach().clone()) for _, layer in gated_layers(student)]
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, log_alpha in saved:
                layer.log_alpha.copy_(log_alpha)


def _ranked(scores: Mapping[str, Tensor]) -> list[tuple[str, int]]:
    """``(layer, index)`` of every group, lowest score first (ties: module order, index)."""
    flat = [(float(s), n, i) for n, values in scores.items() for i, s in enumerate(values)]
    order = sorted(range(len(flat)), key=lambda k: (flat[k][0], k))
    return [(flat[k][1], flat[k][2]) for k in order]


def _savings(cost: ComputeCost, student: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """MACs one gate of each named layer saves (every other gate kept): per-layer constants."""
    layers = dict(gated_layers(student))
    everything = {
        name: torch.ones(layer.log_alpha.shape, dtype=torch.bool) for name, layer in layers.items()
    }
    saved = {}
    for name in names:
        mask = torch.ones_like(everything[name])
        mask.view(-1)[0] = False
        set_gate_pattern(student, {**everything, name: mask})
        saved[name] = cost.dense_macs - cost.test_macs()
    return saved


def magnitude_pattern(
    student: nn.Module,
    macs_target: float,
    example_input: Tensor | tuple[int, ...],
    *,
    scores: MagnitudeScores | None = None,
) -> MagnitudePattern:
    """The heads and FFN units to keep so that the purged MACs are at most the target.

    The rule of the module docstring: the same fraction of heads and of units, the lowest
    scores over all layers first, units last until the exact purged MACs are at most
    ``macs_target``. The student's gates are left as they were.

    Args:
        student: A gated BERT-style model (see :func:`magnitude_scores`).
        macs_target: Budget on the purged model's MACs, a fraction of the dense model's.
        example_input: Token ids ``(batch, L)`` or their shape: the sequence length at which
            MACs are counted (attention's grow as ``L²``).
        scores: The groups' scores; by default :func:`magnitude_scores` of ``student``.

    Returns:
        The pattern and its exact purged MACs fraction.

    Raises:
        ValueError: If ``macs_target`` is not in ``(0, 1]`` or below the floor of MACs that no
            gate pattern removes.
    """
    if not 0.0 < macs_target <= 1.0:
        raise ValueError(f"macs_target must be in (0, 1], got {macs_target}")
    scores = magnitude_scores(student) if scores is None else scores
    cost = ComputeCost(student, example_input)
    budget = macs_target * cost.dense_macs
    if budget < cost.fixed_macs:
        raise ValueError(
            f"macs_target={macs_target} is below the floor "
            f"{cost.fixed_macs / cost.dense_macs:.4f} (every head and unit pruned)"
        )
    with _gates_restored(student):
        saving = _savings(cost, student, [*scores.heads, *scores.units])
        heads, units = _ranked(scores.heads), _ranked(scores.units)
        variable = sum(
            saving[n] * len(v) for n, v in (*scores.heads.items(), *scores.units.items())
        )
        need = cost.dense_macs - budget
        n_heads = min(len(heads), round(len(heads) * need / variable)) if variable else 0
        while n_heads and sum(saving[n] for n, _ in heads[:n_heads]) > need:
            n_heads -= 1  # the heads alone overshoot: the units make up the rest
        order = heads[:n_heads] + units + heads[n_heads:]  # the pruning order
        removed, pruned = sum(saving[n] for n, _ in heads[:n_heads]), n_heads
        while removed < need and pruned < len(order):
            removed += saving[order[pruned][0]]
            pruned += 1
        layers = dict(gated_layers(student))
        while True:  # the exact count decides (e.g. a purge that keeps a dead layer's group)
            keep = {n: torch.ones(layers[n].log_alpha.shape, dtype=torch.bool) for n in saving}
            for name, index in order[:pruned]:
                keep[name][index] = False
            set_gate_pattern(student, keep)
            macs = cost.test_macs()
            if macs <= budget or pruned == len(order):
                break
            pruned += 1
    cut = set(order[:pruned])
    return MagnitudePattern(
        keep=keep,
        macs=macs / cost.dense_macs,
        heads_pruned=sum(group in cut for group in heads),
        heads=len(heads),
        units_pruned=sum(group in cut for group in units),
        units=len(units),
    )


def magnitude_prune(
    student: nn.Module, macs_target: float, example_input: Tensor | tuple[int, ...]
) -> MagnitudePattern:
    """Score, select and set the gates: :func:`magnitude_pattern`, then :func:`set_gate_pattern`.

    Args:
        student: A gated BERT-style model; its gates are set in place.
        macs_target: Budget on the purged model's MACs, a fraction of the dense model's.
        example_input: Token ids ``(batch, L)`` or their shape (the MACs' sequence length).

    Returns:
        The pattern set.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertModel
        >>> from l0_sparsity.encoders import SentenceEncoder, magnitude_prune
        >>> from l0_sparsity.nn import sparsify
        >>> _ = torch.manual_seed(0)
        >>> config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
        ...                     num_attention_heads=4, intermediate_size=64)
        >>> bert = BertModel(config, add_pooling_layer=False)
        >>> student = sparsify(SentenceEncoder(bert), skip="encoder.embeddings.*")
        >>> pattern = magnitude_prune(student, 0.5, (1, 16))
        >>> 0.48 < pattern.macs <= 0.5
        True
    """
    pattern = magnitude_pattern(student, macs_target, example_input)
    set_gate_pattern(student, pattern.keep)
    return pattern
