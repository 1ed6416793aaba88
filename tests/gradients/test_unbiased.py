"""Every unbiased estimator's mean gradient on the Bernoulli toy is within 3 standard errors of
the exact gradient by enumeration (Kool et al. 2020's toy: d = 3, shared logit eta)."""

import math

import pytest
import torch

from varinf.gradients import (
    RELAX,
    ScoreFunction,
    SumAndSample,
    UnorderedSet,
    mlp_control_variate,
)
from varinf.gradients.toy import P0, exact_gradient, f, sample_gradients, toy_dist

ETAS = [0.0, -4.0]
REPEATS = 20000


def sigmoid_derivative(eta: float) -> float:
    p = 1 / (1 + math.exp(-eta))
    return p * (1 - p)


@pytest.mark.parametrize("eta", ETAS)
def test_exact_gradient_by_enumeration(eta):
    analytic = sigmoid_derivative(eta) * (1 - 2 * P0).sum().item()
    assert exact_gradient(eta) == pytest.approx(analytic, rel=1e-12)


def test_published_exact_gradients():
    assert round(exact_gradient(0.0), 4) == -0.0450
    assert round(exact_gradient(-4.0), 4) == -0.0032


ESTIMATORS = {
    "score": lambda: ScoreFunction(),
    "score-loo": lambda: ScoreFunction("leave-one-out"),
    "sum-and-sample": lambda: SumAndSample(),
    "unordered-set": lambda: UnorderedSet(),
    "unordered-set-no-baseline": lambda: UnorderedSet(baseline=False),
    "unordered-set-beam": lambda: UnorderedSet(method="beam"),
    "relax": lambda: RELAX().double(),
    "relax-net": lambda: RELAX(net=mlp_control_variate(3, 2, 8)).double(),
}


def assert_unbiased(grads: torch.Tensor, truth: float) -> None:
    stderr = grads.std().item() / math.sqrt(len(grads))
    assert abs(grads.mean().item() - truth) < 3 * stderr + 1e-12, (
        f"mean {grads.mean().item():.6f}, truth {truth:.6f}, stderr {stderr:.2e}"
    )


@pytest.mark.parametrize("k", [2, 4, 7])
@pytest.mark.parametrize("eta", ETAS)
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_unbiased(name, eta, k):
    torch.manual_seed(0)  # the RELAX network's initial weights
    # the set-probability integrals cost O(k^2) each: fewer repeats (their variance is small)
    repeats = REPEATS // 4 if name.startswith("unordered") else REPEATS
    grads = sample_gradients(ESTIMATORS[name](), eta, k, repeats, seed=k)
    assert torch.isfinite(grads).all()
    assert_unbiased(grads, exact_gradient(eta))


@pytest.mark.parametrize("eta", ETAS)
def test_moving_average_baseline_unbiased(eta):
    estimator = ScoreFunction("moving-average", decay=0.5)
    sample_gradients(estimator, eta, 2, 1000, seed=1)  # warm up: the average is now fixed
    assert_unbiased(sample_gradients(estimator, eta, 2, REPEATS, seed=2), exact_gradient(eta))


@pytest.mark.parametrize("eta", ETAS)
@pytest.mark.parametrize("estimator", [SumAndSample(), UnorderedSet(), UnorderedSet(False)])
def test_whole_support_is_exact(estimator, eta):
    grads = sample_gradients(estimator, eta, 8, 50)
    torch.testing.assert_close(grads, torch.full_like(grads, exact_gradient(eta)))


def test_baselines_reduce_variance_at_eta_zero():
    plain = sample_gradients(ScoreFunction(), 0.0, 4, 5000).var()
    loo = sample_gradients(ScoreFunction("leave-one-out"), 0.0, 4, 5000).var()
    unordered = sample_gradients(UnorderedSet(), 0.0, 4, 5000).var()
    assert unordered < loo < plain / 10


def test_trained_relax_control_variate_reduces_variance():
    torch.manual_seed(0)
    relax = RELAX(net=mlp_control_variate(3, 2, 16)).double()
    before = sample_gradients(relax, 0.0, 1, 5000, seed=1).var()
    optimizer = torch.optim.Adam(relax.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(2)
    for _ in range(300):
        optimizer.zero_grad()
        eta = torch.zeros(64, dtype=torch.float64, requires_grad=True)
        out = relax.surrogate(toy_dist(eta), f, 1, generator)
        relax.backward(out.surrogate, [eta])
        optimizer.step()
    after = sample_gradients(relax, 0.0, 1, 20000, seed=3)
    assert_unbiased(after, exact_gradient(0.0))
    assert after.var() < before / 10  # measured: 0.35 -> 0.003
