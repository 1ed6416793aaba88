r"""Exact (i.i.d.) power-posterior draws of the Gaussian conjugate models, for the evidence tests.

Every power posterior of Bayesian linear regression (and of the conjugate Gaussian, a special
case with identity features) is Gaussian: precision $\alpha I + \beta \tau X^\top X$, mean
$\beta \tau \Sigma_\beta X^\top y$. So the estimators' math can be tested without MCMC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from models.conjugate import BayesianLinearRegression


@dataclass
class GaussianLinearModel:
    r"""$w \sim N(0, \alpha^{-1} I)$, $y \mid w \sim N(Xw, \tau^{-1} I)$ with a known truth."""

    features: torch.Tensor  # (N, P)
    targets: torch.Tensor  # (N,)
    prior_precision: float
    noise_precision: float

    @classmethod
    def regression(cls, num_data: int = 100) -> GaussianLinearModel:
        r"""`BayesianLinearRegression` on the diabetes data (10 weights)."""
        problem = BayesianLinearRegression.diabetes(num_data)
        model = cls(
            problem.features, problem.targets, problem.prior_precision, problem.noise_precision
        )
        assert abs(model.log_evidence - problem.log_evidence) < 1e-8
        return model

    @classmethod
    def normal_mean(cls, num_data: int = 20, seed: int = 0) -> GaussianLinearModel:
        r"""Normal-Normal: $\mu \sim N(0, 1)$, $y_i \sim N(\mu, 1/2)$."""
        generator = torch.Generator().manual_seed(seed)
        targets = 0.7 + torch.randn(num_data, generator=generator, dtype=torch.float64) * 0.5**0.5
        return cls(torch.ones(num_data, 1, dtype=torch.float64), targets, 1.0, 2.0)

    @property
    def log_evidence(self) -> float:
        n = len(self.targets)
        covariance = torch.eye(n, dtype=torch.float64) / self.noise_precision
        covariance = covariance + self.features @ self.features.T / self.prior_precision
        zeros = torch.zeros(n, dtype=torch.float64)
        marginal = torch.distributions.MultivariateNormal(zeros, covariance)
        return float(marginal.log_prob(self.targets))

    def power_posterior(self, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.features.shape[1]
        precision = self.prior_precision * torch.eye(p, dtype=torch.float64)
        precision = precision + beta * self.noise_precision * self.features.T @ self.features
        covariance = torch.linalg.inv(precision)
        mean = beta * self.noise_precision * covariance @ self.features.T @ self.targets
        return mean, covariance

    def sample(self, beta: float, shape: tuple[int, ...], generator) -> torch.Tensor:
        mean, covariance = self.power_posterior(beta)
        noise = torch.randn(*shape, len(mean), generator=generator, dtype=torch.float64)
        return mean + noise @ torch.linalg.cholesky(covariance).T

    def log_likelihood_per_datum(self, weights: torch.Tensor) -> torch.Tensor:
        r"""``(..., N)`` per-datum log-likelihoods of weight draws ``(..., P)``."""
        residual = self.targets - weights @ self.features.T
        tau = self.noise_precision
        return 0.5 * math.log(tau / (2 * math.pi)) - 0.5 * tau * residual.square()

    def log_prior(self, weights: torch.Tensor) -> torch.Tensor:
        a = self.prior_precision
        p = weights.shape[-1]
        return 0.5 * p * math.log(a / (2 * math.pi)) - 0.5 * a * weights.square().sum(-1)

    def power_posterior_log_likelihoods(
        self, temperatures, num_chains: int, num_draws: int, seed: int = 0
    ) -> torch.Tensor:
        r"""``(T, C, S)`` log-likelihoods of exact draws at each temperature."""
        generator = torch.Generator().manual_seed(seed)
        rows = []
        for beta in temperatures:
            draws = self.sample(float(beta), (num_chains, num_draws), generator)
            rows.append(self.log_likelihood_per_datum(draws).sum(-1))
        return torch.stack(rows)

    def power_posterior_draws(
        self, temperatures, num_chains: int, num_draws: int, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""Exact draws ``(T, C, S, P)``, their log-likelihoods ``(T, C, S)`` and the score
        $-\Lambda_\beta (w - m_\beta)$ of their power posterior ``(T, C, S, P)``."""
        generator = torch.Generator().manual_seed(seed)
        draws, ell, scores = [], [], []
        for beta in temperatures:
            mean, covariance = self.power_posterior(float(beta))
            w = self.sample(float(beta), (num_chains, num_draws), generator)
            draws.append(w)
            ell.append(self.log_likelihood_per_datum(w).sum(-1))
            scores.append(-(w - mean) @ torch.linalg.inv(covariance))
        return torch.stack(draws), torch.stack(ell), torch.stack(scores)

    def predictive_truth(self) -> tuple[float, float]:
        r"""Exact $\sum_i \log p(y_i \mid y)$ (PPD) and $\sum_i \log p(y_i \mid y_{-i})$ (CPO)."""
        x, y, tau = self.features, self.targets, self.noise_precision
        mean, covariance = self.power_posterior(1.0)
        ppd_var = 1 / tau + ((x @ covariance) * x).sum(-1)
        ppd = _normal_log_prob(y, x @ mean, ppd_var).sum()
        cpo = 0.0
        for i in range(len(y)):
            keep = torch.arange(len(y)) != i
            loo = GaussianLinearModel(x[keep], y[keep], self.prior_precision, tau)
            loo = loo.power_posterior(1.0)
            variance = 1 / tau + x[i] @ loo[1] @ x[i]
            cpo += float(_normal_log_prob(y[i], x[i] @ loo[0], variance))
        return float(ppd), cpo


