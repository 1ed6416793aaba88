r"""Relaxed gradients: Gumbel-softmax and straight-through Gumbel-softmax.

Jang, Gu and Poole (2017), "Categorical reparameterization with Gumbel-softmax"; Maddison, Mnih
and Teh (2017), "The Concrete distribution". A categorical sample is $z =
\mathrm{onehot}(\arg\max_i(\log q_i + g_i))$ with Gumbel noise $g$; replacing the argmax by
a tempered softmax,

$$
y = \mathrm{softmax}\big((\log q + g)/\tau\big),
$$

gives a reparameterised sample on the simplex and the pathwise gradient
$\nabla_\theta f(y)$. It is unbiased for $\nabla\,\mathbb{E}_g[f(y_\tau)]$, the
*relaxed* objective, and biased for $\nabla\,\mathbb{E}_q[f(z)]$; the bias vanishes as
$\tau \to 0$ while the variance grows (as $1/\tau$ for smooth $f$). ``f`` must
accept relaxed samples (one-hot vectors of a `OneHotCategorical`,
probabilities in $[0, 1]$ for a Bernoulli).

The straight-through variant (Bengio, Léonard and Courville 2013; Jang et al. 2017) evaluates
$f$ at the hard sample $z$ and back-propagates through $y$:
$z + y - \mathrm{sg}(y)$. Its value is unbiased, its gradient biased at every
temperature (it is $\nabla f$ at $z$ times $\partial y/\partial\theta$), but
``f`` sees only discrete inputs. For the Concrete *distribution* (densities, relaxed KL), see
`varinf.distributions.Concrete`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn.functional import one_hot

from varinf.distributions.concrete import TemperatureSchedule
from varinf.gradients.base import CategoricalView, GradientEstimator, Surrogate


def relaxed_sample(
    view: CategoricalView, num_particles: int, temperature: float, generator
) -> torch.Tensor:
    """Gumbel-softmax samples ``(k, *batch_shape, m, n)``, differentiable in the log-probs."""
    logits = view.log_probs + view.gumbel(num_particles, generator)
    return torch.softmax(logits / temperature, -1)


def straight_through(soft: torch.Tensor) -> torch.Tensor:
    """The hard one-hot argmax of ``soft`` in value, the gradient of ``soft``."""
    hard = one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard + soft - soft.detach()


class GumbelSoftmax(GradientEstimator):
    r"""Pathwise gradient of $\frac1k\sum_i f(y_i)$ for Gumbel-softmax samples $y_i$.

    Args:
        temperature: $\tau > 0$, or a schedule from `varinf.distributions` (e.g.
            ``ExponentialAnnealing``) whose ``value`` is read on every call; the training loop
            advances it with ``schedule.step()``.

    Examples:
        >>> import torch
        >>> from torch.distributions import OneHotCategorical
        >>> logits = torch.zeros(4, requires_grad=True)
        >>> q = OneHotCategorical(logits=logits)
        >>> out = GumbelSoftmax(0.5).surrogate(q, lambda y: y[..., 0], 8)
        >>> out.surrogate.backward()
        >>> bool(logits.grad[0] > 0)
        True
    """

    name = "gumbel-softmax"
    unbiased = False
    hard = False

    def __init__(self, temperature: float | TemperatureSchedule = 0.5) -> None:
        if not isinstance(temperature, TemperatureSchedule) and (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
            or not temperature > 0
        ):
            raise ValueError(
                "temperature must be a positive number or a TemperatureSchedule, "
                f"got {temperature!r}"
            )
        self.temperature = temperature

    @property
    def current_temperature(self) -> float:
        """The temperature now: the number, or the schedule's ``value`` at its own step."""
        if isinstance(self.temperature, TemperatureSchedule):
            return float(self.temperature.value)
        return float(self.temperature)

    def _surrogate(
        self, view: CategoricalView, f: Callable, num_particles: int, generator
    ) -> Surrogate:
        soft = relaxed_sample(view, num_particles, self.current_temperature, generator)
        sample = straight_through(soft) if self.hard else soft
        values = f(view.decode_relaxed(sample))
        return Surrogate(values.mean(0).detach(), values.mean(0), num_particles)


class StraightThrough(GumbelSoftmax):
    r"""Straight-through Gumbel-softmax: $f$ at the hard sample, gradient through the
    relaxed one (see the module docstring)."""

    name = "straight-through"
    hard = True
