r"""Any score-type gradient estimator as a Pyro loss, for guides with one discrete latent site.

`EstimatorELBO` (estimator, $k$) estimates the evidence lower bound

$$
\mathcal{L} = \mathbb{E}_{z\sim q_\phi}\big[\log p_\theta(x, z) - \log q_\phi(z)\big]
$$

with the given `GradientEstimator` and
$f(z) = \log p_\theta(x, z) - \log q_\phi(z)$, so ``SVI(model, guide, optim,
loss=EstimatorELBO(UnorderedSet(), 4))`` trains with the unordered set estimator (or
sum-and-sample, or any score-function variant). The guide must have exactly one latent sample
site, discrete (a categorical, one-hot categorical or Bernoulli, possibly inside plates: its
batch dimensions are then one joint variable). Each of the $k$ states is scored by one model run
conditioned on it, a loop of $k$ traces rather than one vectorised run, because the estimators
choose their states (without replacement, or the most probable ones) outside the model.

Relaxed estimators and RELAX need $f$ on relaxed samples, which a discrete model site cannot
score; they are refused. For VIMCO use ``varinf.IWAE(K, gradient="vimco")``, which is vectorised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.infer import ELBO as PyroELBO

from varinf.gradients.base import GradientEstimator, Surrogate
from varinf.gradients.discrete_site import discrete_guide_site, log_density_given
from varinf.gradients.relax import RELAX
from varinf.gradients.relaxed import GumbelSoftmax


class EstimatorELBO(PyroELBO):
    r"""The ELBO with the gradient of a discrete `GradientEstimator` (see the module docstring).

    Args:
        estimator: A score-type estimator: `ScoreFunction`, `SumAndSample`, `UnorderedSet`
            (or `VIMCOEstimator`, which then estimates the IWAE bound).
        num_particles: $k$, the states scored per step.

    Loss is $-\hat{\mathcal{L}}$; ``loss_and_grads`` accumulates the estimator's gradient for the
    guide's and the model's parameters.
    """

    def __init__(self, estimator: GradientEstimator, num_particles: int) -> None:
        if not isinstance(estimator, GradientEstimator):
            raise TypeError(
                f"estimator must be a GradientEstimator, got {type(estimator).__name__}"
            )
        if isinstance(estimator, (GumbelSoftmax, RELAX)):
            raise ValueError(
                f"estimator {estimator.name!r} evaluates f on relaxed samples, which a discrete "
                "model site cannot score; use a score-type estimator"
            )
        super().__init__(num_particles=num_particles)  # read as the cost by gradient_variance
        self.estimator = estimator
        self.num_particles = num_particles
        self.name = f"elbo[{estimator.name}]"

    def surrogate(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Surrogate:
        """One estimate: value and surrogate of $\\mathcal{L}$ (scalars)."""
        try:
            name, dist = discrete_guide_site(guide, args, kwargs)
        except ValueError as error:
            raise ValueError(f"EstimatorELBO: {error}") from None

        def f(states: torch.Tensor) -> torch.Tensor:
            values = []
            for state in states:  # one conditioned model run per state
                log_p = log_density_given(model, {name: state}, args, kwargs)
                values.append(log_p - dist.log_prob(state))
            return torch.stack(values)

        return self.estimator.surrogate(dist, f, self.num_particles)

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with torch.no_grad():
            return -self.surrogate(model, guide, args, kwargs).value.item()

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        return -self.surrogate(model, guide, args, kwargs).surrogate

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        out = self.surrogate(model, guide, args, kwargs)
        if out.surrogate.requires_grad:
            (-out.surrogate).backward()
        return -out.value.item()

    def _get_trace(self, model, guide, args, kwargs):  # pragma: no cover - Pyro's hook, unused
        raise NotImplementedError("EstimatorELBO traces the guide itself")
