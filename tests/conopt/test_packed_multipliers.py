"""Packed multipliers: the same steps as unpacked ones, number for number, and the same checkpoints.

A problem with many scalar inequality constraints, a vector inequality and scalar equalities is
stepped twice from the same start, once with ``pack_multipliers()`` and once without; every
iterate, multiplier, report and optimizer state must be equal bit for bit.
"""

import copy

import pytest
import torch
from torch import nn

import conopt
from conopt.optim import AlternatingGDA, Extragradient, ExtraSGD, SimultaneousGDA, nuPI

torch.set_num_threads(1)

STEPS = 12
INEQUALITIES = 10
EQUALITIES = 3


class Many(conopt.ConstrainedProblem):
    """min Σ sin(x) + ‖x - 1‖² s.t. a_i·x <= b_i (scalars), A x <= c (vector), e_j·x = d_j."""

    def __init__(self, formulation=conopt.Lagrangian) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(INEQUALITIES, 4, generator=g, dtype=torch.float64)
        self.b = torch.randn(INEQUALITIES, generator=g, dtype=torch.float64) - 0.5
        self.e = torch.randn(EQUALITIES, 4, generator=g, dtype=torch.float64)
        self.each = nn.ModuleList(
            conopt.Constraint("<=", formulation=formulation()) for _ in range(INEQUALITIES)
        )
        self.pair = conopt.Constraint("<=", shape=2, formulation=formulation())
        self.equal = nn.ModuleList(
            conopt.Constraint("==", formulation=formulation()) for _ in range(EQUALITIES)
        )

    def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
        inequality = self.a @ x - self.b
        equality = self.e @ x - 0.3
        constraints = dict(zip(self.each, inequality.unbind(), strict=True))
        constraints[self.pair] = x[:2] - 0.2
        constraints.update(zip(self.equal, [equality[j] for j in range(EQUALITIES)], strict=True))
        loss = x.sin().sum() + (x - 1).square().sum()
        return conopt.ProblemState(loss, constraints)


def augmented():
    return conopt.AugmentedLagrangian(rho=0.5)


FORMULATIONS = {"lagrangian": conopt.Lagrangian, "augmented": augmented}


def sgd(params, extra=False):
    cls = ExtraSGD if extra else torch.optim.SGD
    return cls(params, lr=0.05, momentum=0.5, maximize=True)


DUALS = {
    "sgd": sgd,
    "adam": lambda params: torch.optim.Adam(params, lr=0.05, maximize=True),
    "nupi": lambda params: nuPI(params, lr=0.05, kp=0.5, ki=1.0, maximize=True),
}


def build(packed: bool, optimizer: str, formulation: str, dual: str, restarts: bool):
    problem = Many(FORMULATIONS[formulation])
    if packed:
        assert len(problem.pack_multipliers()) == 2  # inequalities, equalities
    x = torch.zeros(4, requires_grad=True)
    extra = optimizer == "extragradient"
    primal = (ExtraSGD if extra else torch.optim.SGD)([x], lr=0.05)
    dual_optimizer = sgd(problem.dual_parameters(), extra=True) if extra else None
    dual_optimizer = dual_optimizer or DUALS[dual](problem.dual_parameters())
    cls = {"simultaneous": SimultaneousGDA, "alternating": AlternatingGDA}.get(
        optimizer, Extragradient
    )
    constrained = cls(problem, primal, dual_optimizer, dual_restarts=restarts)
    return problem, x, constrained


def multipliers(problem: Many) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in problem.state_dict().items()}


def run(problem, x, optimizer, steps: int) -> list[conopt.StepReport]:
    return [optimizer.step(lambda: problem.evaluate(x)) for _ in range(steps)]


