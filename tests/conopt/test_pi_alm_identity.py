r"""PI control is the augmented Lagrangian in disguise (Ramirez & Lacoste-Julien, ICLR 2026).

For equality constraints, nuPI (:math:`\nu = 0`) on the Lagrangian and SGD on the augmented
Lagrangian give the same primal iterates under the gains derived in :mod:`conopt.optim.nupi`;
both sides run through conopt's public API on random nonconvex problems (float64):

.. math::

    f(x) = a^\top \sin(Bx) + \tfrac12 x^\top S x, \qquad
    h(x) = W \tanh(Vx) + Ux + \tfrac12 r \|x\|^2 - d,

with :math:`S` symmetric, possibly indefinite, SGD as the primal optimizer (with or without
momentum), one vector constraint or one scalar constraint per row, foreach or loop nuPI.

Tolerance: the two methods compute the multiplier that the primal gradient sees by different
(equivalent) arithmetic, so they differ by rounding only: about :math:`10^{-16}` relative per
step, amplified over the few steps by at most :math:`\prod_t (1 + \eta_x \|\nabla^2\|)`. The
largest difference observed over 500 examples per pairing (``HYPOTHESIS_PROFILE=thorough``) is
1.3e-15 relative to :math:`1 + |x|`; ``TOLERANCE`` = 1e-9 (relative and absolute) leaves a
margin of :math:`10^6` over it, and is about :math:`10^7` below what the wrong pairings of the
last test differ by (about 2e-2).
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

import conopt
from conopt.optim import AlternatingGDA, SimultaneousGDA, nuPI

TOLERANCE = 1e-9
STEPS = 5
PRIMAL_LR = 0.05

unit = st.floats(-1, 1, allow_nan=False, allow_infinity=False)


class NonconvexEquality(conopt.ConstrainedProblem):
    """f(x) = aᵀsin(Bx) + ½xᵀSx subject to h(x) = W tanh(Vx) + Ux + ½r‖x‖² − d = 0."""

    def __init__(self, data, augmented_rho=None, split=False):
        super().__init__()
        self.data = data
        m = data["W"].shape[0]

        def make(shape):
            form = None if augmented_rho is None else conopt.AugmentedLagrangian(augmented_rho)
            return conopt.Constraint("==", shape, formulation=form)

        self.split = split
        self.eq = nn.ModuleList([make(()) for _ in range(m)]) if split else make(m)
        self.double()  # float64 multipliers and penalty coefficients from the start

    def h(self, x):
        d = self.data
        return d["W"] @ torch.tanh(d["V"] @ x) + d["U"] @ x + 0.5 * d["r"] * (x @ x) - d["d"]

    def evaluate(self, x):
        d = self.data
        loss = d["a"] @ torch.sin(d["B"] @ x) + 0.5 * x @ d["S"] @ x
        value = self.h(x)
        constraints = (
            dict(zip(self.eq, value.unbind(), strict=True)) if self.split else {self.eq: value}
        )
        return conopt.ProblemState(loss=loss, constraints=constraints)

    def set_multipliers(self, values):
        weights = (
            [c.multiplier.weight for c in self.eq] if self.split else [self.eq.multiplier.weight]
        )
        with torch.no_grad():
            for weight, value in zip(weights, values.reshape(len(weights), -1), strict=True):
                weight.copy_(value.reshape(weight.shape))


@st.composite
def cases(draw):
    """A random nonconvex equality problem, a start, multipliers and step sizes."""
    n, m, k = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3))

    def matrix(*shape):
        return torch.from_numpy(draw(arrays(np.float64, shape, elements=unit)))

    root = matrix(n, n)
    data = {
        "a": matrix(k), "B": matrix(k, n), "S": root + root.T,
        "W": matrix(m, k), "V": matrix(k, n), "U": matrix(m, n), "r": matrix(m), "d": matrix(m),
    }  # fmt: skip
    return {
        "data": data,
        "x0": 2 * matrix(n),
        "mu0": 2 * matrix(m),
        "rho": draw(st.floats(0.125, 4.0, width=32)),  # exact in the penalty's buffer
        "alm_lr": draw(st.floats(0.05, 1.0)),
        "pi_lr": draw(st.floats(0.01, 2.0)),
        "momentum": draw(st.sampled_from([0.0, 0.9])),
        "split": draw(st.booleans()),
        "foreach": draw(st.booleans()),
    }


def _iterates(case, method, dual_factory, *, augmented, mu0=None, **kwargs):
    """The primal iterates of STEPS steps of ``method`` on the case's problem."""
    problem = NonconvexEquality(
        case["data"], augmented_rho=case["rho"] if augmented else None, split=case["split"]
    )
    problem.set_multipliers(case["mu0"] if mu0 is None else mu0)
    x = case["x0"].clone().requires_grad_()
    primal = torch.optim.SGD([x], lr=PRIMAL_LR, momentum=case["momentum"])
    optimizer = method(problem, primal, dual_factory(problem.dual_parameters()), **kwargs)
    iterates = []
    for _ in range(STEPS):
        optimizer.step(lambda: problem.evaluate(x))
        iterates.append(x.detach().clone())
    return torch.stack(iterates)


