r"""Any `GradientEstimator` as a Pyro loss for an expectation $\mathbb{E}_{q}[f(b)]$.

`ExpectationLoss` (estimator, $k$) estimates

$$
\nabla_\theta\, \mathbb{E}_{b \sim q_\theta}[f(b)]
$$

where $q_\theta$ is the guide's one discrete sample site and $f$ is read off the model:
$f(b) = -\sum_{s \neq b} \log p(s \mid b)$, the negative log density of the model run with
$b$ observed, **excluding the density of the site $b$ itself** (that site only names the
variable; $q$ is the measure, and a prior term on $b$ would add $-\log p(b)$ to $f$). The
natural way to write $f$ is ``pyro.factor("f", -f(b))``:

```python
def model():
    b = pyro.sample("b", dist.Bernoulli(0.5).expand([3]).to_event(1))  # names b only
    pyro.factor("f", -f(b))

def guide():
    eta = pyro.param("eta", torch.tensor(0.0))
    pyro.sample("b", dist.Bernoulli(logits=eta).expand([3]).to_event(1))
```

Unlike `EstimatorELBO`, the objective has no entropy term $-\log q(b)$: its score
$\nabla\log q$ would only add variance to an estimate of $\nabla\mathbb{E}_q[f]$. So
``varinf.gradient_variance([ExpectationLoss(e, k) ...], model, guide)`` measures exactly the
estimator's variance, as the functional ``estimator.surrogate(q, f, k)`` does.

With ``vectorize=True`` (default) the model runs once, conditioned on all $k$ states stacked
along a new leftmost dimension, so $f$ must broadcast over it (as ``pyro.factor`` of a
vectorised function does); ``vectorize=False`` runs the model once per state. Relaxed
estimators (`GumbelSoftmax`, `StraightThrough`, `RELAX`) condition the model on relaxed
samples, which it must then accept (probabilities in $[0,1]$ for a Bernoulli, points of the
simplex for a one-hot categorical): $f$ is evaluated by the model, never the site's density.
For `RELAX` the loss calls `RELAX.backward`, so the control variate's parameters also receive
their variance gradient (step an optimiser over ``relax.parameters()`` to train it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.infer import ELBO as PyroELBO
from torch.distributions import Distribution

from varinf.gradients.base import GradientEstimator, Surrogate
from varinf.gradients.discrete_site import discrete_guide_site, log_density_given
from varinf.gradients.relax import RELAX
from varinf.weights import capture_params


class ExpectationLoss(PyroELBO):
    r"""Loss $\hat{\mathbb{E}}_q[f]$ whose gradient is the estimator's (module docstring).

    Args:
        estimator: Any `GradientEstimator`, relaxed ones and `RELAX` included.
        num_particles: $k$, the evaluations of $f$ per step (the cost read by
            ``varinf.gradient_variance``).
        vectorize: Evaluate the $k$ states in one model run (see the module docstring).

    ``loss_and_grads`` accumulates the estimate of $\nabla\mathbb{E}_q[f]$ into ``.grad`` of
    the guide's parameters (and of model parameters $f$ depends on) and returns the estimate
    of $\mathbb{E}_q[f]$.

    Examples:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from varinf.gradients import UnorderedSet
        >>> def model():
        ...     b = pyro.sample("b", dist.Bernoulli(0.5).expand([2]).to_event(1))
        ...     pyro.factor("f", -b.sum(-1))
        >>> def guide():
        ...     logits = pyro.param("logits", torch.zeros(2))
        ...     pyro.sample("b", dist.Bernoulli(logits=logits).to_event(1))
        >>> pyro.clear_param_store()
        >>> ExpectationLoss(UnorderedSet(), 4).loss_and_grads(model, guide)  # all 4 states
        1.0
        >>> pyro.param("logits").unconstrained().grad  # exact: d/dl sigmoid(l) = 1/4
        tensor([0.2500, 0.2500])
    """

    def __init__(
        self, estimator: GradientEstimator, num_particles: int, *, vectorize: bool = True
    ) -> None:
        if not isinstance(estimator, GradientEstimator):
            raise TypeError(
                f"estimator must be a GradientEstimator, got {type(estimator).__name__}"
            )
        if isinstance(num_particles, bool) or not isinstance(num_particles, int):
            raise TypeError(f"num_particles must be an int, got {type(num_particles).__name__}")
        if num_particles < estimator.min_particles:
            raise ValueError(
                f"num_particles must be at least {estimator.min_particles} for "
                f"{type(estimator).__name__}, got {num_particles}"
            )
        super().__init__(num_particles=num_particles)  # read as the cost by gradient_variance
        self.estimator = estimator
        self.num_particles = num_particles
        self.vectorize = vectorize
        self.name = f"expectation[{estimator.name}]"

    def surrogate(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Surrogate:
        r"""One estimate: value and surrogate of $\mathbb{E}_q[f]$ (scalars)."""
        try:
            name, dist = discrete_guide_site(guide, args, kwargs)
        except ValueError as error:
            raise ValueError(f"ExpectationLoss: {error}") from None
        f = _read_f(model, name, dist, args, kwargs, self.vectorize)
        return self.estimator.surrogate(dist, f, self.num_particles)

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.surrogate(model, guide, args, kwargs).value.item()

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        return self.surrogate(model, guide, args, kwargs).surrogate

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with capture_params() as params:
            out = self.surrogate(model, guide, args, kwargs)
        if out.surrogate.requires_grad:
            if isinstance(self.estimator, RELAX):
                # theta's gradient, and the variance gradient of the control variate's phi
                trainable = [p for p in params.values() if p.requires_grad]
                self.estimator.backward(out.surrogate, trainable)
            else:
                out.surrogate.backward()
        return out.value.item()

    def _get_trace(self, model, guide, args, kwargs):  # pragma: no cover - Pyro's hook, unused
        raise NotImplementedError("ExpectationLoss traces the guide itself")


def _read_f(
    model: Callable, name: str, dist: Distribution, args: tuple, kwargs: dict, vectorize: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """$f$ on states ``(k, *event)`` -> ``(k,)``: minus the model's log density given $b$."""

    def f_once(states: torch.Tensor) -> torch.Tensor:
        batch_ndim = states.dim() - len(dist.event_shape)
        values = {name: states}
        return -log_density_given(
            model, values, args, kwargs, batch_ndim=batch_ndim, exclude=frozenset({name})
        )

    if vectorize:
        return f_once
    return lambda states: torch.cat([f_once(state.unsqueeze(0)) for state in states])
