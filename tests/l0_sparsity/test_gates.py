"""Hard-concrete gates: Monte-Carlo statistics against the closed forms."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from l0_sparsity.nn.gates import (
    BETA,
    GAMMA,
    ZETA,
    HardConcrete,
    init_log_alpha_,
    log_alpha_for_droprate,
)

HC = HardConcrete()
LOG_ALPHAS = torch.tensor([-4.0, -1.5, 0.0, 1.0, 3.0])
N_SAMPLES = 200_000


def _samples(log_alpha: torch.Tensor, n: int = N_SAMPLES, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return HC.sample(log_alpha.expand(n, -1).contiguous(), generator=gen)


def test_defaults_are_the_papers_constants():
    assert (HC.beta, HC.gamma, HC.zeta) == (BETA, GAMMA, ZETA) == (2 / 3, -0.1, 1.1)


def test_threshold_is_beta_log_minus_gamma_over_zeta():
    assert HC.threshold == pytest.approx(2 / 3 * math.log(0.1 / 1.1))
    assert HC.threshold == pytest.approx(-1.5986, abs=1e-4)


def test_samples_lie_in_the_unit_interval_with_mass_at_both_ends():
    z = _samples(torch.tensor([0.0]))
    assert z.min() == 0.0 and z.max() == 1.0
    assert ((z > 0) & (z < 1)).any()


def test_monte_carlo_prob_nonzero_matches_closed_form():
    z = _samples(LOG_ALPHAS)
    empirical = (z > 0).double().mean(0)
    closed = torch.sigmoid(LOG_ALPHAS - BETA * math.log(-GAMMA / ZETA)).double()
    torch.testing.assert_close(empirical, closed, atol=4e-3, rtol=0)
    torch.testing.assert_close(HC.prob_nonzero(LOG_ALPHAS).double(), closed)


def test_monte_carlo_prob_one_matches_closed_form():
    z = _samples(LOG_ALPHAS)
    torch.testing.assert_close(
        (z == 1).double().mean(0), HC.prob_one(LOG_ALPHAS).double(), atol=4e-3, rtol=0
    )


def test_monte_carlo_mean_matches_quadrature_mean():
    z = _samples(LOG_ALPHAS)
    torch.testing.assert_close(z.double().mean(0), HC.mean(LOG_ALPHAS).double(), atol=3e-3, rtol=0)


def test_monte_carlo_cdf_matches_closed_form():
    z = _samples(LOG_ALPHAS)
    for t in (0.25, 0.5, 0.75):
        torch.testing.assert_close(
            (z <= t).double().mean(0), HC.cdf(t, LOG_ALPHAS).double(), atol=4e-3, rtol=0
        )


def test_median_gate_matches_monte_carlo_median():
    la = torch.tensor([-1.0, 0.0, 0.5])  # interior medians, where the median is unique
    z = _samples(la)
    torch.testing.assert_close(z.median(0).values, HC.median(la), atol=5e-3, rtol=0)


def test_median_gate_formula():
    la = torch.linspace(-6, 6, 101)
    expected = torch.clamp(torch.sigmoid(la / BETA) * (ZETA - GAMMA) + GAMMA, 0, 1)
    torch.testing.assert_close(HC.median(la), expected)


@given(st.floats(-20.0, 20.0))
def test_median_gate_is_zero_exactly_when_log_alpha_below_threshold(log_alpha: float):
    """Law: median(log α) = 0  ⇔  log α ≤ β log(−γ/ζ) (away from float rounding at the edge)."""
    if abs(log_alpha - HC.threshold) < 1e-4:
        return
    gate = HC.median(torch.tensor([log_alpha], dtype=torch.float64)).item()
    assert (gate == 0.0) == (log_alpha <= HC.threshold)


@given(st.floats(-20.0, 20.0))
def test_median_is_zero_iff_prob_nonzero_at_most_half(log_alpha: float):
    """Law: the test-time gate is 0 exactly when P(z ≠ 0) ≤ 1/2."""
    if abs(log_alpha - HC.threshold) < 1e-4:
        return
    la = torch.tensor([log_alpha], dtype=torch.float64)
    assert (HC.median(la).item() == 0.0) == (HC.prob_nonzero(la).item() <= 0.5)


def test_samples_are_differentiable_wrt_log_alpha():
    la = torch.zeros(1000, requires_grad=True)
    z = HC.sample(la, generator=torch.Generator().manual_seed(1))
    z.sum().backward()
    assert la.grad is not None
    interior = (z > 0) & (z < 1)
    assert (la.grad[interior] > 0).all()
    assert (la.grad[~interior] == 0).all()


def test_fused_sample_gradient_matches_autograd_of_the_formula():
    la = torch.randn(500, dtype=torch.float64, requires_grad=True)
    z = HC.sample(la, generator=torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad((z * torch.arange(500.0)).sum(), la)
    gen = torch.Generator().manual_seed(3)
    u = torch.empty_like(la).uniform_(HC.eps, 1 - HC.eps, generator=gen)
    la2 = la.detach().requires_grad_()
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + la2) / BETA)
    z2 = torch.clamp(s * (ZETA - GAMMA) + GAMMA, 0, 1)
    (grad2,) = torch.autograd.grad((z2 * torch.arange(500.0)).sum(), la2)
    torch.testing.assert_close(z.detach(), z2.detach())
    torch.testing.assert_close(grad, grad2)


def test_sampling_stays_finite_for_extreme_log_alpha():
    la = torch.tensor([-1e4, -50.0, 50.0, 1e4], requires_grad=True)
    z = HC.sample(la.expand(1000, -1))
    z.sum().backward()
    assert torch.isfinite(z).all() and torch.isfinite(la.grad).all()
    assert (z[:, 0] == 0).all() and (z[:, -1] == 1).all()


def test_prob_nonzero_is_differentiable():
    la = torch.zeros(3, requires_grad=True)
    HC.prob_nonzero(la).sum().backward()
    assert torch.all(la.grad > 0)


def test_init_log_alpha_centres_on_log_odds_of_keeping():
    la = init_log_alpha_(torch.empty(100_000), droprate=0.3)
    assert la.mean().item() == pytest.approx(math.log(0.7 / 0.3), abs=1e-3)
    assert la.std().item() == pytest.approx(0.01, rel=0.05)
    assert log_alpha_for_droprate(0.5) == 0.0


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_droprate_outside_open_unit_interval_is_rejected(bad: float):
    with pytest.raises(ValueError, match="droprate"):
        log_alpha_for_droprate(bad)


def test_invalid_stretch_is_rejected():
    with pytest.raises(ValueError, match="gamma"):
        HardConcrete(gamma=0.1)
