"""Specification of Extragradient, ExtraSGD, ExtraAdam and ExtrapolationMixin."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_problems import DUAL_LR, LAM0, LR, X0, A, B, Linear, T, linear_grad

import conopt
from conopt.optim import ExtraAdam, Extragradient, ExtrapolationMixin, ExtraSGD, SimultaneousGDA

D = dict(dtype=torch.float64)


def _extragradient(primal_cls=ExtraSGD, dual_cls=ExtraSGD, **kwargs):
    problem = Linear()
    x = X0.clone().requires_grad_()
    optimizer = Extragradient(
        problem,
        primal_cls([x], lr=LR),
        dual_cls(problem.dual_parameters(), lr=DUAL_LR, maximize=True),
        **kwargs,
    )
    return problem, x, optimizer


# ----------------------------------------------------------------- extrapolating optimizers
def test_extrapolation_moves_and_step_returns_to_the_origin_before_stepping():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0], **D))
    optimizer = ExtraSGD([p], lr=0.5)
    p.grad = torch.tensor([1.0, -1.0], **D)
    optimizer.extrapolation()
    assert p.tolist() == [0.5, 2.5]
    p.grad = torch.tensor([2.0, 2.0], **D)
    optimizer.step()
    assert p.tolist() == [0.0, 1.0]  # from [1, 2], with the extrapolated point's gradient


def test_step_without_extrapolation_is_the_plain_step():
    p = torch.nn.Parameter(torch.tensor([1.0], **D))
    optimizer = ExtraSGD([p], lr=0.5)
    p.grad = torch.tensor([1.0], **D)
    optimizer.step()
    optimizer.step()
    assert p.tolist() == [0.0]


def test_extra_adam_updates_its_moments_at_both_half_steps():
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0], **D))
    q = torch.nn.Parameter(p.detach().clone())
    extra, plain = ExtraAdam([p], lr=0.1), torch.optim.Adam([q], lr=0.1)
    g1, g2 = torch.tensor([0.3, -2.0], **D), torch.tensor([1.0, 0.5], **D)
    p.grad = g1
    extra.extrapolation()
    p.grad = g2
    extra.step()
    origin = q.detach().clone()
    q.grad = g1
    plain.step()
    with torch.no_grad():
        q.copy_(origin)
    q.grad = g2
    plain.step()
    assert torch.equal(p.detach(), q.detach())
    assert torch.equal(extra.state[p]["exp_avg_sq"], plain.state[q]["exp_avg_sq"])


def test_mixin_gives_any_torch_optimizer_an_extrapolation():
    class ExtraRMSprop(ExtrapolationMixin, torch.optim.RMSprop):
        pass

    p = torch.nn.Parameter(torch.tensor([1.0], **D))
    optimizer = ExtraRMSprop([p], lr=0.01)
    p.grad = torch.tensor([1.0], **D)
    optimizer.extrapolation()
    assert p.item() < 1.0
    optimizer.step()
    assert "extrapolation_origin" not in optimizer.state[p]


@pytest.mark.parametrize("role", ["primal", "dual"])
def test_extragradient_needs_extrapolating_optimizers(role):
    problem = Linear()
    x = X0.clone().requires_grad_()
    primal = torch.optim.SGD if role == "primal" else ExtraSGD
    dual = torch.optim.SGD if role == "dual" else ExtraSGD
    with pytest.raises(TypeError, match=f"{role} optimizers with an extrapolation"):
        Extragradient(
            problem, primal([x], lr=LR), dual(problem.dual_parameters(), lr=LR, maximize=True)
        )


# -------------------------------------------------------------------------- the step
def test_extragradient_step_updates_from_the_original_point_with_extrapolated_gradients():
    problem, x, optimizer = _extragradient()
    optimizer.step(lambda: problem.evaluate(x))
    x_half = X0 - LR * linear_grad(X0, LAM0)
    lam_half = (LAM0 + DUAL_LR * (A @ X0 - B)).clamp(min=0)
    assert torch.allclose(x.detach(), X0 - LR * linear_grad(x_half, lam_half))
    expected = (LAM0 + DUAL_LR * (A @ x_half - B)).clamp(min=0)
    assert torch.allclose(problem.g.multiplier.weight.detach(), expected)


def test_extrapolated_multipliers_are_projected():
    problem, x, optimizer = _extragradient()
    states = []

    def closure():
        states.append(problem.g.multiplier.weight.detach().clone())
        return problem.evaluate(x)

    optimizer.step(closure)
    lam_half = (LAM0 + DUAL_LR * (A @ X0 - B)).clamp(min=0)
    assert lam_half.min() == 0  # the extrapolation would make one multiplier negative
    assert torch.equal(states[1], lam_half)


def test_extragradient_reports_the_original_point_with_its_stationarity():
    problem, x, optimizer = _extragradient()
    report = optimizer.step(lambda: problem.evaluate(x))
    assert float(report.loss) == pytest.approx(float(0.5 * ((X0 - T) ** 2).sum()))
    assert torch.equal(report.constraints["g"].multiplier, LAM0)
    assert float(report.stationarity) == pytest.approx(float(linear_grad(X0, LAM0).norm()))
    assert report.kkt.stationarity == pytest.approx(float(linear_grad(X0, LAM0).norm()))


def test_extragradient_restarts_use_the_extrapolated_point():
    problem, x, optimizer = _extragradient(dual_restarts=True)
    optimizer.step(lambda: problem.evaluate(x))
    x_half = X0 - LR * linear_grad(X0, LAM0)
    feasible = (A @ x_half - B) < 0
    weight = problem.g.multiplier.weight.detach()
    assert feasible.any()
    assert torch.equal(weight[feasible], torch.zeros_like(weight[feasible]))


def test_extragradient_with_extra_adam_equals_two_plain_adam_half_steps():
    problem, x, optimizer = _extragradient(ExtraAdam, ExtraAdam)
    for _ in range(2):
        optimizer.step(lambda: problem.evaluate(x))

    theta = X0.clone().requires_grad_()
    lam = LAM0.clone().requires_grad_()
    primal = torch.optim.Adam([theta], lr=LR)
    dual = torch.optim.Adam([lam], lr=DUAL_LR, maximize=True)

    def half_step(origin_theta, origin_lam):
        lagrangian = 0.5 * ((theta - T) ** 2).sum() + lam.detach() @ (A @ theta - B)
        theta.grad = torch.autograd.grad(lagrangian, theta)[0]
        lam.grad = (A @ theta - B).detach()
        with torch.no_grad():
            theta.copy_(origin_theta)
            lam.copy_(origin_lam)
        primal.step()
        dual.step()
        with torch.no_grad():
            lam.clamp_(min=0)

    for _ in range(2):
        origin = (theta.detach().clone(), lam.detach().clone())
        half_step(*origin)  # extrapolation from the origin
        half_step(*origin)  # update from the origin with the extrapolated gradients
    assert torch.allclose(x.detach(), theta.detach(), rtol=1e-12, atol=1e-14)
    assert torch.allclose(problem.g.multiplier.weight.detach(), lam.detach(), rtol=1e-12)


# ------------------------------------------------------------------------- bilinear game
class Bilinear(conopt.ConstrainedProblem):
    """min_x max_y x·y written as f = 0, h(x) = x with multiplier y: the Lagrangian is x·y."""

    def __init__(self, y0):
        super().__init__()
        self.h = conopt.Constraint("==", len(y0), multiplier=conopt.DenseMultiplier(init=y0))

    def evaluate(self, x):
        return conopt.ProblemState(loss=0 * x.sum(), constraints={self.h: x})


def _bilinear_distances(cls, sgd, x0, y0, lr, steps):
    problem = Bilinear(y0)
    x = x0.clone().requires_grad_()
    optimizer = cls(problem, sgd([x], lr=lr), sgd(problem.dual_parameters(), lr=lr, maximize=True))
    distances = []
    for _ in range(steps):
        optimizer.step(lambda: problem.evaluate(x))
        y = problem.h.multiplier.weight.detach()
        distances.append(math.sqrt(float((x.detach() ** 2).sum() + (y**2).sum())))
    return distances


bilinear_points = (
    st.integers(1, 3)
    .flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(-2, 2), min_size=n, max_size=n),
            st.lists(st.floats(-2, 2), min_size=n, max_size=n),
        )
    )
    .filter(lambda xy: sum(v * v for v in xy[0] + xy[1]) > 0.01)
)


@settings(max_examples=8)
@given(point=bilinear_points, lr=st.floats(0.4, 0.7))
def test_extragradient_converges_on_the_bilinear_game(point, lr):
    """EG on min_x max_y xy contracts by √(1 − η² + η⁴) < 1 per step: it reaches (0, 0)."""
    x0, y0 = (torch.tensor(v, **D) for v in point)
    start = math.sqrt(float((x0**2).sum() + (y0**2).sum()))
    distances = _bilinear_distances(Extragradient, ExtraSGD, x0, y0, lr, steps=200)
    assert all(b < a for a, b in zip([start, *distances], distances, strict=False))
    assert distances[-1] < 1e-4 * start


@settings(max_examples=10)
@given(point=bilinear_points, lr=st.floats(0.1, 0.5))
def test_simultaneous_gda_spirals_out_on_the_bilinear_game(point, lr):
    """Simultaneous GDA on min_x max_y xy grows the distance to (0, 0) by √(1 + η²) per step."""
    x0, y0 = (torch.tensor(v, **D) for v in point)
    start = math.sqrt(float((x0**2).sum() + (y0**2).sum()))
    distances = _bilinear_distances(SimultaneousGDA, torch.optim.SGD, x0, y0, lr, steps=50)
    assert all(b > a for a, b in zip([start, *distances], distances, strict=False))
    assert distances[-1] == pytest.approx(start * (1 + lr**2) ** 25, rel=1e-9)
