r"""The sparsity problem: cross-entropy under density and compute-budget constraints.

.. math::

    \min_{\theta,\ \log\alpha}\ \mathbb{E}_z\left[\mathrm{CE}(\theta \odot z)\right]
    + \frac{w}{2}\,\mathbb{E}\|\theta \odot z\|^2
    \quad \text{s.t.} \quad d(\log\alpha) - \epsilon \le 0,
    \quad \frac{\mathbb{E}[\mathrm{cost}_k]}{\mathrm{dense}_k} - \tau_k \le 0,

where :math:`d` is the expected density of the gated weights (Gallego-Posada et al., 2022),
model-wise (one target :math:`\epsilon`) or layer-wise (one target per gated layer), and each
compute budget :math:`k` (MACs, parameters of the purged model,
:class:`~l0_sparsity.measures.ComputeCost`; its latency,
:class:`~l0_sparsity.measures.LatencyModel`) bounds its expected cost as a fraction
:math:`\tau_k` of the dense model's. The penalized baseline drops the density constraint and adds
:math:`\lambda_{pen}\, d` to the loss, with a fixed :math:`\lambda_{pen}`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn

import conopt
from l0_sparsity.budget_measures import BUDGETS, BudgetMeasures, check_budget
from l0_sparsity.measures import ComputeCost, LatencyModel, expected_l2
from l0_sparsity.nn import GateSet, gated_layers

__all__ = ["BUDGETS", "SparsityProblem"]

_MODES = {"target": "model-wise", "layer_targets": "layer-wise", "penalty": "penalized"}


def _check_target(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{what} must be a density in (0, 1], got {value}.")
    return value


class SparsityProblem(conopt.ConstrainedProblem):
    r"""Cross-entropy of a gated model under density and compute-budget constraints.

    At most one of ``target``, ``layer_targets`` or ``penalty`` selects the density mode; none
    is needed when a compute budget (``macs_target``, ``params_target``, ``latency_target``) or
    ``macs_penalty`` is given. The budgets and the MACs penalty combine with each other and
    with any density mode.

    Args:
        model: A model with gated layers (see :mod:`l0_sparsity.nn`).
        target: Model-wise target density :math:`\epsilon \in (0, 1]`: constraint ``density``.
        layer_targets: One target per gated layer (a sequence in the order of
            :func:`~l0_sparsity.nn.base.gated_layers`, or a mapping from layer name): vector
            constraint ``layer_density``.
        penalty: The penalized baseline: adds ``penalty * density`` to the loss, no constraint.
        macs_penalty: The penalized compute baseline: adds ``macs_penalty`` times the expected
            MACs (a fraction of the dense model's) to the loss, no constraint; needs
            ``example_input``.
        macs_target: Budget on the expected MACs per example of the purged model, as a fraction
            of the dense model's in :math:`(0, 1]`: constraint ``macs``.
        params_target: Budget on the expected parameters of the purged model, as a fraction of
            the dense model's: constraint ``params``.
        latency_target: Budget on the expected latency of the purged model, as a fraction of
            the dense model's predicted by ``latency_model``: constraint ``latency``.
        latency_model: The fitted latency model of ``model``
            (:class:`~l0_sparsity.measures.LatencyModel`); required with ``latency_target``.
        strict_budgets: Make each budget a proxy constraint: the expected fraction drives the
            primal step (it is differentiable), the purged model's fraction at the test-time
            gates drives the multiplier's step (and dual restarts), so that training stops at
            the purged model's budget rather than at its expectation. For latency the strict
            value is the model's prediction at the test-time gates.
        budget_tolerance: With ``strict_budgets``, how far below its budget (a fraction of the
            dense model) a purged model still counts as *on* it: its strict value is then 0, so
            the multiplier neither moves nor restarts and keeps the pressure that brought the
            model there. The purged cost moves in steps (one filter of a LeNet-5 is 0.04 of its
            MACs); restarted as soon as the model is under, the multiplier releases it and the
            task loss lifts it back over, which leaves the last evaluation on either side. 0:
            the plain restarts.
        example_input: An input batch, or its shape (batch dimension included), at which the
            compute measures are built; required with a budget. Given without one, the
            measures are built for :meth:`expected_compute` and :meth:`test_compute` only.
        weight_decay: Coefficient :math:`w` of the expected L2 norm of the gated weights, added to
            the loss (the L0 version of weight decay).

    Raises:
        ValueError: For no density mode and no budget, more than one density mode, a value out
            of range, a budget without ``example_input`` (``latency_model`` for latency), or a
            budget below what the ungated layers alone cost (the message gives that floor).

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
        macs_penalty: float | None = None,
        macs_target: float | None = None,
        params_target: float | None = None,
        latency_target: float | None = None,
        latency_model: LatencyModel | None = None,
        strict_budgets: bool = False,
        budget_tolerance: float = 0.01,
        example_input: torch.Tensor | Sequence[int] | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        budgets = {
            name: check_budget(value, name)
            for name, value in (
                ("macs", macs_target),
                ("params", params_target),
                ("latency", latency_target),
            )
            if value is not None
        }
        modes = {"target": target, "layer_targets": layer_targets, "penalty": penalty}
        chosen = [k for k, v in modes.items() if v is not None]
        if len(chosen) > 1 or not (chosen or budgets or macs_penalty is not None):
            raise ValueError(
                "give exactly one of target (model-wise), layer_targets (layer-wise) or "
                "penalty (penalized baseline), or none of them with a compute budget "
                "(macs_target, params_target, latency_target) or macs_penalty; got "
                f"{chosen or 'none'}."
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
        self.macs_penalty = None if macs_penalty is None else float(macs_penalty)
        for name, value in (("penalty", self.penalty), ("macs_penalty", self.macs_penalty)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if self.macs_penalty is not None and example_input is None:
            raise ValueError("macs_penalty needs example_input (an input batch or its shape).")
        self._mode = _MODES[chosen[0]] if chosen else "budget-only"
        self.register_buffer("targets", torch.empty(0))
        if target is not None:
            self.targets = torch.tensor(_check_target(target, "target"))
            self.density = conopt.Constraint("<=", reduction=None)
        elif layer_targets is not None:
            self.targets = torch.tensor(self._layer_targets(layer_targets))
            self.layer_density = conopt.Constraint(
                "<=", shape=len(self.layer_names), reduction=None
            )
        self._budgets = budgets
        self.strict_budgets = strict_budgets
        if not 0.0 <= budget_tolerance < 1.0:
            raise ValueError(f"budget_tolerance must be in [0, 1), got {budget_tolerance}.")
        self.budget_tolerance = float(budget_tolerance)
        self._measures = BudgetMeasures(model, budgets, example_input, latency_model)
        for name in budgets:  # parameter-only constraints: the same value on every rank
            setattr(self, name, conopt.Constraint("<=", reduction=None))

    def _strict_value(self, name: str) -> float:
        """A budget's purged fraction minus its target; 0 within ``budget_tolerance`` below."""
        value = self._measures.strict_value(name) - self._budgets[name]
        return 0.0 if -self.budget_tolerance <= value < 0.0 else value

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
        """The density mode.

        ``"model-wise"``, ``"layer-wise"``, ``"penalized"``, or ``"budget-only"`` (no density
        term: compute budgets, or the MACs penalty, only).
        """
        return self._mode

    @property
    def budgets(self) -> dict[str, float]:
        """The compute budgets' targets by constraint name (``"macs"``, ``"params"``), if any."""
        return dict(self._budgets)

    @property
    def compute_cost(self) -> ComputeCost | None:
        """The compute measures (``None`` for a problem built without ``example_input``)."""
        return self._measures.cost

    def densities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The expected model-wise density and the vector of layer-wise densities."""
        active = self._gates.expected_active_params()
        return active.sum() / self._total, active / self._sizes

    @property
    def latency_model(self) -> LatencyModel | None:
        """The latency model (``None`` for a problem built without one)."""
        return self._measures.latency_model

    def expected_compute(self) -> dict[str, torch.Tensor]:
        """The expected MACs, parameters and latency of the purged model, as fractions of dense.

        One evaluation of :class:`~l0_sparsity.measures.ComputeCost` for MACs and parameters,
        in full precision under autocast (a constraint value stays float32); ``"latency"``
        only with a latency model (:class:`~l0_sparsity.measures.LatencyModel`), and only it
        for a problem built without ``example_input``.

        Returns:
            ``{"macs": ..., "params": ...[, "latency": ...]}``: differentiable scalars in
            ``[0, 1]`` (the values that the budget constraints bound).

        Raises:
            ValueError: If the problem was built without ``example_input`` and without a
                latency model.
        """
        with torch.autocast(self._sizes.device.type, enabled=False):
            return self._measures.expected()

    @torch.no_grad()
    def test_compute(self) -> dict[str, float]:
        """The purged model's MACs and parameters at the test-time gates, as fractions of dense.

        Returns:
            ``{"macs": ..., "params": ...}``: exact fractions of the model that
            :func:`l0_sparsity.purge` makes now.

        Raises:
            ValueError: If the problem was built without ``example_input``.
        """
        return self._measures.test()

    def evaluate(self, inputs: torch.Tensor, targets: torch.Tensor) -> conopt.ProblemState:
        """Loss, density constraint and budget constraints on one batch.

        The cross-entropy of the model's logits, given to :meth:`constrained_state`.
        ``extras`` holds ``logits`` and ``cross_entropy`` besides that method's, all for
        logging.
        """
        logits = self.model(inputs)
        cross_entropy = nn.functional.cross_entropy(logits.float(), targets)
        state = self.constrained_state(cross_entropy)
        extras = {"logits": logits.detach(), "cross_entropy": cross_entropy.detach()}
        return dataclasses.replace(state, extras={**extras, **state.extras})

    def constrained_state(self, task_loss: torch.Tensor) -> conopt.ProblemState:
        """The problem's state around a task loss computed elsewhere (e.g. by a framework).

        The loss is ``task_loss`` plus the expected L2 term and, for the penalized baselines,
        the density or MACs penalty; the constraints are the density and budget constraints. This is
        how a sparsity budget joins a training loop that computes its own loss (a Lightning
        ``training_step``, a Hugging Face ``Trainer``).

        Args:
            task_loss: The scalar task loss on the batch.

        Returns:
            The state; ``extras`` holds ``density`` (model-wise), ``layer_densities`` and each
            budget's expected fraction by name (``macs``, ``params``, ``latency``), all for
            logging. With ``strict_budgets`` each budget is a proxy constraint whose dual value
            is the fraction at the test-time gates.
        """
        loss = task_loss
        if self.weight_decay:
            loss = loss + 0.5 * self.weight_decay * expected_l2(self.model)
        density, per_layer = self.densities()
        constraints: dict[conopt.Constraint, torch.Tensor | conopt.ConstraintState] = {}
        if self.penalty is not None:
            loss = loss + self.penalty * density
        elif self._mode == "model-wise":
            constraints[self.density] = density - self.targets
        elif self._mode == "layer-wise":
            constraints[self.layer_density] = per_layer - self.targets
        extras = {"density": density.detach(), "layer_densities": per_layer.detach()}
        needs_compute = bool(self._budgets) or self.macs_penalty is not None
        fractions = self.expected_compute() if needs_compute else {}
        if self.macs_penalty is not None:
            loss = loss + self.macs_penalty * fractions["macs"]
            extras["macs"] = fractions["macs"].detach()
        for name, budget in self._budgets.items():
            value = fractions[name] - budget
            constraints[getattr(self, name)] = (
                conopt.ConstraintState(
                    value, strict_value=value.detach().new_tensor(self._strict_value(name))
                )
                if self.strict_budgets
                else value
            )
            extras[name] = fractions[name].detach()
        return conopt.ProblemState(loss=loss, constraints=constraints, extras=extras)
