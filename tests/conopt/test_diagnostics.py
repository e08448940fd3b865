"""Specification of StepReport, ConstraintReport and KKTReport."""

import pytest
import torch
from toy_problems import sgd_gda

import conopt

D = dict(dtype=torch.float64)
G = torch.tensor([-1.0, 0.5], **D)
H = torch.tensor([-0.25], **D)
LAM = torch.tensor([2.0, 0.0], **D)
MU = torch.tensor([0.5], **D)


class Known(conopt.ConstrainedProblem):
    """f = ½‖x‖², g(x) = x + G ≤ 0, h(x) = x[:1] + H = 0, p = QuadraticPenalty(x[1] - 1)."""

    def __init__(self):
        super().__init__()
        self.g = conopt.Constraint("<=", 2, multiplier=conopt.DenseMultiplier(init=LAM))
        self.h = conopt.Constraint("==", 1, multiplier=conopt.DenseMultiplier(init=MU))
        self.p = conopt.Constraint("<=", formulation=conopt.QuadraticPenalty(rho=1.0))

    def evaluate(self, x):
        return conopt.ProblemState(
            loss=0.5 * (x**2).sum(),
            constraints={self.g: x + G, self.h: x[:1] + H, self.p: x[1] - 1},
        )


def _step(measure_stationarity=True):
    problem = Known()
    x = torch.zeros(2, **D).requires_grad_()
    optimizer = sgd_gda(problem, x, measure_stationarity=measure_stationarity)
    report = optimizer.step(lambda: problem.evaluate(x))
    return problem, x, optimizer, report


# --------------------------------------------------------------------------- KKTReport
def test_kkt_satisfied_checks_every_measured_field():
    ok = conopt.KKTReport(1e-5, -1e-5, 1e-5, 1e-5)
    assert ok.satisfied(1e-4) and not ok.satisfied(1e-6)
    for field, bad in [
        ("max_violation", 1e-3),
        ("min_multiplier", -1e-3),
        ("max_complementary_slackness", 1e-3),
        ("stationarity", 1e-3),
    ]:
        values = ok.as_dict() | {field: bad}
        assert not conopt.KKTReport(**values).satisfied(1e-4), field


def test_kkt_satisfied_ignores_unmeasured_fields():
    assert conopt.KKTReport(0.0, None, None, None).satisfied(1e-12)
    assert not conopt.KKTReport(1.0, None, None, None).satisfied()


def test_kkt_as_dict_has_the_four_fields():
    report = conopt.KKTReport(0.5, 0.0, 1.0, None)
    assert report.as_dict() == {
        "max_violation": 0.5,
        "min_multiplier": 0.0,
        "max_complementary_slackness": 1.0,
        "stationarity": None,
    }


def test_kkt_report_of_a_step_measures_each_condition():
    _, _, _, report = _step()
    kkt = report.kkt
    assert kkt.max_violation == pytest.approx(0.5)  # max([g]+ = 0.5, |h| = 0.25, [p]+ = 0)
    assert kkt.min_multiplier == 0.0
    assert kkt.max_complementary_slackness == pytest.approx(2.0)  # |λ₀ g₀| = |2 · −1|
    grad = torch.tensor([0.0, 0.0], **D) + LAM + torch.tensor([MU.item(), 0.0], **D)
    assert kkt.stationarity == pytest.approx(float(grad.norm()))
    assert not kkt.satisfied()


def test_kkt_report_without_inequality_multipliers_leaves_their_fields_unmeasured():
    problem = conopt.ConstrainedProblem()
    problem.h = conopt.Constraint("==")
    x = torch.ones(1, **D).requires_grad_()
    optimizer = sgd_gda(problem, x)
    report = optimizer.step(
        lambda: conopt.ProblemState(loss=x.sum(), constraints={problem.h: x.sum() - 1})
    )
    assert report.kkt.min_multiplier is None and report.kkt.max_complementary_slackness is None
    assert report.kkt.max_violation == 0.0


# ------------------------------------------------------------------- ConstraintReport
def test_constraint_reports_are_keyed_by_name_with_the_constraint_shapes():
    _, _, _, report = _step()
    assert list(report.constraints) == ["g", "h", "p"]
    g, h, p = (report.constraints[n] for n in "ghp")
    assert (g.kind, h.kind, p.kind) == ("<=", "==", "<=")
    assert torch.equal(g.value, G) and torch.equal(g.strict_value, G)
    assert torch.equal(g.multiplier, LAM) and torch.equal(h.multiplier, MU)
    assert p.multiplier is None and p.value.shape == ()


def test_violation_is_the_positive_part_for_inequalities_and_the_magnitude_for_equalities():
    _, _, _, report = _step()
    assert report.constraints["g"].violation.tolist() == [0.0, 0.5]
    assert report.constraints["h"].violation.tolist() == [0.25]


# ------------------------------------------------------------------------- StepReport
def test_step_report_as_dict_has_flat_numbers_for_loggers():
    _, _, _, report = _step()
    row = report.as_dict()
    assert row["step"] == 1.0 and row["loss"] == 0.0
    assert row["lagrangian"] == pytest.approx(float(LAM @ G + MU @ H))
    assert row["g/value"] == pytest.approx(-0.25) and row["g/multiplier"] == pytest.approx(1.0)
    assert row["h/value"] == pytest.approx(-0.25) and row["h/multiplier"] == pytest.approx(0.5)
    assert row["p/value"] == pytest.approx(-1.0) and "p/multiplier" not in row
    assert set(report.kkt.as_dict()) <= set(row)
    assert all(v is None or isinstance(v, float) for v in row.values())


def test_report_tensors_are_detached():
    _, _, _, report = _step()
    assert not report.loss.requires_grad and not report.lagrangian.requires_grad
    assert not report.constraints["g"].value.requires_grad


def test_stationarity_is_available_right_after_the_step():
    _, _, _, report = _step()
    expected = (LAM + torch.tensor([MU.item(), 0.0], **D)).norm()
    assert float(report.stationarity) == pytest.approx(float(expected))


def test_stationarity_is_none_once_the_next_step_began_if_unread():
    problem, x, optimizer, report = _step()
    optimizer.step(lambda: problem.evaluate(x))
    assert report.stationarity is None
    assert report.kkt.stationarity is None


def test_stationarity_read_before_the_next_step_stays_available():
    problem, x, optimizer, report = _step()
    first = float(report.stationarity)
    optimizer.step(lambda: problem.evaluate(x))
    assert float(report.stationarity) == first


def test_zero_grad_releases_an_unread_stationarity():
    _, _, optimizer, report = _step()
    optimizer.zero_grad()
    assert report.stationarity is None


def test_stationarity_is_not_measured_when_disabled():
    _, _, _, report = _step(measure_stationarity=False)
    assert report.stationarity is None and report.kkt.stationarity is None


def test_skipped_report_says_so():
    problem = Known()
    x = torch.zeros(2, **D).requires_grad_()
    optimizer = sgd_gda(problem, x, on_nonfinite="skip")
    report = optimizer.step(
        lambda: conopt.ProblemState(loss=x.sum() * float("nan"), constraints={})
    )
    assert report.skipped and report.step == 1 and report.constraints == {}
    assert report.stationarity is None
