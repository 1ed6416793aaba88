r"""Regressions on scikit-learn's bundled data sets (no download): the RQMC and flow benchmarks'
models.

`LogisticRegression` is Bayesian logistic regression on the breast-cancer data (569 tumours, 30
standardised features and an intercept, prior $N(0, 10 I)$):

$$w \sim N(0, 10\, I_{31}), \qquad y_i \mid w \sim \mathrm{Bernoulli}(\sigma(x_i^\top w)).$$

Its evidence has no closed form.

`HierarchicalRegression` is a hierarchical linear regression with group intercepts, on the
diabetes data (442 patients, 10 standardised features, grouped by sex: 2 groups) or on
simulated groups:

$$\mu \sim N(0, 1),\ \ \tau \sim \mathrm{HalfNormal}(1),\ \ a_g \sim N(\mu, \tau^2),\ \
w \sim N(0, I_p),\ \ y_i \sim N(a_{g(i)} + x_i^\top w, \sigma^2).$$
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints


def _standardise(features: torch.Tensor) -> torch.Tensor:
    return (features - features.mean(0)) / features.std(0)


@dataclass
class LogisticRegression:
    r"""Bayesian logistic regression: ``model()``, a mean-field ``guide()``.

    Args:
        features: ``(n, p)``, standardised; an intercept column is added by `breast_cancer`.
        labels: ``(n,)`` in {0, 1}.
        prior_scale: $\sqrt{10}$ by default (variance 10).

    Examples:
        >>> problem = LogisticRegression.breast_cancer()
        >>> problem.features.shape, int(problem.labels.sum())
        (torch.Size([569, 31]), 357)
    """

    features: torch.Tensor
    labels: torch.Tensor
    prior_scale: float = math.sqrt(10.0)

    @classmethod
    def breast_cancer(cls, dtype: torch.dtype = torch.float64) -> LogisticRegression:
        from sklearn.datasets import load_breast_cancer

        features, labels = load_breast_cancer(return_X_y=True)
        features = _standardise(torch.as_tensor(features, dtype=dtype))
        features = torch.cat([torch.ones(len(features), 1, dtype=dtype), features], dim=1)
        return cls(features, torch.as_tensor(labels, dtype=dtype))

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def model(self) -> None:
        zeros = self.features.new_zeros(self.dim)
        w = pyro.sample("w", dist.Normal(zeros, self.prior_scale).to_event(1))
        with pyro.plate("data", len(self.labels)):
            logits = (w * self.features).sum(-1)  # (..., n): the data plate broadcasts
            pyro.sample("y", dist.Bernoulli(logits=logits), obs=self.labels)

    def guide(self) -> None:
        loc = pyro.param("w_loc", self.features.new_zeros(self.dim))
        scale = pyro.param(
            "w_scale", 0.1 * self.features.new_ones(self.dim), constraint=constraints.positive
        )
        pyro.sample("w", dist.Normal(loc, scale).to_event(1))


@dataclass
class HierarchicalRegression:
    r"""Hierarchical linear regression with group intercepts: ``model()`` and a mean-field
    ``guide()``; the noise scale $\sigma$ is known.

    Examples:
        >>> problem = HierarchicalRegression.diabetes()
        >>> problem.features.shape, problem.num_groups
        (torch.Size([442, 10]), 2)
    """

    features: torch.Tensor
    targets: torch.Tensor
    groups: torch.Tensor
    noise_scale: float = 0.7

    @classmethod
    def diabetes(cls, dtype: torch.dtype = torch.float64) -> HierarchicalRegression:
        from sklearn.datasets import load_diabetes

        features, targets = load_diabetes(return_X_y=True)
        features = torch.as_tensor(features, dtype=dtype)
        groups = (features[:, 1] > 0).long()  # the data set's sex column, centred
        targets = torch.as_tensor(targets, dtype=dtype)
        return cls(_standardise(features), (targets - targets.mean()) / targets.std(), groups)

    @property
    def num_groups(self) -> int:
        return int(self.groups.max()) + 1

    def model(self) -> None:
        zeros = self.features.new_zeros(())
        mu = pyro.sample("mu", dist.Normal(zeros, 1.0))
        tau = pyro.sample("tau", dist.HalfNormal(zeros + 1.0))
        with pyro.plate("groups", self.num_groups):
            intercepts = pyro.sample("intercepts", dist.Normal(mu, tau))
        p = self.features.shape[1]
        w = pyro.sample("w", dist.Normal(self.features.new_zeros(p), 1.0).to_event(1))
        with pyro.plate("data", len(self.targets)):
            mean = intercepts[..., self.groups] + (w * self.features).sum(-1)
            pyro.sample("y", dist.Normal(mean, self.noise_scale), obs=self.targets)

    def guide(self) -> None:
        g, p = self.num_groups, self.features.shape[1]
        new = self.features.new_zeros
        positive = constraints.positive
        mu_loc, mu_scale = (
            pyro.param("mu_loc", new(())),
            pyro.param("mu_scale", new(()) + 0.1, constraint=positive),
        )
        pyro.sample("mu", dist.Normal(mu_loc, mu_scale))
        tau_loc = pyro.param("tau_loc", new(()))
        tau_scale = pyro.param("tau_scale", new(()) + 0.1, constraint=positive)
        pyro.sample("tau", dist.LogNormal(tau_loc, tau_scale))
        a_loc = pyro.param("intercepts_loc", new(g))
        a_scale = pyro.param("intercepts_scale", new(g) + 0.1, constraint=positive)
        with pyro.plate("groups", g):
            pyro.sample("intercepts", dist.Normal(a_loc, a_scale))
        w_loc = pyro.param("w_loc", new(p))
        w_scale = pyro.param("w_scale", new(p) + 0.1, constraint=positive)
        pyro.sample("w", dist.Normal(w_loc, w_scale).to_event(1))
