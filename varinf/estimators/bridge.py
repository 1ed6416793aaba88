r"""Bridge sampling (Meng and Wong 1996) with a Gaussian proposal fitted to posterior draws.

For an unnormalised posterior $q(\theta) = p(x \mid \theta) p(\theta)$ with $p(x) = \int q$, a
proposal $g$ with known normaliser, and the optimal bridge function, Meng and Wong (1996),
"Simulating ratios of normalizing constants via a simple identity" (Statistica Sinica), give the
fixed point

$$\hat r^{(t+1)} = \frac{\frac{1}{N_2}\sum_{j} \frac{l_{2j}}{s_1 l_{2j} + s_2 \hat r^{(t)}}}
{\frac{1}{N_1}\sum_{i} \frac{1}{s_1 l_{1i} + s_2 \hat r^{(t)}}}, \qquad
l = \frac{q(\theta)}{g(\theta)},$$

with $l_{1i}$ at $N_1$ posterior draws, $l_{2j}$ at $N_2$ draws from $g$, $s_1 = N_1/(N_1+N_2)$
and $s_2 = 1 - s_1$; $\hat r \to p(x)$. As in the R package ``bridgesampling`` (Gronau et al.
2017, "A tutorial on bridge sampling", J. Math. Psych.; Gronau, Singmann and Wagenmakers 2020,
J. Stat. Softw.): $g$ is a multivariate normal fitted to the first half of the posterior draws
(in the unconstrained space, where the posterior is closest to Gaussian), the second half serve
as the $l_1$ draws, $N_1$ in $s_1$ is their effective sample size, and the relative mean-squared
error is Frühwirth-Schnatter's (2004)

$$\mathrm{RE}^2 = \frac{\widehat{\mathrm{Var}}(f_1)}{N_2\, \bar f_1^2} +
\frac{\widehat{\mathrm{Var}}(f_2)}{\mathrm{ESS}(f_2)\, \bar f_2^2}, \quad
f_1 = \frac{p_{g}}{s_1 p_{g} + s_2 g_{g}}, \;
f_2 = \frac{g_{p}}{s_1 p_{p} + s_2 g_{p}},$$

($p = q / \hat r$, subscripts $g$ and $p$: evaluated at proposal and posterior draws), which is
the standard error of $\log \hat p(x)$ to first order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from varinf.estimators.draws import as_chains, mean_ess
from varinf.estimators.posterior_draws import PosteriorDrawEstimator
from varinf.estimators.runs import PosteriorRun


class BridgeEstimate(NamedTuple):
    """``value`` ($\\log \\hat p(x)$), ``stderr`` (relative error), ``iterations`` and the
    effective sample size ``ess`` of the posterior half used in $s_1$."""

    value: torch.Tensor
    stderr: torch.Tensor
    iterations: int
    ess: torch.Tensor


def bridge_sampling(
    log_ratio_posterior: torch.Tensor,
    log_ratio_proposal: torch.Tensor,
    *,
    tolerance: float = 1e-10,
    max_iterations: int = 1000,
) -> BridgeEstimate:
    r"""Meng and Wong's iterative bridge estimate of $\log p(x)$.

    Args:
        log_ratio_posterior: $\log q(\theta) - \log g(\theta)$ at posterior draws, ``(C, S)``
            chains (their ESS enters $s_1$ and the error) or ``(S,)``.
        log_ratio_proposal: the same at independent draws from $g$, ``(N2,)``.

    Examples:
        >>> # q = 3 N(0, 1) and g = N(0, 1): every ratio is log 3, so p(x) = 3 exactly.
        >>> ratio = torch.full((100,), math.log(3.0))
        >>> result = bridge_sampling(ratio.reshape(2, 50), ratio)
        >>> round(float(result.value.exp()), 6), float(result.stderr)
        (3.0, 0.0)
    """
    chains = as_chains(log_ratio_posterior, "log_ratio_posterior", leading=0)
    l2 = torch.as_tensor(log_ratio_proposal, dtype=torch.float64).flatten()
    bad = int((torch.isnan(l2) | (l2 == math.inf)).sum())
    if len(l2) < 2 or bad:
        raise ValueError(
            "log_ratio_proposal must hold at least 2 values, none NaN or +inf (the model's log "
            f"density at the proposal's draws; -inf is fine); got {len(l2)}, {bad} bad: the "
            "model's density is undefined where the proposal went"
        )
    ess = mean_ess(chains)
    log_s1 = torch.log(ess / (ess + len(l2)))
    log_s2 = torch.log(len(l2) / (ess + len(l2)))
    log_r, iterations = _iterate(chains.flatten(), l2, log_s1, log_s2, tolerance, max_iterations)
    stderr = _relative_error(chains, l2, log_r, log_s1, log_s2)
    return BridgeEstimate(log_r, stderr, iterations, ess)


def _iterate(l1, l2, log_s1, log_s2, tolerance, max_iterations):
    log_r = l1.median()
    for iteration in range(1, max_iterations + 1):
        update = _bridge_step(l1, l2, log_r, log_s1, log_s2)
        if abs(float(update - log_r)) < tolerance:
            return update, iteration
        log_r = update
    raise RuntimeError(
        f"bridge sampling did not converge in {max_iterations} iterations; the proposal "
        "may miss the posterior (check the draws), or raise max_iterations"
    )


def _bridge_step(l1, l2, log_r, log_s1, log_s2):
    numerator = (l2 - torch.logaddexp(log_s1 + l2, log_s2 + log_r)).logsumexp(0)
    denominator = (-torch.logaddexp(log_s1 + l1, log_s2 + log_r)).logsumexp(0)
    return numerator - math.log(len(l2)) - denominator + math.log(len(l1))


def _relative_error(chains, l2, log_r, log_s1, log_s2) -> torch.Tensor:
    # With p = q / r: f1 = p/(s1 p + s2 g) at proposal draws, f2 = g/(s1 p + s2 g) at
    # posterior draws; in terms of l = log q - log g both depend on l - log r only.
    log_f1 = (l2 - log_r) - torch.logaddexp(log_s1 + l2 - log_r, log_s2)
    log_f2 = -torch.logaddexp(log_s1 + chains - log_r, log_s2)  # (C, S)
    f1 = torch.exp(log_f1 - log_f1.logsumexp(0) + math.log(len(l2)))  # f1 / mean
    f2 = torch.exp(log_f2 - log_f2.flatten().logsumexp(0) + math.log(log_f2.numel()))
    squared = f1.var() / len(l2) + f2.flatten().var() / mean_ess(f2)
    return squared.sqrt()


class BridgeSampling(PosteriorDrawEstimator):
    r"""Bridge sampling with a multivariate normal proposal (Meng and Wong 1996; Gronau et al.
    2017), from one posterior run: the proposal is fitted to the first half of each chain, the
    second halves are the posterior draws, and as many proposal draws are evaluated in one
    batched call (counted in ``num_evaluations``). Arguments as `PosteriorDrawEstimator`.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> bs = BridgeSampling(num_warmup=50, num_draws=100, seed=0)
        >>> result = bs.estimate(problem.model)
        >>> bool(abs(result.value - problem.log_evidence) < 5 * result.stderr)
        True
    """

    name = "bridge-sampling"
    kind = "consistent"
    min_draws = 4

    def from_run(self, run: PosteriorRun):
        half = run.z.shape[1] // 2
        fit, used = run.z[:, :half], run.z[:, half:]
        proposal = fit_proposal(fit.reshape(-1, fit.shape[-1]))
        log_q = (run.log_likelihood + run.log_prior)[:, half:]
        l1 = log_q - proposal.log_prob(used)
        draws = proposal.sample((used.shape[0] * used.shape[1],))
        before = run.potential.num_evaluations
        with torch.no_grad():
            terms = [run.potential.terms(part) for part in draws.split(4096)]
        extra = run.potential.num_evaluations - before
        log_q2 = torch.cat([t.log_likelihood + t.log_prior for t in terms]).to(torch.float64)
        result = bridge_sampling(l1, log_q2 - proposal.log_prob(draws))
        diagnostics = {"iterations": result.iterations, "ess": float(result.ess)}
        return result.value, result.stderr, extra, diagnostics


def fit_proposal(draws: torch.Tensor) -> torch.distributions.MultivariateNormal:
    r"""Multivariate normal with the sample mean and covariance of ``(S, D)`` draws, its
    diagonal lifted by $10^{-10}$ times its scale so that it stays positive definite."""
    if len(draws) <= draws.shape[-1]:
        raise ValueError(
            f"bridge sampling fits a {draws.shape[-1]}-dimensional normal to half of the draws, "
            f"which needs more than {draws.shape[-1]} of them, got {len(draws)}: raise num_draws "
            "or num_chains"
        )
    draws = draws.to(torch.float64)
    mean = draws.mean(0)
    centred = draws - mean
    covariance = centred.T @ centred / (len(draws) - 1)
    jitter = 1e-10 * covariance.diagonal().mean().clamp(min=1e-300)
    covariance = covariance + jitter * torch.eye(len(mean), dtype=draws.dtype, device=draws.device)
    return torch.distributions.MultivariateNormal(mean, covariance)
