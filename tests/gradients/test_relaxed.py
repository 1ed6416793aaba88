"""Gumbel-softmax and straight-through are biased for the discrete objective: their mean gradient
matches the exact gradient of what they do differentiate, computed by quadrature over the
logistic noise, and the Gumbel-softmax bias vanishes as the temperature goes to 0."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import expit
from torch.distributions import OneHotCategorical

from varinf.gradients import GumbelSoftmax, StraightThrough
from varinf.gradients.toy import P0, exact_gradient, sample_gradients

REPEATS = 20000


def _quad(fn, eta):
    """Integrate ``fn(L)`` against the logistic noise L = logit(u), u ~ U(0, 1)."""
    kink = float(expit(-eta))  # the hard sample switches at eta + L = 0
    value, _ = integrate.quad(
        lambda u: fn(math.log(u) - math.log1p(-u)),
        0,
        1,
        points=[kink],
        epsabs=1e-13,
        epsrel=1e-12,
        limit=200,
    )
    return value


def relaxed_gradient(eta: float, tau: float, step: float = 1e-4) -> float:
    r"""d/dη E[f(y)], y_i = σ((η + L_i)/τ), by central differences of the quadrature."""

    def objective(e):
        return sum(_quad(lambda L, c=c: (expit((e + L) / tau) - c) ** 2, eta) for c in P0.tolist())

    return (objective(eta + step) - objective(eta - step)) / (2 * step)


def straight_through_gradient(eta: float, tau: float) -> float:
    r"""E[Σ_i f'(b_i) ∂y_i/∂η]: f' at the hard sample, ∂y/∂η = y(1-y)/τ."""

    def integrand(L, c):
        y = expit((eta + L) / tau)
        return 2 * (float(eta + L > 0) - c) * y * (1 - y) / tau

    return sum(_quad(lambda L, c=c: integrand(L, c), eta) for c in P0.tolist())


def assert_mean_within_3_stderr(grads: torch.Tensor, truth: float) -> None:
    stderr = grads.std().item() / math.sqrt(len(grads))
    assert abs(grads.mean().item() - truth) < 3 * stderr, (grads.mean().item(), truth, stderr)


@pytest.mark.parametrize("tau", [0.5, 0.1])
@pytest.mark.parametrize("eta", [0.0, -4.0])
def test_gumbel_softmax_is_unbiased_for_the_relaxed_objective(eta, tau):
    grads = sample_gradients(GumbelSoftmax(tau), eta, 2, REPEATS, seed=3)
    assert_mean_within_3_stderr(grads, relaxed_gradient(eta, tau))


@pytest.mark.parametrize("tau", [0.5, 0.1])
@pytest.mark.parametrize("eta", [0.0, -4.0])
def test_straight_through_mean_gradient(eta, tau):
    grads = sample_gradients(StraightThrough(tau), eta, 2, REPEATS, seed=4)
    assert_mean_within_3_stderr(grads, straight_through_gradient(eta, tau))


def test_relaxed_estimators_are_biased_at_eta_minus_4():
    truth = exact_gradient(-4.0)
    for estimator in (GumbelSoftmax(0.5), StraightThrough(0.5)):
        grads = sample_gradients(estimator, -4.0, 2, REPEATS, seed=5)
        stderr = grads.std().item() / math.sqrt(len(grads))
        assert abs(grads.mean().item() - truth) > 10 * stderr


def test_gumbel_softmax_bias_vanishes_as_temperature_decreases():
    truth = exact_gradient(-4.0)
    bias = [abs(relaxed_gradient(-4.0, tau) - truth) for tau in (1.0, 0.5, 0.1, 0.05, 0.01)]
    assert np.all(np.diff(bias) < 0)
    assert bias[-1] < 0.2 * abs(truth)  # quadrature: -0.00369 against -0.00318


def test_variance_grows_as_temperature_decreases():
    variances = [sample_gradients(GumbelSoftmax(t), -4.0, 1, 5000).var() for t in (1.0, 0.1)]
    assert variances[1] > variances[0]


def test_straight_through_value_is_the_discrete_objective():
    # the value (not the gradient) of ST is f at hard samples: unbiased for E_q[f]
    logits = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    out = StraightThrough(0.3).surrogate(
        OneHotCategorical(logits=logits), lambda y: y @ weights, 20000, generator
    )
    probs = torch.softmax(logits, 0).detach()
    truth = (probs * weights).sum()
    stderr = math.sqrt(((probs * weights**2).sum() - truth**2) / 20000)
    assert abs(out.value.item() - truth.item()) < 3 * stderr
    out.surrogate.backward()
    assert torch.isfinite(logits.grad).all()


def test_low_temperature_is_finite():
    logits = torch.tensor([30.0, -30.0, 0.0], dtype=torch.float32, requires_grad=True)
    out = GumbelSoftmax(0.01).surrogate(OneHotCategorical(logits=logits), lambda y: y[..., 1], 64)
    out.surrogate.backward()
    assert torch.isfinite(logits.grad).all()


def test_temperature_schedule_is_read_on_every_call():
    from varinf.distributions.concrete import ExponentialAnnealing

    schedule = ExponentialAnnealing(1.0, rate=0.5, minimum=0.1)
    estimator = GumbelSoftmax(schedule)
    assert estimator.current_temperature == 1.0
    schedule.step()
    assert estimator.current_temperature == pytest.approx(math.exp(-0.5))
    # a schedule at temperature tau gives the same samples as the number tau
    logits = torch.tensor([0.5, -0.5], dtype=torch.float64)
    q = OneHotCategorical(logits=logits)
    scheduled = estimator.surrogate(q, lambda y: y[..., 0], 5, torch.Generator().manual_seed(0))
    fixed = GumbelSoftmax(math.exp(-0.5)).surrogate(
        q, lambda y: y[..., 0], 5, torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(scheduled.value, fixed.value)
