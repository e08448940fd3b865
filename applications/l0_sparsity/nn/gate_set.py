"""The gates of many layers handled as one vector: joint sampling and joint expected density.

Each hard-concrete sample or density evaluation is a dozen small kernels. Done layer by layer,
their per-kernel cost (a few microseconds each on CPU, whatever the tensor's size) dominates the
gated training step of small models: on the MNIST MLP, sampling its three layers' gates one by
one costs about as much as all the arithmetic that gating adds. :class:`GateSet` concatenates
the ``log α`` of its layers and runs the sampling, or the ``P(z ≠ 0)`` of the density, once per
set, then hands each layer its slice. The numbers are those of the per-layer methods; only the
random stream differs (one uniform draw covers all layers).

:func:`sample_jointly` makes every training-mode forward pass of a model draw its gates this
way. :func:`~l0_sparsity.nn.sparsifying.sparsify` (and so every model of
:mod:`l0_sparsity.models`) turns it on.

The gate set sits downstream of the gated layers (:mod:`~l0_sparsity.nn.base`): it uses them,
they never use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from l0_sparsity.nn.base import GatedLayer, gated_layers
from l0_sparsity.nn.gates import HardConcrete

__all__ = ["GateSet", "JointSampling", "sample_jointly"]


class GateSet:
    """A fixed list of gated layers whose gates are sampled and measured together.

    Layers are grouped by hard-concrete distribution, dtype and device of ``log α``; each group
    costs one concatenation and one vectorized computation.

    Args:
        layers: The gated layers, e.g. ``[m for _, m in gated_layers(model)]``.

    Raises:
        ValueError: If ``layers`` is empty.

    Example:
        >>> import torch
        >>> from l0_sparsity.nn import GateSet, L0Linear
        >>> layers = [L0Linear(4, 3), L0Linear(3, 2)]
        >>> gates = GateSet(layers)
        >>> [tuple(z.shape) for z in gates.sample()]
        [(4,), (3,)]
        >>> active = gates.expected_active_params()
        >>> torch.allclose(active, torch.stack([m.expected_active_params() for m in layers]))
        True
    """

    def __init__(self, layers: Sequence[GatedLayer]) -> None:
        if not layers:
            raise ValueError("a GateSet needs at least one gated layer.")
        self.layers = list(layers)
        self._plans: dict[tuple[Any, ...], list[_Group]] = {}

    def __len__(self) -> int:
        return len(self.layers)

    def _groups(self) -> list[_Group]:
        """The layers grouped by distribution, dtype and device of ``log α`` (cached)."""
        params = [layer.log_alpha for layer in self.layers]
        key = tuple(
            (layer.distribution, p.dtype, p.device, p.shape)
            for layer, p in zip(self.layers, params, strict=True)
        )
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 8:  # a set whose layers keep changing: keep the cache small
                self._plans.clear()
            members: dict[Any, list[int]] = {}
            for i, (distribution, dtype, device, _) in enumerate(key):
                members.setdefault((distribution, dtype, device), []).append(i)
            plan = self._plans[key] = [
                _Group.build(self.layers, positions) for positions in members.values()
            ]
        return plan

    def _flat_log_alpha(self, group: _Group) -> Tensor:
        parts = [self.layers[i].log_alpha.reshape(-1) for i in group.members]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def sample(self, generator: torch.Generator | None = None) -> list[Tensor]:
        """One reparameterized gate sample per layer, drawn jointly.

        Args:
            generator: Optional random generator for the uniform noise.

        Returns:
            One tensor per layer, shaped like its ``log_alpha``, differentiable w.r.t. it.
        """
        gates: list[Tensor] = [None] * len(self.layers)  # type: ignore[list-item]
        for group in self._groups():
            flat = group.distribution.sample(self._flat_log_alpha(group), generator)
            parts = flat.split(group.sizes) if len(group.members) > 1 else (flat,)
            for i, part, shape in zip(group.members, parts, group.shapes, strict=True):
                gates[i] = part if len(shape) == 1 else part.view(shape)
        return gates

    def expected_active_params(self) -> Tensor:
        """Expected number of active weights of each layer, ``Σ_gates P(z ≠ 0) · group size``.

        Returns:
            A float32 (or wider) vector with one entry per layer, differentiable w.r.t. the gate
            parameters; equal to stacking the layers'
            :meth:`~l0_sparsity.nn.base.GatedLayer.expected_active_params`.
        """
        active: Tensor | None = None
        for group in self._groups():
            flat = self._flat_log_alpha(group)
            dtype = torch.promote_types(flat.dtype, torch.float32)
            positions, weights = group.index(dtype, flat.device)
            weighted = group.distribution.prob_nonzero(flat).to(dtype) * weights
            if active is None:
                active = torch.zeros(len(self.layers), dtype=dtype, device=flat.device)
            active = active.index_add(0, positions.to(active.device), weighted.to(active.device))
        assert active is not None
        return active


@dataclass
class _Group:
    """Layers of a :class:`GateSet` that share a distribution, dtype and device."""

    distribution: HardConcrete
    members: list[int]  # positions in the set
    sizes: list[int]  # gates per member
    shapes: list[torch.Size]  # each member's log α shape
    group_sizes: list[float]  # weights per gate of each member
    _index: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = field(
        default_factory=dict
    )

    @classmethod
    def build(cls, layers: Sequence[GatedLayer], members: list[int]) -> _Group:
        return cls(
            distribution=layers[members[0]].distribution,
            members=members,
            sizes=[layers[i].num_gates for i in members],
            shapes=[layers[i].log_alpha.shape for i in members],
            group_sizes=[float(layers[i].group_size) for i in members],
        )

    def index(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """The set position of each gate's layer, and each gate's group size."""
        cached = self._index.get((dtype, device))
        if cached is None:
            counts = torch.tensor(self.sizes, device=device)
            positions = torch.tensor(self.members, device=device).repeat_interleave(counts)
            weights = torch.tensor(self.group_sizes, dtype=dtype, device=device)
            cached = self._index[(dtype, device)] = (positions, weights.repeat_interleave(counts))
        return cached


class JointSampling:
    """The forward hooks installed by :func:`sample_jointly`; :meth:`remove` uninstalls them.

    Attributes:
        gates: The :class:`GateSet` drawn at each training-mode forward pass.
    """

    def __init__(self, model: nn.Module, gates: GateSet) -> None:
        self.gates = gates
        self._handles = [
            model.register_forward_pre_hook(self._draw),
            model.register_forward_hook(self._discard, always_call=True),
        ]

    def _draw(self, module: nn.Module, args: Any) -> None:
        if not module.training:
            return
        # Layers left in eval mode inside a training model keep their median gates.
        for layer, z in zip(self.gates.layers, self.gates.sample(), strict=True):
            if layer.training:
                layer.offer_gates(z)

    def _discard(self, module: nn.Module, args: Any, output: Any) -> None:
        """Withdraw what this pass did not use (a layer it skipped, or after an exception)."""
        for layer in self.gates.layers:
            layer.offer_gates(None)

    def remove(self) -> None:
        """Uninstall the hooks: each layer samples its own gates again."""
        for handle in self._handles:
            handle.remove()
        for layer in self.gates.layers:
            layer.offer_gates(None)


def sample_jointly(model: nn.Module, layers: Sequence[GatedLayer] | None = None) -> JointSampling:
    """Make each training-mode forward pass of ``model`` draw all its gates in one sample.

    A forward pre-hook draws the gates of every gated layer at once (:meth:`GateSet.sample`)
    and leaves each layer its slice, which the layer takes instead of sampling on its own; a
    forward hook discards what the pass did not use. Eval-mode passes are untouched (median
    gates). The gates' distribution is the same; only the random stream differs from per-layer
    sampling. Calling it again on the same model replaces the previous hooks.

    Not for models whose gated layers run inside activation checkpointing
    (``torch.utils.checkpoint``): the recomputation would draw new gates. Call
    :meth:`JointSampling.remove` on such models (``model.joint_sampling.remove()``).

    Args:
        model: The model whose forward passes draw the gates (the root module, or the module
            that DDP or ``torch.compile`` wraps).
        layers: Its gated layers (default: all of them, :func:`~l0_sparsity.nn.gated_layers`).

    Returns:
        The installed hooks, also stored as ``model.joint_sampling``.

    Raises:
        ValueError: If the model has no gated layers.

    Example:
        >>> import torch
        >>> from l0_sparsity.models import build_model
        >>> model = build_model("mlp")  # sparsify() has installed joint sampling
        >>> logits = model(torch.randn(2, 1, 28, 28))
        >>> model.joint_sampling.remove()  # back to one sample per layer
    """
    chosen = list(layers) if layers is not None else [m for _, m in gated_layers(model)]
    if not chosen:
        raise ValueError("the model has no gated layers (see l0_sparsity.sparsify)")
    previous = getattr(model, "joint_sampling", None)
    if isinstance(previous, JointSampling):
        previous.remove()
    hooks = JointSampling(model, GateSet(chosen))
    model.joint_sampling = hooks  # type: ignore[assignment]
    return hooks