def _alm(case, method, **kwargs):
    sgd = lambda ps: torch.optim.SGD(ps, lr=case["alm_lr"], maximize=True)  # noqa: E731
    return _iterates(case, method, sgd, augmented=True, **kwargs)


def _pi(case, method, *, kp_times_lr, mu0=None, ema_nu=0.0, **kwargs):
    """nuPI with lr·ki = η_A·ρ and lr·kp = ``kp_times_lr``."""
    lr, rho = case["pi_lr"], case["rho"]
    ki, kp = case["alm_lr"] * rho / lr, kp_times_lr / lr

    def dual(ps):
        return nuPI(ps, lr=lr, kp=kp, ki=ki, ema_nu=ema_nu, maximize=True, foreach=case["foreach"])

    return _iterates(case, method, dual, augmented=False, mu0=mu0, **kwargs)


def _assert_same_iterates(pi, alm):
    assert torch.isfinite(alm).all()
    torch.testing.assert_close(pi, alm, rtol=TOLERANCE, atol=TOLERANCE)


@given(case=cases())
def test_simultaneous_alm_is_dual_first_pi(case):
    """SimultaneousGDA + AL(ρ), SGD(η_A) ≡ dual-first nuPI with ηK_I = η_Aρ, ηK_P = ρ(1 − η_A)."""
    alm = _alm(case, SimultaneousGDA)
    pi = _pi(
        case,
        AlternatingGDA,
        kp_times_lr=case["rho"] * (1 - case["alm_lr"]),
        dual_first=True,
    )
    _assert_same_iterates(pi, alm)


@given(case=cases(), alm_lr=st.floats(0.05, 2.0))
def test_alternating_alm_is_dual_first_pi_with_optimism_equal_to_penalty(case, alm_lr):
    """Primal-first AL(ρ), SGD(η_A) ≡ dual-first nuPI with ηK_P = ρ from μ₀ − η_Aρ h(x₀)."""
    case = {**case, "alm_lr": alm_lr}
    alm = _alm(case, AlternatingGDA)
    with torch.no_grad():
        h0 = NonconvexEquality(case["data"]).h(case["x0"])
    shifted = case["mu0"] - alm_lr * case["rho"] * h0
    pi = _pi(case, AlternatingGDA, kp_times_lr=case["rho"], mu0=shifted, dual_first=True)
    _assert_same_iterates(pi, alm)


@given(case=cases(), alm_lr=st.floats(0.05, 2.0))
def test_from_a_feasible_start_primal_first_alm_is_primal_first_pi(case, alm_lr):
    """The paper's pairing (both primal first, ηK_P = ρ, ηK_I = η_Aρ) from h(x₀) = 0."""
    data = dict(case["data"])
    data["d"] = torch.zeros_like(data["d"])
    with torch.no_grad():
        data["d"] = NonconvexEquality(data).h(case["x0"])  # now h(x₀) = 0 (to rounding)
    case = {**case, "data": data, "alm_lr": alm_lr}
    alm = _alm(case, AlternatingGDA)
    pi = _pi(case, AlternatingGDA, kp_times_lr=case["rho"])
    _assert_same_iterates(pi, alm)


def _fixed_case():
    generator = torch.Generator().manual_seed(0)

    def matrix(*shape):
        return torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1

    root = matrix(3, 3)
    data = {
        "a": matrix(2), "B": matrix(2, 3), "S": root + root.T,
        "W": matrix(2, 2), "V": matrix(2, 3), "U": matrix(2, 3), "r": matrix(2), "d": matrix(2),
    }  # fmt: skip
    return {
        "data": data, "x0": matrix(3), "mu0": matrix(2), "rho": 2.0, "alm_lr": 0.5,
        "pi_lr": 0.1, "momentum": 0.0, "split": False, "foreach": False,
    }  # fmt: skip


@pytest.mark.parametrize("pairing", ["simultaneous-pi", "primal-first-pi", "ema"])
def test_other_pairings_are_not_the_augmented_lagrangian(pairing):
    """The tolerance discriminates: simultaneous nuPI, an unshifted start, or ν > 0 differ."""
    case = _fixed_case()
    alm = _alm(case, SimultaneousGDA if pairing != "primal-first-pi" else AlternatingGDA)
    if pairing == "simultaneous-pi":
        pi = _pi(case, SimultaneousGDA, kp_times_lr=case["rho"])
    elif pairing == "primal-first-pi":  # the paper's gains from an infeasible start
        pi = _pi(case, AlternatingGDA, kp_times_lr=case["rho"])
    else:
        kp_times_lr = case["rho"] * (1 - case["alm_lr"])
        pi = _pi(case, AlternatingGDA, kp_times_lr=kp_times_lr, ema_nu=0.5, dual_first=True)
    assert (pi - alm).abs().max() > 1e4 * TOLERANCE
