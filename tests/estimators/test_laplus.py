"""The Laplus family against analytic evidences, and its bad input."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from models.conjugate import ConjugateGaussian, GammaPoisson
from varinf import BetaPrimeLaplus, GammaLaplus, LogNormalLaplus


def test_gamma_laplus_is_exact_when_the_posterior_is_a_product_of_gammas():
    problem = GammaPoisson.example()
    result = GammaLaplus(seed=0).estimate(problem.model)
    assert abs(result.value - problem.log_evidence) < 1e-6
    assert result.diagnostics["at_boundary"] == 0


def _log_normal_problem():
    """theta ~ LogNormal(0, 1), y_i ~ N(log theta, 1): the Gaussian conjugate model in log theta."""
    base = ConjugateGaussian.example(num_data=6, dim=1)
    data = base.data[:, 0]

    def model():
        theta = pyro.sample("theta", dist.LogNormal(data.new_zeros(()), 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("y", dist.Normal(theta.log(), 1.0), obs=data)

    return model, base.log_evidence


def test_lognormal_laplus_is_exact_when_the_posterior_is_log_normal():
    model, truth = _log_normal_problem()
    assert abs(LogNormalLaplus(seed=0).estimate(model).value - truth) < 1e-6


def test_bias_on_gamma_poisson():
    """Gamma posteriors: the log-normal and beta-prime fits overestimate (heavier tails)."""
    problem = GammaPoisson.example()
    truth = problem.log_evidence
    lognormal = LogNormalLaplus(seed=0).estimate(problem.model).value - truth
    betaprime = BetaPrimeLaplus(seed=0).estimate(problem.model).value - truth
    assert 0.05 < lognormal < 0.3 and 0.05 < betaprime < 0.3


def test_a_site_neither_positive_nor_real_is_refused_by_name():
    def model():
        p = pyro.sample("prob", dist.Beta(torch.tensor(2.0, dtype=torch.float64), 2.0))
        pyro.sample("x", dist.Bernoulli(p), obs=torch.tensor(1.0, dtype=torch.float64))

    with pytest.raises(ValueError, match="'prob'"):
        GammaLaplus().estimate(model)


def test_a_non_concave_coordinate_is_refused():
    problem = GammaPoisson.example()
    flat = lambda z: torch.zeros(len(z), len(z), dtype=z.dtype)  # noqa: E731
    with pytest.raises(ValueError, match="not concave"):
        GammaLaplus(hessian=flat).estimate(problem.model)


def test_boundary_mode_tends_to_the_exponential_fit():
    """A rate whose posterior is Exponential(r) (mode 0): Gamma Laplus is exact in the limit."""
    rate = 3.0

    def model():
        prior = dist.Exponential(torch.tensor(1.0, dtype=torch.float64))
        theta = pyro.sample("theta", prior)
        pyro.factor("lik", -(rate - 1.0) * theta)

    result = GammaLaplus(seed=0).estimate(model)
    assert result.diagnostics["at_boundary"] == 1
    assert abs(result.value - math.log(1 / rate)) < 1e-3
