"""Fast evidences of many independent problems at once, against analytic evidences and the
single-problem estimators."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from varinf import GammaLaplus
from varinf.estimators.batched import BatchedProblems, batched_hessians, fast_evidences

SHAPES = torch.tensor([[3.0, 8.0], [5.0, 2.5], [12.0, 4.0]], dtype=torch.float64)  # (B, D)
RATES = torch.tensor([[2.0, 6.0], [1.0, 3.0], [7.0, 0.5]], dtype=torch.float64)


def log_joint(theta):
    """Unnormalised Gamma(shape, rate) kernels: problem b's evidence is known in closed form."""
    return ((SHAPES - 1) * theta.log() - RATES * theta).sum(-1)


EXACT = (torch.lgamma(SHAPES) - SHAPES * RATES.log()).sum(-1)
PROBLEMS = BatchedProblems(log_joint, num_problems=3, dim=2)
START = torch.zeros(3, 2, dtype=torch.float64)


@pytest.fixture(scope="module")
def results():
    torch.manual_seed(0)
    return fast_evidences(PROBLEMS, START, num_particles=2000, batch_size=1000, vbis_steps=60)


def test_gamma_laplus_is_exact_on_gamma_posteriors(results):
    assert torch.allclose(results["gamma-laplus"]["value"], EXACT, atol=1e-5)


@pytest.mark.parametrize("method", ["glis", "is", "vbis"])
def test_importance_samplers_within_five_standard_errors(results, method):
    value, stderr = results[method]["value"], results[method]["stderr"]
    assert (stderr >= 0).all()
    assert ((value - EXACT).abs() <= 5 * stderr + 1e-9).all()


def test_batched_equals_the_single_problem_estimator(results):
    b = 1

    def model():
        prior = dist.Gamma(SHAPES[b], RATES[b]).to_event(1)  # its normaliser is subtracted below
        pyro.sample("theta", prior)

    single = GammaLaplus(seed=0).estimate(model).value
    normaliser = (torch.lgamma(SHAPES[b]) - SHAPES[b] * RATES[b].log()).sum().item()
    assert single + normaliser == pytest.approx(
        results["gamma-laplus"]["value"][b].item(), abs=1e-5
    )
    assert single == pytest.approx(0.0, abs=1e-6)


def test_batched_hessians_are_per_problem():
    z = torch.tensor([[0.1, -0.2], [0.3, 0.4], [-0.5, 0.0]], dtype=torch.float64)
    hess = batched_hessians(PROBLEMS.log_density, z)
    # log pi = shape z - rate e^z per coordinate: diagonal -rate e^z, no cross terms
    expected = torch.diag_embed(-RATES * z.exp())
    assert torch.allclose(hess, expected, atol=1e-6)


def test_unknown_methods_are_refused():
    with pytest.raises(ValueError, match="unknown fast methods"):
        fast_evidences(PROBLEMS, START, methods=("gamma-laplus", "magic"))


def test_laplace_bias_sign_on_gamma_posteriors(results):
    """Laplace in log space underestimates Gamma evidences (right-skewed in log theta)."""
    gap = results["laplace"]["value"] - EXACT
    assert (gap < 0).all() and (gap > -math.log(2)).all()
