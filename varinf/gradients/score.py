r"""The score-function (REINFORCE) estimator with baselines.

With $k$ independent samples $z_i \sim q_\theta$ (Williams 1992, "Simple
statistical gradient-following algorithms for connectionist reinforcement learning"),

$$
\hat g = \frac1k \sum_{i=1}^k \big(f(z_i) - b_i\big)\, \nabla_\theta \log q_\theta(z_i)
    + \nabla_\theta f(z_i),
$$

unbiased for any baseline $b_i$ independent of $z_i$:

- ``baseline=None``: $b_i = 0$;
- ``"moving-average"``: an exponential moving average of past values of $f$, updated
  after it is used (so it never depends on the current samples);
- ``"leave-one-out"``: $b_i = \frac1{k-1}\sum_{j\neq i} f(z_j)$ (Kool, van Hoof and
  Welling 2019, "Buy 4 REINFORCE samples, get a baseline for free!"), which needs
  $k \geq 2$.

The Pyro loss with the leave-one-out baseline is ``varinf.ELBO(K, gradient="score")``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from varinf.gradients.base import (
    CategoricalView,
    GradientEstimator,
    Surrogate,
    leave_one_out_mean,
    score_term,
)

BASELINES = (None, "moving-average", "leave-one-out")


class ScoreFunction(GradientEstimator):
    r"""REINFORCE with an optional baseline; see the module docstring for the math.

    Args:
        baseline: ``None``, ``"moving-average"`` or ``"leave-one-out"``.
        decay: Decay $\beta$ of the moving average $b \leftarrow \beta b +
            (1-\beta)\,\overline{f}$ (a scalar over the batch; zero on the first call, which
            starts the average at the mean of its values).

    Examples:
        >>> import torch
        >>> from torch.distributions import Bernoulli, Independent
        >>> eta = torch.zeros(3, requires_grad=True)
        >>> q = Independent(Bernoulli(logits=eta), 1)
        >>> out = ScoreFunction("leave-one-out").surrogate(q, lambda b: b.sum(-1), 4)
        >>> out.surrogate.backward()
        >>> eta.grad.shape
        torch.Size([3])
    """

    name = "score"

    def __init__(self, baseline: str | None = None, *, decay: float = 0.9) -> None:
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
        self.baseline = baseline
        self.decay = decay
        self.min_particles = 2 if baseline == "leave-one-out" else 1
        self.name = "score" if baseline is None else f"score-{baseline}"
        self._average: torch.Tensor | None = None

    def _surrogate(
        self, view: CategoricalView, f: Callable, num_particles: int, generator
    ) -> Surrogate:
        indices = view.sample(num_particles, generator)
        values = f(view.decode(indices))
        signal = values.detach() - self._baseline(values.detach())
        surrogate = values + score_term(signal, view.log_prob(indices))
        return Surrogate(values.mean(0).detach(), surrogate.mean(0), num_particles)

    def _baseline(self, values: torch.Tensor) -> torch.Tensor | float:
        if self.baseline == "leave-one-out":
            return leave_one_out_mean(values)
        if self.baseline is None:
            return 0.0
        if self._average is None:  # nothing seen yet: no baseline, then start the average
            self._average = values.mean()
            return 0.0
        current = self._average
        self._average = self.decay * current + (1 - self.decay) * values.mean()
        return current

    def reset(self) -> None:
        """Forget the moving average."""
        self._average = None
