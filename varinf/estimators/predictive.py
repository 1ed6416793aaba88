r"""Posterior predictive scores from per-datum likelihoods: CPO and pointwise predictive density.

With posterior draws $\theta_s$ and per-datum log-likelihoods $\ell_{is} = \log p(x_i \mid
\theta_s)$ (each datum $i$ counted $n_i$ times, e.g. the sites sharing a phylogenetic site
pattern):

- **Conditional predictive ordinates** (Geisser and Eddy 1979; Gelfand, Dey and Chang 1992):
  $\mathrm{CPO}_i = p(x_i \mid x_{-i}) = \big(\mathbb{E}_{p(\theta \mid x)}[1/p(x_i \mid
  \theta)]\big)^{-1}$, a harmonic mean per datum, and the log pseudo-marginal likelihood
  $\sum_i n_i \log \mathrm{CPO}_i$.
- **Pointwise predictive density** (Gelman, Hwang and Vehtari 2014, "lppd"):
  $\sum_i n_i \log \mathbb{E}_{p(\theta \mid x)}[p(x_i \mid \theta)]$, the posterior's
  predictive density of its own data.

Neither is $\log p(x) = \sum_i \log p(x_i \mid x_{<i})$: they condition on (almost) all data,
so they overestimate it, the PPD more. "19 dubious ways" (Fourment et al. 2020) lists both as
approximations of the evidence. The per-datum harmonic means of CPO are far better behaved
than the harmonic mean of the whole likelihood, since one datum moves the posterior little.

Standard error: both are $\sum_i n_i \log \bar a_i$ of Monte Carlo means ($a_{is} =
e^{\pm\ell_{is}}$) of the same draws, so the delta method gives the variance of the mean of
$u_s = \sum_i n_i a_{is} / \bar a_i$, divided by its ArviZ effective sample size.
"""

from __future__ import annotations

import math

import torch

from varinf.estimators.draws import as_chains, mean_ess
from varinf.estimators.harmonic import PosteriorDrawEstimate
from varinf.estimators.posterior_draws import PosteriorDrawEstimator
from varinf.estimators.runs import PosteriorRun


def pointwise_predictive_density(
    log_likelihoods: torch.Tensor, weights: torch.Tensor | None = None
) -> PosteriorDrawEstimate:
    r"""$\sum_i n_i \log \frac1S \sum_s e^{\ell_{is}}$.

    Args:
        log_likelihoods: per-datum log-likelihoods of posterior draws, ``(C, S, N)`` or
            ``(S, N)`` (one datum, not multiplied by its count).
        weights: ``(N,)`` counts $n_i$ (default ones).

    Examples:
        >>> ell = torch.log(torch.tensor([[0.5, 0.1], [0.3, 0.3]]))  # 2 draws, 2 data
        >>> round(float(pointwise_predictive_density(ell).value.exp()), 4)  # 0.4 * 0.2
        0.08
    """
    return _predictive(log_likelihoods, weights, sign=1.0)


def conditional_predictive_ordinates(
    log_likelihoods: torch.Tensor, weights: torch.Tensor | None = None
) -> PosteriorDrawEstimate:
    r"""$\sum_i n_i \log \mathrm{CPO}_i = -\sum_i n_i \log \frac1S \sum_s e^{-\ell_{is}}$;
    arguments as in `pointwise_predictive_density`.

    Examples:
        >>> ell = torch.log(torch.tensor([[0.5, 0.1], [0.5, 0.3]]))
        >>> round(float(conditional_predictive_ordinates(ell).value.exp()), 4)  # 0.5 * 0.15
        0.075
    """
    return _predictive(log_likelihoods, weights, sign=-1.0)


def _predictive(log_likelihoods, weights, sign: float) -> PosteriorDrawEstimate:
    ell = torch.as_tensor(log_likelihoods)
    if ell.dim() == 2:
        ell = ell.unsqueeze(0)
    if ell.dim() != 3:
        raise ValueError(
            "log_likelihoods must be per-datum, of shape (chains, draws, data) or (draws, data), "
            f"got shape {tuple(ell.shape)}; use the model's per-datum likelihood terms"
        )
    ell = as_chains(ell.movedim(-1, 0), "log_likelihoods", leading=1)  # (N, C, S)
    weights = _check_weights(weights, ell.shape[0]).to(ell)
    count = ell.shape[1] * ell.shape[2]
    log_means = (sign * ell).flatten(1).logsumexp(1) - math.log(count)  # (N,)
    value = sign * (weights * log_means).sum()
    relative = torch.exp(sign * ell - log_means[:, None, None])  # a_is / mean_i
    u = (weights[:, None, None] * relative).sum(0)  # (C, S)
    ess = mean_ess(u)
    stderr = (u.flatten().var() / ess).sqrt()
    return PosteriorDrawEstimate(value, stderr, ess)


def _check_weights(weights, num_data: int) -> torch.Tensor:
    if weights is None:
        return torch.ones(num_data, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.shape != (num_data,) or not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(
            f"weights must be {num_data} finite non-negative counts, one per datum (e.g. the "
            f"model's site_weights), got shape {tuple(weights.shape)}"
        )
    return weights


class CPO(PosteriorDrawEstimator):
    r"""The log pseudo-marginal likelihood $\sum_i n_i \log \mathrm{CPO}_i$ from one posterior
    run, an approximation of $\log p(x)$ (too high). Needs per-datum likelihoods: a
    ``pyro.plate`` around the data (for `models.phylo.phylo_model`, ``per_site=True``).
    Arguments as `PosteriorDrawEstimator`.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> run = CPO(num_warmup=30, num_draws=30, seed=0).sample(problem.model)
        >>> cpo = CPO(run=run).estimate(problem.model)
        >>> ppd = PointwisePredictiveDensity(run=run).estimate(problem.model)
        >>> ppd.value > cpo.value > problem.log_evidence
        True
    """

    name = "cpo"
    kind = "approximation"
    score = staticmethod(conditional_predictive_ordinates)

    def from_run(self, run: PosteriorRun):
        if run.log_likelihood_per_datum is None:
            raise ValueError(
                f"{type(self).__name__} needs per-datum likelihoods: put the model's data in a "
                "pyro.plate (for models.phylo.phylo_model pass per_site=True)"
            )
        result = self.score(run.log_likelihood_per_datum, run.weights)
        return result.value, result.stderr, 0, {"ess": float(result.ess)}


class PointwisePredictiveDensity(CPO):
    r"""$\sum_i n_i \log \mathbb{E}_{p(\theta \mid x)}[p(x_i \mid \theta)]$ from one
    posterior run, an approximation of $\log p(x)$ (too high); see `CPO`."""

    name = "ppd"
    score = staticmethod(pointwise_predictive_density)
