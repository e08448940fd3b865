"""The per-step fast paths give the same steps as the general ones, and keep reports honest.

* Scalars unbound from one vector are read as that vector (no copy, one autograd edge).
* A lone value that is an operation's output is not copied; one that aliases a parameter is.
"""

import torch
from torch import nn

import conopt

torch.set_num_threads(1)

COUNT = 6


class Entries(conopt.ConstrainedProblem):
    """min ‖x - 1‖² s.t. x_i - 0.5 <= 0, one named constraint per entry."""

    def __init__(self, unbind: bool) -> None:
        super().__init__()
        self.unbind = unbind
        self.each = nn.ModuleList(conopt.Constraint("<=") for _ in range(COUNT))

    def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
        g = x - 0.5
        # unbind: views of one fresh vector; otherwise: separate fresh scalars.
        values = g.unbind() if self.unbind else [g[i] * 1.0 for i in range(COUNT)]
        return conopt.ProblemState(
            (x - 1).square().sum(), dict(zip(self.each, values, strict=True))
        )


def trajectory(unbind: bool, packed: bool) -> tuple[torch.Tensor, dict, list]:
    problem = Entries(unbind)
    if packed:
        problem.pack_multipliers()
    x = torch.linspace(0.0, 1.0, COUNT, dtype=torch.float64).requires_grad_()
    optimizer = conopt.optim.SimultaneousGDA(
        problem,
        torch.optim.SGD([x], lr=0.1),
        torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True),
        dual_restarts=True,
    )
    reports = [optimizer.step(lambda: problem.evaluate(x)) for _ in range(10)]
    values = [{n: r.strict_value.clone() for n, r in rep.constraints.items()} for rep in reports]
    return x.detach(), problem.state_dict(), values


def test_unbound_scalars_give_the_steps_of_separate_scalars_bit_for_bit():
    for packed in (False, True):
        x_a, state_a, values_a = trajectory(unbind=True, packed=packed)
        x_b, state_b, values_b = trajectory(unbind=False, packed=packed)
        assert torch.equal(x_a, x_b)
        assert all(torch.equal(state_a[k], v) for k, v in state_b.items())
        assert all(
            torch.equal(a[n], b[n]) for a, b in zip(values_a, values_b, strict=True) for n in a
        )


class ParameterValue(conopt.ConstrainedProblem):
    """The constraint's value is the parameter itself (or a view of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.bound = conopt.Constraint("<=", shape=2)

    def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
        return conopt.ProblemState(x.square().sum(), {self.bound: x})


def test_a_value_aliasing_a_parameter_is_reported_as_it_was_before_the_primal_step():
    problem = ParameterValue()
    x = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    optimizer = conopt.optim.SimultaneousGDA(
        problem,
        torch.optim.SGD([x], lr=0.25),
        torch.optim.SGD(problem.dual_parameters(), lr=1.0, maximize=True),
        dual_restarts=True,
    )
    report = optimizer.step(lambda: problem.evaluate(x))
    assert report.constraints["bound"].strict_value.tolist() == [1.0, -1.0]
    assert x.tolist() != [1.0, -1.0]  # the primal step moved the parameter
    # the dual step used the values before the primal step: λ = [0 + 1, restarted] = [1, 0]
    assert problem.bound.multiplier.weight.tolist() == [1.0, 0.0]


def test_scalars_unbound_from_a_parameter_are_copied_before_the_primal_step():
    class Unbound(conopt.ConstrainedProblem):
        def __init__(self) -> None:
            super().__init__()
            self.each = nn.ModuleList(conopt.Constraint("<=") for _ in range(2))

        def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
            return conopt.ProblemState(
                x.square().sum(), dict(zip(self.each, x.unbind(), strict=True))
            )

    problem = Unbound()
    x = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    optimizer = conopt.optim.SimultaneousGDA(
        problem,
        torch.optim.SGD([x], lr=0.25),
        torch.optim.SGD(problem.dual_parameters(), lr=1.0, maximize=True),
        dual_restarts=True,
    )
    report = optimizer.step(lambda: problem.evaluate(x))
    assert [report.constraints[f"each.{i}"].strict_value.item() for i in range(2)] == [1.0, -1.0]
    assert [problem.each[i].multiplier.weight.item() for i in range(2)] == [1.0, 0.0]
