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
score; they are refused. For VIMCO use `varinf.gradients.VIMCO`, which is vectorised.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
from pyro.infer import ELBO as PyroELBO
from torch.distributions import Distribution, Independent

from varinf.gradients.base import GradientEstimator, Surrogate
from varinf.gradients.relax import RELAX
from varinf.gradients.relaxed import GumbelSoftmax


class EstimatorELBO(PyroELBO):
    r"""The ELBO with the gradient of a discrete `GradientEstimator` (see the module docstring).

    Args:
        estimator: A score-type estimator: `ScoreFunction`, `SumAndSample`, `UnorderedSet`
            (or `VIMCOEstimator`, which then estimates the IWAE bound).
        num_samples: $k$, the states scored per step.

    Loss is $-\hat{\mathcal{L}}$; ``loss_and_grads`` accumulates the estimator's gradient for the
    guide's and the model's parameters.
    """

    def __init__(self, estimator: GradientEstimator, num_samples: int) -> None:
        if not isinstance(estimator, GradientEstimator):
            raise TypeError(
                f"estimator must be a GradientEstimator, got {type(estimator).__name__}"
            )
        if isinstance(estimator, (GumbelSoftmax, RELAX)):
            raise ValueError(
                f"estimator {estimator.name!r} evaluates f on relaxed samples, which a discrete "
                "model site cannot score; use a score-type estimator"
            )
        super().__init__(num_particles=num_samples)  # read as the cost by gradient_variance
        self.estimator = estimator
        self.num_samples = num_samples
        self.name = f"elbo[{estimator.name}]"

    def surrogate(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Surrogate:
        """One estimate: value and surrogate of $\\mathcal{L}$ (scalars)."""
        name, dist = _discrete_site(guide, args, kwargs)
        log_q = dist.log_prob

        def f(states: torch.Tensor) -> torch.Tensor:
            values = []
            for state in states:  # one conditioned model run per state
                conditioned = poutine.condition(model, data={name: state})
                trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
                values.append(trace.log_prob_sum() - log_q(state))
            return torch.stack(values)

        return self.estimator.surrogate(dist, f, self.num_samples)

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


def _discrete_site(guide: Callable, args: tuple, kwargs: dict) -> tuple[str, Distribution]:
    """The guide's one latent site and its distribution as one joint variable."""
    trace = poutine.trace(guide).get_trace(*args, **kwargs)
    latent = [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]
    if len(latent) != 1 or latent[0][1]["fn"].has_rsample:
        names = [name for name, _ in latent]
        raise ValueError(
            "EstimatorELBO needs a guide with exactly one latent site, discrete; got "
            f"{names or 'none'} (use VIMCO or ScoreELBO for other guides)"
        )
    name, site = latent[0]
    fn = site["fn"]
    if isinstance(fn, Independent):
        fn = Independent(fn.base_dist, fn.reinterpreted_batch_ndims + len(fn.batch_shape))
    elif fn.batch_shape:
        fn = Independent(fn, len(fn.batch_shape))
    return name, fn
