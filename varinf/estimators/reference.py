r"""The generalized stepping stone's path from a reference distribution to the posterior.

Fan, Wu, Chen, Kuo and Lewis (2011), "Choosing among partition models in Bayesian
phylogenetics" (Mol. Biol. Evol.): replace the prior at $\beta = 0$ by a reference density
$r(z)$ close to the posterior, and temper

$$\pi_\beta(z) \propto \big(p(x \mid z) p(z)\big)^\beta\, r(z)^{1-\beta}.$$

Its normaliser runs from $\int r = 1$ to $p(x)$, so stepping stone along it estimates $\log
p(x)$ with the "log-likelihood" $\ell + \log p - \log r$, which is nearly constant when $r$ is
good: far less variance per stone than the prior path. Here $r$ is a multivariate normal over
the unconstrained latents fitted to posterior draws (for positive sites such as branch lengths,
a correlated log-normal; Fan et al. used independent gammas).

`ReferencePath` presents that path as a potential, so `varinf.mcmc.MCMC` samples it unchanged:
its terms' ``log_prior`` is $\log r$ and ``log_likelihood`` is $\ell + \log p - \log r$.
"""

from __future__ import annotations

import torch

from varinf.potential_layout import PotentialTerms


class ReferencePath:
    r"""A `varinf.potential.Potential` seen along the reference path $\pi_\beta \propto
    (p(x \mid z) p(z))^\beta r(z)^{1-\beta}$.

    Args:
        potential: the model's potential.
        reference: a distribution over ``(D,)`` unconstrained points with ``log_prob`` and
            ``sample`` (e.g. `varinf.estimators.bridge.fit_proposal` of posterior draws).

    Examples:
        >>> import pyro, pyro.distributions as dist
        >>> from varinf.potential import Potential
        >>> def model():
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(mu, 1.0), obs=torch.tensor(0.5))
        >>> reference = torch.distributions.MultivariateNormal(
        ...     torch.zeros(1, dtype=torch.float64), torch.eye(1, dtype=torch.float64))
        >>> path = ReferencePath(Potential(model), reference)
        >>> value, grad, terms = path.value_and_grad(torch.zeros(3, 1, dtype=torch.float64), 0.0)
        >>> torch.allclose(value, reference.log_prob(torch.zeros(3, 1, dtype=torch.float64)))
        True
    """

    def __init__(self, potential, reference) -> None:
        self.potential = potential
        self.reference = reference
        self.dim = potential.dim
        self.dtype = potential.dtype
        self.model = potential.model
        self.num_data = None

    @property
    def num_evaluations(self) -> int:
        return self.potential.num_evaluations

    def terms(self, z: torch.Tensor) -> PotentialTerms:
        terms = self.potential.terms(z)
        log_r = self.reference.log_prob(z)
        log_q = terms.log_likelihood + terms.log_prior
        return PotentialTerms(log_r, log_q - log_r, None)

    def value_and_grad(self, z: torch.Tensor, beta=1.0):
        z = z.detach().to(self.dtype).requires_grad_(True)
        with torch.enable_grad():
            terms = self.terms(z)
            value = terms.log_density(beta)
            (grad,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), grad, terms.detach()

    def log_likelihood(self, z: torch.Tensor, per_datum: bool = False) -> torch.Tensor:
        return self.terms(z).log_likelihood

    def initial_points(self, num_chains: int, init=None) -> torch.Tensor:
        """Draws from the reference (the path's $\\beta = 0$ end)."""
        return self.reference.sample((num_chains,)).to(self.dtype)

    def constrain(self, z: torch.Tensor) -> dict:
        return self.potential.constrain(z)
