r"""Naive Monte Carlo: importance sampling with the prior as proposal.

$$\hat p(x) = \frac1K \sum_k p(x \mid z_k), \qquad z_k \sim p(z),$$

unbiased for $p(x)$, so its log is a stochastic lower bound that is consistent as
$K \to \infty$; hopeless when the posterior is much narrower than the prior (one of the "19
dubious ways", Oaks et al. 2019, Syst. Biol.). Needs no guide.
"""

from __future__ import annotations

from typing import Any

from varinf.estimators.elbo import IWAE


class NaiveMonteCarlo(IWAE):
    """Average likelihood over prior samples: ``IWAE`` with the model's prior as the guide.

    Args:
        num_particles: Prior samples $K$.
        **options: ``max_plate_nesting`` and ``seed``, see `ParticleObjective`.

    Raises:
        ValueError: when a guide is passed (it would be ignored silently otherwise).
    """

    name = "naive-mc"
    kind = "lower-bound"
    requires_guide = False

    def __init__(self, num_particles: int = 1000, **options: Any) -> None:
        if options.get("sampler", "iid") != "iid":
            raise ValueError("sampler: NaiveMonteCarlo samples the model's prior i.i.d. only")
        super().__init__(num_particles, **options)

    def log_weights(self, model, guide, args, kwargs):
        if guide is not None:
            raise ValueError("NaiveMonteCarlo samples the prior: pass guide=None")
        return super().log_weights(model, None, args, kwargs)
