r"""Harmonic mean estimators of the evidence, from posterior draws alone (and why not to use them).

Newton and Raftery (1994), "Approximate Bayesian inference with the weighted likelihood
bootstrap" (JRSS B). Since $\mathbb{E}_{p(\theta \mid x)}[1 / p(x \mid \theta)] = 1 / p(x)$,

$$\log \hat p_{\mathrm{HM}}(x) = -\log \frac1S \sum_s e^{-\ell(\theta_s)}, \qquad
\theta_s \sim p(\theta \mid x).$$

It is consistent, but $1/p(x \mid \theta)$ has infinite variance whenever the posterior is
much narrower than the prior (Radford Neal called it "the worst Monte Carlo method ever"): the
draws almost never visit the low-likelihood region that dominates the expectation, so
estimates are heavy-tailed, converge at a rate far below $S^{-1/2}$, overestimate $\log p(x)$
on any feasible budget, and their delta-method standard error is small exactly when it is
wrong. It is here as a baseline, and because "19 dubious ways" (Fourment et al. 2020) measures
how bad it is.

The **stabilized** harmonic mean (Newton and Raftery 1994, their eq. 13) pretends that a
fraction $\delta$ of the draws came from the prior, with likelihoods equal to their expectation
$p(x)$; the estimate is the fixed point of

$$\hat p = \frac{\delta S / (1-\delta) + \sum_s L_s / (\delta \hat p + (1-\delta) L_s)}
{\delta S / ((1-\delta)\hat p) + \sum_s 1/(\delta \hat p + (1-\delta) L_s)}.$$

With real prior draws in the mixture this would be consistent; with imagined ones it is an
approximation whose bias vanishes as $\delta \to 0$, where it becomes the harmonic mean.

Standard errors: the harmonic mean's by the delta method with the ArviZ effective sample size
of $e^{-\ell}$ (reported, and misleading, as the tests show); the stabilized one's by batch means.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from varinf.estimators.draws import as_chains, log_mean_exp
from varinf.estimators.posterior_draws import PosteriorDrawEstimator
from varinf.estimators.runs import PosteriorRun


class PosteriorDrawEstimate(NamedTuple):
    """``value`` and ``stderr`` (0-d float64 tensors) and ``ess`` of the averaged statistic."""

    value: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor


def harmonic_mean(log_likelihoods: torch.Tensor) -> PosteriorDrawEstimate:
    r"""$-\log \frac1S \sum_s e^{-\ell_s}$ from posterior draws ``(C, S)`` or ``(S,)``.

    Examples:
        >>> round(float(harmonic_mean(torch.tensor([-1.0, -3.0])).value), 4)
        -2.4338
    """
    ell = as_chains(log_likelihoods, "log_likelihoods", leading=0)
    log_mean, stderr, ess = log_mean_exp(-ell)
    return PosteriorDrawEstimate(-log_mean, stderr, ess)


def stabilized_harmonic_mean(
    log_likelihoods: torch.Tensor,
    delta: float = 0.1,
    *,
    num_batches: int = 20,
    tolerance: float = 1e-10,
    max_iterations: int = 1000,
) -> PosteriorDrawEstimate:
    r"""Newton and Raftery's stabilized harmonic mean with prior fraction ``delta``.

    Args:
        log_likelihoods: posterior draws of $\ell$, ``(C, S)`` or ``(S,)``.
        delta: $\delta \in (0, 1)$; small values approach the harmonic mean.
        num_batches: batches of consecutive draws for the batch-means standard error.

    Examples:
        >>> ell = torch.tensor([-1.0, -3.0, -2.0, -1.5])
        >>> round(float(stabilized_harmonic_mean(ell, 1e-9, num_batches=2).value), 4)
        -2.1597
        >>> round(float(harmonic_mean(ell).value), 4)
        -2.1597
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1) (the imagined prior fraction), got {delta!r}")
    ell = as_chains(log_likelihoods, "log_likelihoods", leading=0).flatten()
    if num_batches < 2 or len(ell) < 2 * num_batches:
        raise ValueError(
            f"stabilized_harmonic_mean needs at least 2 batches of 2 draws for its standard "
            f"error, got {len(ell)} draws in num_batches={num_batches}"
        )
    value = _shm_fixed_point(ell, delta, tolerance, max_iterations)
    pieces = ell.tensor_split(num_batches)
    batches = torch.stack([_shm_fixed_point(b, delta, tolerance, max_iterations) for b in pieces])
    stderr = batches.std() / math.sqrt(num_batches)
    return PosteriorDrawEstimate(value, stderr, torch.tensor(float(len(ell))))


def _shm_fixed_point(ell, delta, tolerance, max_iterations) -> torch.Tensor:
    r"""Iterate the stabilized-harmonic-mean equation for $\log \hat p$ in log space, starting
    from the harmonic mean: $\log \hat p \leftarrow \log A - \log B$ with $A$ and $B$ the
    numerator and denominator above."""
    log_prior_draws = math.log(len(ell)) + math.log(delta / (1 - delta))  # log(delta S/(1-delta))
    log_p = -((-ell).logsumexp(0) - math.log(len(ell)))
    for _ in range(max_iterations):
        log_mix = torch.logaddexp(math.log(delta) + log_p, math.log(1 - delta) + ell)
        log_a = torch.logaddexp(log_prior_draws + 0 * log_p, (ell - log_mix).logsumexp(0))
        log_b = torch.logaddexp(log_prior_draws - log_p, (-log_mix).logsumexp(0))
        update = log_a - log_b
        if abs(float(update - log_p)) < tolerance:
            return update
        log_p = update
    raise RuntimeError(
        f"stabilized_harmonic_mean did not converge in {max_iterations} iterations; "
        "raise max_iterations or delta"
    )


class HarmonicMean(PosteriorDrawEstimator):
    r"""Newton and Raftery's (1994) harmonic mean of the likelihood over posterior draws: a
    baseline that overestimates with a misleadingly small standard error (see the module
    docstring). Arguments as `PosteriorDrawEstimator`.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> hm = HarmonicMean(num_warmup=30, num_draws=30, seed=0).estimate(problem.model)
        >>> hm.value > problem.log_evidence  # too high, as usual
        True
    """

    name = "harmonic-mean"
    kind = "consistent"

    def from_run(self, run: PosteriorRun):
        result = harmonic_mean(run.log_likelihood)
        return result.value, result.stderr, 0, {"ess": float(result.ess)}


class StabilizedHarmonicMean(PosteriorDrawEstimator):
    r"""Newton and Raftery's (1994) stabilized harmonic mean with imagined prior fraction
    ``delta``; standard error by ``num_batches`` batch means. Other arguments as
    `PosteriorDrawEstimator`."""

    name = "stabilized-harmonic-mean"
    kind = "approximation"

    def __init__(self, delta: float = 0.1, *, num_batches: int = 20, **options) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        super().__init__(**options)
        self.delta, self.num_batches = delta, num_batches

    def from_run(self, run: PosteriorRun):
        result = stabilized_harmonic_mean(
            run.log_likelihood, self.delta, num_batches=self.num_batches
        )
        return result.value, result.stderr, 0, {"delta": self.delta}