def assert_same_runs(packed, unpacked) -> None:
    (p_problem, p_x, _), p_reports = packed
    (u_problem, u_x, _), u_reports = unpacked
    assert torch.equal(p_x, u_x)
    p_state, u_state = multipliers(p_problem), multipliers(u_problem)
    assert list(p_state) == list(u_state)
    for name, value in u_state.items():
        assert torch.equal(p_state[name], value), name
    assert p_state["each.3.multiplier.weight"].abs().sum() + p_state["pair.multiplier.weight"].sum()
    for p_report, u_report in zip(p_reports, u_reports, strict=True):
        assert torch.equal(p_report.lagrangian, u_report.lagrangian)
        for name, report in u_report.constraints.items():
            other = p_report.constraints[name]
            assert torch.equal(other.strict_value, report.strict_value), name
            assert torch.equal(other.multiplier, report.multiplier), name


CASES = [
    ("simultaneous", "lagrangian", "sgd", True),
    ("simultaneous", "lagrangian", "adam", False),
    ("simultaneous", "augmented", "sgd", False),
    ("simultaneous", "lagrangian", "nupi", True),
    ("alternating", "lagrangian", "sgd", True),
    ("alternating", "augmented", "adam", False),
    ("extragradient", "lagrangian", "sgd", True),
    ("extragradient", "augmented", "sgd", False),
]


@pytest.mark.parametrize(("optimizer", "formulation", "dual", "restarts"), CASES)
def test_packed_steps_equal_unpacked_steps_bit_for_bit(optimizer, formulation, dual, restarts):
    runs = []
    for packed in (True, False):
        built = build(packed, optimizer, formulation, dual, restarts)
        runs.append((built, run(*built, STEPS)))
    assert_same_runs(*runs)


def test_a_quadratic_penalty_has_nothing_to_pack():
    problem = Many(conopt.QuadraticPenalty)
    assert problem.pack_multipliers() == []
    assert list(problem.dual_parameters()) == []


@pytest.mark.parametrize("dual", ["sgd", "adam", "nupi"])
def test_a_packed_run_resumes_bit_for_bit(dual):
    """K steps, save, load into a fresh packed run, K more steps = 2K steps in one run."""
    straight = build(True, "simultaneous", "lagrangian", dual, True)
    straight_reports = run(*straight, 2 * STEPS)
    first = build(True, "simultaneous", "lagrangian", dual, True)
    run(*first, STEPS)
    problem_state, optimizer_state = first[0].state_dict(), first[2].state_dict()
    x_state = first[1].detach().clone()
    resumed = build(True, "simultaneous", "lagrangian", dual, True)
    resumed[0].load_state_dict(problem_state)
    resumed[2].load_state_dict(optimizer_state)
    with torch.no_grad():
        resumed[1].copy_(x_state)
    resumed[2].primal_optimizers[0].load_state_dict(first[2].primal_optimizers[0].state_dict())
    resumed_reports = run(*resumed, STEPS)
    assert_same_runs((straight, straight_reports[STEPS:]), (resumed, resumed_reports))


@pytest.mark.parametrize("dual", ["sgd", "adam"])
def test_an_unpacked_checkpoint_loads_into_a_packed_run_and_continues_bit_for_bit(dual):
    """The problem's state_dict has the same keys; the dual optimizer state is converted."""
    unpacked = build(False, "simultaneous", "lagrangian", dual, True)
    run(*unpacked, STEPS)
    problem_state = copy.deepcopy(unpacked[0].state_dict())
    optimizer_state = copy.deepcopy(unpacked[2].state_dict())
    x_state = unpacked[1].detach().clone()
    reference = run(*unpacked, STEPS)
    packed = build(True, "simultaneous", "lagrangian", dual, True)
    packed[0].load_state_dict(problem_state)
    packed[2].load_state_dict(optimizer_state)
    with torch.no_grad():
        packed[1].copy_(x_state)
    assert_same_runs((unpacked, reference), (packed, run(*packed, STEPS)))


def test_a_packed_checkpoint_loads_into_an_unpacked_problem():
    packed = build(True, "simultaneous", "lagrangian", "sgd", False)
    run(*packed, 3)
    unpacked = Many()
    unpacked.load_state_dict(packed[0].state_dict())
    for name, value in multipliers(packed[0]).items():
        assert torch.equal(unpacked.state_dict()[name], value), name