def _normal_log_prob(value, mean, variance):
    return -0.5 * (torch.log(2 * math.pi * variance) + (value - mean) ** 2 / variance)


class Terms(NamedTuple):
    log_prior: torch.Tensor
    log_likelihood: torch.Tensor
    log_likelihood_per_datum: torch.Tensor | None


class GaussianTarget:
    r"""A hand-written batched potential of a `GaussianLinearModel` (the interface of
    `varinf.potential.Potential` that SMC uses), for testing the samplers on their own."""

    def __init__(self, model: GaussianLinearModel, seed: int = 0) -> None:
        self.model = model
        self.generator = torch.Generator().manual_seed(seed)
        self.num_evaluations = 0

    def initial_points(self, num_chains: int) -> torch.Tensor:
        return self.model.sample(0.0, (num_chains,), self.generator)

    def terms(self, z: torch.Tensor) -> Terms:
        per_datum = self.model.log_likelihood_per_datum(z)
        return Terms(self.model.log_prior(z), per_datum.sum(-1), per_datum)

    def value_and_grad(self, z, beta=1.0):
        self.num_evaluations += len(z)
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            terms = self.terms(z)
            value = beta * terms.log_likelihood + terms.log_prior
            (grad,) = torch.autograd.grad(value.sum(), z)
        detached = Terms(*(t.detach() for t in terms))
        return value.detach(), grad, detached


def fit_gaussian(draws: torch.Tensor) -> torch.distributions.MultivariateNormal:
    """Multivariate normal with the sample mean and covariance of ``(S, P)`` draws."""
    mean = draws.mean(0)
    centred = draws - mean
    covariance = centred.T @ centred / (len(draws) - 1)
    return torch.distributions.MultivariateNormal(mean, covariance)


def reference_power_posterior_log_ratios(
    model: GaussianLinearModel, reference, temperatures, num_draws: int, seed: int = 0
) -> torch.Tensor:
    r"""``(T, 1, S)`` draws of $\ell + \log p - \log r$ from the generalized stepping stone's
    paths $q^\beta r^{1-\beta}$, all Gaussian: precision $\beta \Sigma^{-1} + (1-\beta)
    \Sigma_r^{-1}$ with $N(m, \Sigma)$ the posterior."""
    generator = torch.Generator().manual_seed(seed)
    mean, covariance = model.power_posterior(1.0)
    post_precision = torch.linalg.inv(covariance)
    ref_precision = reference.precision_matrix
    rows = []
    for beta in temperatures:
        beta = float(beta)
        precision = beta * post_precision + (1 - beta) * ref_precision
        cov = torch.linalg.inv(precision)
        loc = cov @ (beta * post_precision @ mean + (1 - beta) * ref_precision @ reference.loc)
        noise = torch.randn(num_draws, len(loc), generator=generator, dtype=torch.float64)
        draws = loc + noise @ torch.linalg.cholesky(cov).T
        log_q = model.log_likelihood_per_datum(draws).sum(-1) + model.log_prior(draws)
        rows.append(log_q - reference.log_prob(draws))
    return torch.stack(rows)[:, None]
