r"""Conjugate models with analytic log evidence and exact posteriors.

Each problem carries ``model``, an ``exact_guide`` (the true posterior, so importance weights are
constant), a trainable ``guide`` (Pyro params), its data, and ``log_evidence``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints


@dataclass
class ConjugateGaussian:
    r"""Unknown mean of a Gaussian: $\mu \sim N(0, \sigma_0^2 I_d)$, $x_i \mid \mu \sim
    N(\mu, \sigma^2 I_d)$, $i = 1..n$.

    Per dimension the data are jointly Gaussian, $x_{\cdot j} \sim N(0, \sigma^2 I_n +
    \sigma_0^2 \mathbf 1 \mathbf 1^\top)$, which gives $\log p(x)$; the posterior is
    $N(\mu_n, \sigma_n^2 I)$ with $\sigma_n^{-2} = \sigma_0^{-2} + n\sigma^{-2}$ and
    $\mu_n = \sigma_n^2 \sum_i x_i / \sigma^2$.
    """

    data: torch.Tensor
    prior_scale: float = 1.0
    noise_scale: float = 1.0

    @classmethod
    def example(cls, num_data: int = 10, dim: int = 2, seed: int = 0) -> ConjugateGaussian:
        """Data simulated from the model itself (float64)."""
        generator = torch.Generator().manual_seed(seed)
        mean = torch.randn(dim, generator=generator, dtype=torch.float64)
        data = mean + torch.randn(num_data, dim, generator=generator, dtype=torch.float64)
        return cls(data)

    @property
    def log_evidence(self) -> float:
        n = self.data.shape[0]
        covariance = self.noise_scale**2 * torch.eye(n, dtype=self.data.dtype)
        covariance = covariance + self.prior_scale**2
        marginal = dist.MultivariateNormal(torch.zeros(n, dtype=self.data.dtype), covariance)
        return marginal.log_prob(self.data.T).sum().item()

    @property
    def posterior(self) -> tuple[torch.Tensor, float]:
        """Posterior mean ``(d,)`` and standard deviation."""
        precision = self.prior_scale**-2 + self.data.shape[0] * self.noise_scale**-2
        variance = 1.0 / precision
        return variance * self.data.sum(0) / self.noise_scale**2, math.sqrt(variance)

    def model(self) -> None:
        dim = self.data.shape[1]
        zeros = self.data.new_zeros(dim)
        mean = pyro.sample("mean", dist.Normal(zeros, self.prior_scale).to_event(1))
        with pyro.plate("data", self.data.shape[0]):
            pyro.sample("obs", dist.Normal(mean, self.noise_scale).to_event(1), obs=self.data)

    def exact_guide(self) -> None:
        loc, scale = self.posterior
        pyro.sample("mean", dist.Normal(loc, scale).to_event(1))

    def guide(self) -> None:
        dim = self.data.shape[1]
        loc = pyro.param("mean_loc", self.data.new_zeros(dim))
        scale = pyro.param("mean_scale", self.data.new_ones(dim), constraint=constraints.positive)
        pyro.sample("mean", dist.Normal(loc, scale).to_event(1))


@dataclass
class LocalGaussian:
    r"""One latent per datum: $z_i \sim N(0, 1)$, $x_i \mid z_i \sim N(z_i, \sigma^2)$.

    Every site lies in the ``data`` plate, so multi-sample bounds average particles per datum.
    $x_i \sim N(0, 1 + \sigma^2)$ gives $\log p(x)$; the posterior of $z_i$ is
    $N(x_i / (1 + \sigma^2), \sigma^2 / (1 + \sigma^2))$.
    """

    data: torch.Tensor
    noise_scale: float = 0.5

    @classmethod
    def example(cls, num_data: int = 20, seed: int = 0) -> LocalGaussian:
        generator = torch.Generator().manual_seed(seed)
        return cls(1.2 * torch.randn(num_data, generator=generator, dtype=torch.float64))

    @property
    def log_evidence(self) -> float:
        scale = self.data.new_tensor(1 + self.noise_scale**2).sqrt()
        return dist.Normal(self.data.new_zeros(()), scale).log_prob(self.data).sum().item()

    def model(self) -> None:
        with pyro.plate("data", len(self.data)):
            z = pyro.sample("z", dist.Normal(self.data.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, self.noise_scale), obs=self.data)

    def exact_guide(self) -> None:
        shrink = 1 / (1 + self.noise_scale**2)
        with pyro.plate("data", len(self.data)):
            pyro.sample("z", dist.Normal(shrink * self.data, math.sqrt(shrink) * self.noise_scale))

    def guide(self) -> None:
        loc = pyro.param("z_loc", torch.zeros_like(self.data))
        scale = pyro.param("z_scale", torch.ones_like(self.data), constraint=constraints.positive)
        with pyro.plate("data", len(self.data)):
            pyro.sample("z", dist.Normal(loc, scale))


@dataclass
class BayesianLinearRegression:
    r"""$w \sim N(0, \alpha^{-1} I_p)$, $y \mid X, w \sim N(Xw, \beta^{-1} I_n)$ with known
    precisions, on scikit-learn's bundled ``load_diabetes`` (standardised; no download).

    $y \sim N(0, \beta^{-1} I + \alpha^{-1} X X^\top)$ gives $\log p(y)$ (Bishop 2006, §3.5);
    the posterior is $N(m, S)$ with $S^{-1} = \alpha I + \beta X^\top X$, $m = \beta S X^\top y$.
    """

    features: torch.Tensor
    targets: torch.Tensor
    prior_precision: float = 1.0
    noise_precision: float = 2.0

    @classmethod
    def diabetes(cls, num_data: int | None = 100) -> BayesianLinearRegression:
        from sklearn.datasets import load_diabetes

        features, targets = load_diabetes(return_X_y=True)
        features = torch.as_tensor(features[:num_data], dtype=torch.float64)
        targets = torch.as_tensor(targets[:num_data], dtype=torch.float64)
        features = (features - features.mean(0)) / features.std(0)
        targets = (targets - targets.mean()) / targets.std()
        return cls(features, targets)

    @property
    def log_evidence(self) -> float:
        n = len(self.targets)
        covariance = torch.eye(n, dtype=self.features.dtype) / self.noise_precision
        covariance = covariance + self.features @ self.features.T / self.prior_precision
        zeros = torch.zeros(n, dtype=self.features.dtype)
        return dist.MultivariateNormal(zeros, covariance).log_prob(self.targets).item()

    @property
    def posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean ``(p,)`` and covariance ``(p, p)``."""
        p = self.features.shape[1]
        precision = self.prior_precision * torch.eye(p, dtype=self.features.dtype)
        precision = precision + self.noise_precision * self.features.T @ self.features
        covariance = torch.linalg.inv(precision)
        mean = self.noise_precision * covariance @ self.features.T @ self.targets
        return mean, covariance

    def model(self) -> None:
        p = self.features.shape[1]
        zeros = self.features.new_zeros(p)
        weights = pyro.sample("weights", dist.Normal(zeros, self.prior_precision**-0.5).to_event(1))
        with pyro.plate("data", len(self.targets)):
            mean = (weights * self.features).sum(-1)  # (..., n): the data plate broadcasts
            pyro.sample("y", dist.Normal(mean, self.noise_precision**-0.5), obs=self.targets)

    def exact_guide(self) -> None:
        mean, covariance = self.posterior
        pyro.sample("weights", dist.MultivariateNormal(mean, covariance))

    def guide(self) -> None:
        p = self.features.shape[1]
        loc = pyro.param("weights_loc", self.features.new_zeros(p))
        scale_tril = pyro.param(
            "weights_scale_tril",
            0.1 * torch.eye(p, dtype=self.features.dtype),
            constraint=constraints.lower_cholesky,
        )
        pyro.sample("weights", dist.MultivariateNormal(loc, scale_tril=scale_tril))