def test_packing_converts_an_existing_dual_optimizer_and_its_state():
    """pack_multipliers(dual_optimizer) after some unpacked steps: the run goes on unchanged."""
    problem, x, optimizer = build(False, "simultaneous", "lagrangian", "sgd", True)
    run(problem, x, optimizer, 4)
    reference = build(False, "simultaneous", "lagrangian", "sgd", True)
    run(*reference, 4)
    problem.pack_multipliers(optimizer.dual_optimizer)
    assert len(optimizer.dual_optimizer.param_groups[0]["params"]) == 2
    converted = SimultaneousGDA(
        problem, optimizer.primal_optimizers, optimizer.dual_optimizer, dual_restarts=True
    )
    assert_same_runs(
        ((problem, x, converted), run(problem, x, converted, STEPS)),
        (reference, run(*reference, STEPS)),
    )


def test_the_multiplier_views_read_and_write_the_pack():
    problem = Many()
    (inequalities, _) = problem.pack_multipliers()
    with torch.no_grad():
        problem.each[2].multiplier.weight.fill_(0.5)
        problem.pair.multiplier.weight.copy_(torch.tensor([1.0, 2.0]))
    assert inequalities.weight.tolist() == [0, 0, 0.5, *[0] * 7, 1.0, 2.0]
    assert not isinstance(problem.each[0].multiplier.weight, nn.Parameter)
    assert list(problem.each[0].multiplier.parameters()) == []


def test_a_state_leaving_out_part_of_a_pack_is_refused_before_any_change():
    problem, x, optimizer = build(True, "simultaneous", "lagrangian", "sgd", False)
    before = multipliers(problem)

    def partial():
        state = problem.evaluate(x)
        constraints = {k: v for k, v in state.constraints.items() if k is not problem.each[4]}
        return conopt.ProblemState(state.loss, constraints)

    with pytest.raises(ValueError, match=r"leaves out constraints \['each.4'\]"):
        optimizer.step(partial)
    after = multipliers(problem)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert x.grad is None or not x.grad.any()


def test_packing_after_the_optimizer_was_built_is_refused():
    problem, x, optimizer = build(False, "simultaneous", "lagrangian", "sgd", False)
    problem.pack_multipliers()
    with pytest.raises(RuntimeError, match=r"packed after this optimizer was built"):
        optimizer.step(lambda: problem.evaluate(x))


def test_a_packed_pack_widens_as_a_whole_when_a_constraint_reports_float64():
    torch.set_default_dtype(torch.float32)
    try:
        problem = Many()
        problem.pack_multipliers()
    finally:
        torch.set_default_dtype(torch.float64)
    x = torch.zeros(4, requires_grad=True)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1, momentum=0.5, maximize=True)
    optimizer = SimultaneousGDA(problem, torch.optim.SGD([x], lr=0.05), dual)
    optimizer.step(lambda: problem.evaluate(x))
    assert {p.dtype for p in problem.dual_parameters()} == {torch.float64}
    assert problem.each[0].multiplier.weight.dtype == torch.float64


def test_an_unpacked_dual_state_in_several_param_groups_is_refused_saying_how_to_convert():
    problem = Many()
    params = list(problem.dual_parameters())
    unpacked_dual = torch.optim.SGD([{"params": params[:5]}, {"params": params[5:]}], lr=0.1)
    saved = {"primal": [], "dual": unpacked_dual.state_dict(), "step_count": 0, "skipped_steps": 0}
    _, _, packed = build(True, "simultaneous", "lagrangian", "sgd", False)
    saved["primal"] = [packed.primal_optimizers[0].state_dict()]
    with pytest.raises(ValueError, match=r"problem.pack_multipliers\(dual_optimizer\)"):
        packed.load_state_dict(saved)
