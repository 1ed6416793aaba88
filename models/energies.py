r"""Unnormalised energies with known normalising constants, as Pyro models.

An energy $U(x)$ defines $p(x) \propto e^{-U(x)}$ with $Z = \int e^{-U(x)}\,dx$. As a Pyro model
it is an improper flat site plus ``pyro.factor(-U)``, so $\log p(\text{model}) = -U(x)$ and every
evidence estimator targets $\log Z$.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints


@dataclass
class SumoMixture:
    r"""The SUMO note's energy: the mixture $\tfrac12 N([-2,0], I) + \tfrac12 N([2,0], 4I)$
    scaled so that $Z = 2\pi$, $\log Z \approx 1.8379$,

    $$U(x) = -\log\Big(\tfrac12 e^{-\|x - (-2,0)\|^2/2} + \tfrac18 e^{-\|x - (2,0)\|^2/8}\Big),$$

    with the note's proposal $q = N(0, 5I)$ (covariance $5I$). Reported there with $10^4$
    draws: ELBO 1.4595, IWAE ($K=5$) 1.7616, SUMO 1.8359 (Huang, "SUMO", 2020, a blog note on
    Luo et al. 2020).

    Examples:
        >>> round(SumoMixture().log_evidence, 4)
        1.8379
    """

    guide_variance: float = 5.0

    @property
    def log_evidence(self) -> float:
        return math.log(2 * math.pi)

    @staticmethod
    def energy(x: torch.Tensor) -> torch.Tensor:
        """$U(x)$ for ``x`` of shape ``(..., 2)``."""
        left = -((x[..., 0] + 2) ** 2 + x[..., 1] ** 2) / 2 + math.log(1 / 2)
        right = -((x[..., 0] - 2) ** 2 + x[..., 1] ** 2) / 8 + math.log(1 / 8)
        return -torch.logaddexp(left, right)

    def model(self) -> None:
        x = pyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (2,)))
        pyro.factor("energy", -self.energy(x))

    def guide(self) -> None:
        scale = torch.full((2,), math.sqrt(self.guide_variance))
        pyro.sample("x", dist.Normal(torch.zeros(2), scale).to_event(1))