@dataclass
class GammaPoisson:
    r"""Positive rates: $\lambda_j \sim \mathrm{Gamma}(a, b)$, $x_{ij} \mid \lambda_j \sim
    \mathrm{Poisson}(\lambda_j)$, $i = 1..n$, $j = 1..d$.

    With $S_j = \sum_i x_{ij}$, the posterior is $\mathrm{Gamma}(a + S_j, b + n)$ and
    $\log p(x) = \sum_j [a \log b - \log\Gamma(a) + \log\Gamma(a + S_j) - (a + S_j)\log(b + n)]
    - \sum_{ij} \log x_{ij}!$.
    """

    data: torch.Tensor
    shape: float = 2.0
    rate: float = 1.0

    @classmethod
    def example(cls, num_data: int = 5, dim: int = 3, seed: int = 0) -> GammaPoisson:
        generator = torch.Generator().manual_seed(seed)
        rates = torch.linspace(0.5, 4.0, dim, dtype=torch.float64)
        return cls(torch.poisson(rates.expand(num_data, dim), generator=generator))

    @property
    def log_evidence(self) -> float:
        n = self.data.shape[0]
        a, b = self.shape, self.rate
        post = a + self.data.sum(0)
        per_rate = a * math.log(b) - math.lgamma(a) + torch.lgamma(post) - post * math.log(b + n)
        return (per_rate.sum() - torch.lgamma(self.data + 1).sum()).item()

    @property
    def posterior(self) -> dist.Gamma:
        return dist.Gamma(self.shape + self.data.sum(0), self.rate + self.data.shape[0])

    def model(self) -> None:
        prior = dist.Gamma(self.data.new_tensor(self.shape), self.data.new_tensor(self.rate))
        rates = pyro.sample("rates", prior.expand([self.data.shape[1]]).to_event(1))
        with pyro.plate("data", self.data.shape[0]):
            pyro.sample("x", dist.Poisson(rates).to_event(1), obs=self.data)

    def exact_guide(self) -> None:
        pyro.sample("rates", self.posterior.to_event(1))
