"""The bundled models' log evidences against independent computations."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from models.conjugate import BayesianLinearRegression, ConjugateGaussian, LocalGaussian
from models.energies import SumoMixture


def test_sumo_mixture_normaliser_by_quadrature():
    def density(x2, x1):
        return math.exp(-SumoMixture.energy(torch.tensor([x1, x2], dtype=torch.float64)).item())

    z, _ = integrate.dblquad(density, -30, 30, -30, 30, epsabs=1e-10)
    assert math.log(z) == pytest.approx(SumoMixture().log_evidence, abs=1e-7)


def test_conjugate_gaussian_evidence_by_quadrature():
    problem = ConjugateGaussian.example(num_data=5, dim=1)
    x = problem.data[:, 0].numpy()

    def joint(mu):
        return stats.norm.pdf(mu) * np.prod(stats.norm.pdf(x, loc=mu))

    evidence, _ = integrate.quad(joint, -20, 20, epsabs=1e-14)
    assert problem.log_evidence == pytest.approx(math.log(evidence), abs=1e-8)


def test_conjugate_posterior_is_the_normalised_joint():
    problem = ConjugateGaussian.example(num_data=5, dim=1)
    loc, scale = problem.posterior
    mu = torch.linspace(-1, 2, 7, dtype=torch.float64)
    log_joint = torch.distributions.Normal(0.0, 1.0).log_prob(mu) + torch.distributions.Normal(
        mu[:, None], 1.0
    ).log_prob(problem.data[:, 0]).sum(-1)
    log_posterior = torch.distributions.Normal(loc[0], scale).log_prob(mu)
    assert torch.allclose(log_joint - log_posterior, torch.full_like(mu, problem.log_evidence))


def test_local_gaussian_evidence_by_quadrature():
    problem = LocalGaussian.example(num_data=3)
    total = 0.0
    for x in problem.data.tolist():
        value, _ = integrate.quad(
            lambda z, x=x: stats.norm.pdf(z) * stats.norm.pdf(x, z, problem.noise_scale), -20, 20
        )
        total += math.log(value)
    assert problem.log_evidence == pytest.approx(total, abs=1e-9)


def test_linear_regression_evidence_equals_bishop_formula():
    """Bishop (2006) eq. 3.86, computed independently of the marginal-Gaussian route."""
    problem = BayesianLinearRegression.diabetes(num_data=60)
    X, y = problem.features.numpy(), problem.targets.numpy()
    alpha, beta = problem.prior_precision, problem.noise_precision
    n, p = X.shape
    A = alpha * np.eye(p) + beta * X.T @ X
    m = beta * np.linalg.solve(A, X.T @ y)
    energy = beta / 2 * np.sum((y - X @ m) ** 2) + alpha / 2 * m @ m
    log_evidence = (
        p / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - energy
        - np.linalg.slogdet(A)[1] / 2
        - n / 2 * math.log(2 * math.pi)
    )
    assert problem.log_evidence == pytest.approx(log_evidence, abs=1e-8)
