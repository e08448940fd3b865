r"""The sparsity problem: cross-entropy under density constraints (Gallego-Posada et al., 2022).

.. math::

    \min_{\theta,\ \log\alpha}\ \mathbb{E}_z\left[\mathrm{CE}(\theta \odot z)\right]
    + \frac{w}{2}\,\mathbb{E}\|\theta \odot z\|^2
    \quad \text{s.t.} \quad d(\log\alpha) - \epsilon \le 0,

where :math:`d` is the expected density of the gated weights, model-wise (one target
:math:`\epsilon`) or layer-wise (one target per gated layer). The penalized baseline drops the
constraint and adds :math:`\lambda_{pen}\, d` to the loss, with a fixed :math:`\lambda_{pen}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

import conopt
from l0_sparsity.measures import expected_l2
from l0_sparsity.nn import GateSet, gated_layers


def _check_target(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{what} must be a density in (0, 1], got {value}.")
    return value


class SparsityProblem(conopt.ConstrainedProblem):
    r"""Cross-entropy of a gated model under a model-wise or layer-wise density constraint.

    Exactly one of ``target``, ``layer_targets`` or ``penalty`` selects the mode.

    Args:
        model: A model with gated layers (see :mod:`l0_sparsity.nn`).
        target: Model-wise target density :math:`\epsilon \in (0, 1]`: constraint ``density``.
        layer_targets: One target per gated layer (a sequence in the order of
            :func:`~l0_sparsity.nn.base.gated_layers`, or a mapping from layer name): vector
            constraint ``layer_density``.
        penalty: The penalized baseline: adds ``penalty * density`` to the loss, no constraint.
        weight_decay: Coefficient :math:`w` of the expected L2 norm of the gated weights, added to
            the loss (the L0 version of weight decay).

    Example:
        >>> import torch
        >>> from l0_sparsity.models import build_model
        >>> from l0_sparsity.problem import SparsityProblem
        >>> model = build_model("mlp")
        >>> problem = SparsityProblem(model, target=0.3)
        >>> state = problem.evaluate(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]))
        >>> sorted(name for name, _ in problem.named_constraints())
        ['density']
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        target: float | None = None,
        layer_targets: Sequence[float] | Mapping[str, float] | None = None,
        penalty: float | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        chosen = [
            k
            for k, v in {
                "target": target,
                "layer_targets": layer_targets,
                "penalty": penalty,
            }.items()
            if v is not None
        ]
        if len(chosen) != 1:
            raise ValueError(
                "give exactly one of target (model-wise), layer_targets (layer-wise) or "
                f"penalty (penalized baseline); got {chosen or 'none'}."
            )
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
        layers = gated_layers(model)
        if not layers:
            raise ValueError("the model has no gated layers; build it gated or use sparsify().")
        self.layer_names = [name for name, _ in layers]
        self._gates = GateSet([layer for _, layer in layers])
        self.register_buffer(
            "_sizes",
            torch.tensor([float(layer.num_gated_params) for _, layer in layers]),
            persistent=False,
        )
        self._total = float(self._sizes.sum())
        # The model is not a sub-module: its parameters belong to the primal optimizer, and the
        # problem's state_dict holds only multipliers.
        self._model = [model]
        self.weight_decay = weight_decay
        self.penalty = None if penalty is None else float(penalty)
        if self.penalty is not None and self.penalty < 0:
            raise ValueError(f"penalty must be >= 0, got {penalty}.")
        self.register_buffer("targets", torch.empty(0))
        if target is not None:
            self.targets = torch.tensor(_check_target(target, "target"))
            self.density = conopt.Constraint("<=", reduction=None)
        elif layer_targets is not None:
            self.targets = torch.tensor(self._layer_targets(layer_targets))
            self.layer_density = conopt.Constraint(
                "<=", shape=len(self.layer_names), reduction=None
            )

    def _layer_targets(self, targets: Sequence[float] | Mapping[str, float]) -> list[float]:
        names = self.layer_names
        if isinstance(targets, Mapping):
            unknown = sorted(set(targets) - set(names))
            missing = sorted(set(names) - set(targets))
            if unknown or missing:
                raise ValueError(
                    f"layer_targets must name every gated layer; unknown: {unknown}, "
                    f"missing: {missing}; gated layers: {names}."
                )
            values = [targets[name] for name in names]
        else:
            values = list(targets)
            if len(values) != len(names):
                raise ValueError(
                    f"layer_targets has {len(values)} values, but the model has {len(names)} "
                    f"gated layers: {names}."
                )
        return [
            _check_target(v, f"layer target for {n!r}") for v, n in zip(values, names, strict=True)
        ]

    @property
    def model(self) -> nn.Module:
        """The gated model (possibly wrapped, e.g. in DDP or ``torch.compile``)."""
        return self._model[0]

    def set_model(self, model: nn.Module) -> None:
        """Evaluate another wrapper of the same gated layers (e.g. the model without its DDP).

        (A method, not a property setter: ``nn.Module.__setattr__`` would register the model as
        a sub-module instead.)

        Args:
            model: The model to evaluate from now on.

        Raises:
            ValueError: If ``model``'s gated layers are not the very layers of this problem.
        """
        mine = [id(layer) for layer in self._gates.layers]
        theirs = [id(layer) for _, layer in gated_layers(model)]
        if mine != theirs:
            raise ValueError(
                f"{type(model).__name__} does not hold this problem's gated layers "
                f"{self.layer_names}; build a new SparsityProblem for another model."
            )
        self._model = [model]

    @property
    def mode(self) -> str:
        """``"model-wise"``, ``"layer-wise"`` or ``"penalized"``."""
        if self.penalty is not None:
            return "penalized"
        return "model-wise" if self.targets.dim() == 0 else "layer-wise"

    def densities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The expected model-wise density and the vector of layer-wise densities."""
        active = self._gates.expected_active_params()
        return active.sum() / self._total, active / self._sizes

    def evaluate(self, inputs: torch.Tensor, targets: torch.Tensor) -> conopt.ProblemState:
        """Loss and density constraint on one batch.

        ``extras`` holds ``logits``, ``cross_entropy``, ``density`` (model-wise) and
        ``layer_densities``, all for logging.
        """
        logits = self.model(inputs)
        cross_entropy = nn.functional.cross_entropy(logits.float(), targets)
        loss = cross_entropy
        if self.weight_decay:
            loss = loss + 0.5 * self.weight_decay * expected_l2(self.model)
        density, per_layer = self.densities()
        constraints: dict[conopt.Constraint, torch.Tensor] = {}
        if self.penalty is not None:
            loss = loss + self.penalty * density
        elif self.targets.dim() == 0:
            constraints[self.density] = density - self.targets
        else:
            constraints[self.layer_density] = per_layer - self.targets
        extras = {
            "logits": logits.detach(),
            "cross_entropy": cross_entropy.detach(),
            "density": density.detach(),
            "layer_densities": per_layer.detach(),
        }
        return conopt.ProblemState(loss=loss, constraints=constraints, extras=extras)
