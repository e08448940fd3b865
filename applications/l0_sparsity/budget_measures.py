"""The measures behind a sparsity problem's compute budgets: built once, read at every step.

:class:`BudgetMeasures` holds what :class:`~l0_sparsity.problem.SparsityProblem` needs for its
``macs``, ``params`` and ``latency`` budgets: the :class:`~l0_sparsity.measures.ComputeCost` of
the model at an example input (each budget checked against the floor of the ungated layers when
it is built) and the fitted :class:`~l0_sparsity.measures.LatencyModel`. It gives each budget's
expected fraction of the dense model (differentiable: the primal value of the constraint) and
its fraction at the test-time gates (the purged model's: the strict value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from l0_sparsity.measures import ComputeCost, LatencyModel

__all__ = ["BUDGETS", "BudgetMeasures", "check_budget", "unwrapped"]

BUDGETS: Mapping[str, str] = {"macs": "MACs", "params": "parameters", "latency": "latency"}
"""The compute budgets, by constraint name (keyword ``<name>_target``), and what they count."""


def check_budget(value: float, name: str) -> float:
    """``value`` as a float, refused unless it is a fraction in ``(0, 1]``.

    Args:
        value: The target fraction of the dense model's cost.
        name: The budget's name (a key of :data:`BUDGETS`), for the message.

    Returns:
        The fraction.

    Raises:
        ValueError: If it is out of range.
    """
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"{name}_target must be a fraction of the dense model's {BUDGETS[name]} in (0, 1], "
            f"got {value}."
        )
    return value


def unwrapped(model: nn.Module) -> nn.Module:
    """``model`` without its DDP / DataParallel or ``torch.compile`` wrappers.

    Args:
        model: A model, possibly wrapped.

    Returns:
        The innermost module.
    """
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _cuda_devices(model: nn.Module) -> list[int]:
    """The CUDA devices ``model``'s parameters live on (whose generators a forward may use)."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _compute_cost(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[int] | None,
    budgets: Mapping[str, float],
) -> ComputeCost | None:
    """The compute measures at ``example_input``, with each budget checked against its floor."""
    if example_input is None:
        if budgets:
            raise ValueError(
                f"{', '.join(f'{name}_target' for name in budgets)} needs example_input "
                "(an input batch or its shape, e.g. (1, 3, 32, 32)) to measure the model's "
                "compute."
            )
        return None
    if not isinstance(example_input, torch.Tensor):
        example_input = tuple(int(size) for size in example_input)
    # Measuring runs the model once: keep the run's random streams where they were.
    with torch.random.fork_rng(devices=_cuda_devices(model)):
        cost = ComputeCost(unwrapped(model), example_input)
    for name, value in budgets.items():
        fixed, dense = getattr(cost, f"fixed_{name}"), getattr(cost, f"dense_{name}")
        floor = fixed / dense
        if value < floor:
            shown = math.ceil(floor * 1e4) / 1e4
            raise ValueError(
                f"{name}_target {value:g} is below the floor {shown:.4f} of the ungated "
                f"layers (with the one group per layer that a purge always keeps, {fixed:,} "
                f"of the dense model's {dense:,} {BUDGETS[name]} remain whatever the "
                f"gates); give a {name}_target of at least {shown:.4f}."
            )
    return cost


def _checked_latency(
    latency_model: LatencyModel | None, target: float | None
) -> LatencyModel | None:
    """The latency model, with a latency budget checked against its floor."""
    if target is not None:
        if latency_model is None:
            raise ValueError(
                "latency_target needs latency_model: a LatencyModel of this model "
                "(l0_sparsity.measures.LatencyModel), which measures its layers on the device."
            )
        latency_model.check_target(target)
    return latency_model


class BudgetMeasures:
    """The compute and latency measures of a gated model, with its budgets checked.

    Args:
        model: The gated model (possibly wrapped in DDP or ``torch.compile``).
        budgets: Each budget's target fraction by name (keys of :data:`BUDGETS`).
        example_input: An input batch, or its shape, at which MACs and parameters are
            measured; required with a ``macs`` or ``params`` budget.
        latency_model: The model's fitted latency model; required with a ``latency`` budget.

    Raises:
        ValueError: For a budget without its measure, or below the floor of the ungated
            layers (the message gives that floor).
    """

    def __init__(
        self,
        model: nn.Module,
        budgets: Mapping[str, float],
        example_input: torch.Tensor | Sequence[int] | None,
        latency_model: LatencyModel | None,
    ) -> None:
        compute_budgets = {k: v for k, v in budgets.items() if k != "latency"}
        self.cost = _compute_cost(model, example_input, compute_budgets)
        self.latency_model = _checked_latency(latency_model, budgets.get("latency"))

    def require_cost(self) -> ComputeCost:
        """The compute measures.

        Returns:
            The :class:`~l0_sparsity.measures.ComputeCost`.

        Raises:
            ValueError: If there are none (no ``example_input`` was given).
        """
        if self.cost is None:
            raise ValueError(
                "this SparsityProblem was built without example_input: pass one (an input "
                "batch or its shape) to measure the model's compute."
            )
        return self.cost

    def expected(self) -> dict[str, torch.Tensor]:
        """Expected fractions of the dense model: ``macs``, ``params``, and ``latency``.

        ``latency`` only with a latency model, and only it without compute measures.

        Returns:
            Differentiable float32 scalars (only ``latency`` without compute measures).

        Raises:
            ValueError: With neither compute measures nor a latency model.
        """
        fractions: dict[str, torch.Tensor] = {}
        if self.cost is not None or self.latency_model is None:
            cost = self.require_cost()
            macs, params = cost.expected().float().unbind()
            fractions = {"macs": macs / cost.dense_macs, "params": params / cost.dense_params}
        if self.latency_model is not None:
            fractions["latency"] = self.latency_model.expected_fraction().float()
        return fractions

    @torch.no_grad()
    def test(self) -> dict[str, float]:
        """The purged model's MACs and parameters at the test-time gates, as fractions of dense.

        Returns:
            ``{"macs": ..., "params": ...}``.

        Raises:
            ValueError: Without compute measures.
        """
        cost = self.require_cost()
        return {
            name: getattr(cost, f"test_{name}")() / getattr(cost, f"dense_{name}")
            for name in ("macs", "params")
        }

    @torch.no_grad()
    def strict_value(self, name: str) -> float:
        """A budget's fraction at the test-time gates (latency: as the latency model predicts).

        Args:
            name: The budget (a key of :data:`BUDGETS`).

        Returns:
            The fraction of the dense model.
        """
        if name == "latency":
            assert self.latency_model is not None
            return self.latency_model.test_fraction()
        cost = self.require_cost()
        return getattr(cost, f"test_{name}")() / getattr(cost, f"dense_{name}")
