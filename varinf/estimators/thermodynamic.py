r"""The power-posterior identities as pure functions of per-temperature log-likelihoods.

With $\ell(\theta) = \log p(x \mid \theta)$, power posteriors $p_\beta(\theta) \propto
e^{\beta \ell(\theta)} p(\theta)$ and their normalisers $Z_\beta$ ($Z_0 = 1$, $Z_1 = p(x)$):

- **Stepping stone** (Xie et al. 2011, Syst. Biol.): $\frac{Z_{\beta_k}}{Z_{\beta_{k-1}}} =
  \mathbb{E}_{\beta_{k-1}}\big[e^{(\beta_k - \beta_{k-1}) \ell}\big]$, so
  $\log p(x) = \sum_{k=1}^K \log \hat r_k$ with $\hat r_k$ the mean over draws at
  $\beta_{k-1}$. Each $\hat r_k$ is unbiased, so $\hat p(x)$ is unbiased and its log
  slightly low (Jensen); no discretisation error.
- **Path sampling** (thermodynamic integration; Gelman and Meng 1998, Lartillot and Philippe
  2006, Syst. Biol.): $\log p(x) = \int_0^1 \mathbb{E}_\beta[\ell]\, d\beta$ by the trapezoid
  rule over the temperatures. Since $\frac{d}{d\beta}\mathbb{E}_\beta[\ell] =
  \mathrm{Var}_\beta[\ell] > 0$ the integrand is increasing and convex near 0, and the
  trapezoid rule's error is $-\sum_k \frac{\Delta\beta_k^2}{12}(V_k - V_{k-1}) + O(\Delta
  \beta^4)$.
- **Modified path sampling** (Friel, Hurn and Wyse 2014, "Improving power posterior estimation
  of statistical evidence", Stat. Comput.; as in Fourment et al. 2020): the trapezoid rule minus
  that correction, with $V_k$ the sample variances of $\ell$ at $\beta_k$.

Standard errors: the temperatures' chains are independent, so the variances of the
per-temperature Monte Carlo means add; each is $\widehat{\mathrm{Var}}/\mathrm{ESS}$ with
ArviZ's effective sample size (`varinf.estimators.draws`), carried through the delta method.
The modified rule's variance leaves out the second-order term from the sample variances.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from varinf.estimators.draws import as_chains, log_mean_exp, mean_ess
from varinf.estimators.temperatures import check_temperatures


class PowerPosteriorEstimate(NamedTuple):
    """Result of a power-posterior identity: ``value`` and ``stderr`` (0-d float64 tensors),
    ``terms`` (``(K,)`` per-step contributions summing to ``value``) and ``ess`` (``(T,)``
    effective sample size per temperature of the statistic averaged there)."""

    value: torch.Tensor
    stderr: torch.Tensor
    terms: torch.Tensor
    ess: torch.Tensor


def stepping_stone(log_likelihoods: torch.Tensor, temperatures) -> PowerPosteriorEstimate:
    r"""Stepping-stone estimate $\sum_k \log \frac1S \sum_s e^{\Delta\beta_k\,
    \ell_{k-1,s}}$ of $\log p(x)$.

    Args:
        log_likelihoods: draws of $\ell$ at each temperature, ``(T, C, S)`` (``C`` chains of
            ``S`` draws) or ``(T, S)``; ``T = K + 1`` (draws at $\beta_K = 1$ are not used) or
            ``T = K`` (draws at $\beta_0..\beta_{K-1}$ only).
        temperatures: ``(K + 1,)`` increasing, from 0 to 1.

    Returns:
        `PowerPosteriorEstimate`; ``stderr`` is
        $\sqrt{\sum_k \widehat{\mathrm{Var}}(w_k) / (\mathrm{ESS}_k \bar w_k^2)}$,
        $w_k = e^{\Delta\beta_k \ell_{k-1}}$.

    Examples:
        >>> ell = torch.tensor([[-3.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])
        >>> round(float(stepping_stone(ell, [0.0, 0.5, 1.0]).value), 4)
        -1.3799
    """
    betas, ell = _aligned(log_likelihoods, temperatures, needs_last=False)
    steps = (betas[1:] - betas[:-1]).to(ell.device)
    log_ratios, stderrs, ess = log_mean_exp(steps[:, None, None] * ell[: len(steps)])
    return PowerPosteriorEstimate(log_ratios.sum(), stderrs.square().sum().sqrt(), log_ratios, ess)


def path_sampling(
    log_likelihoods: torch.Tensor, temperatures, *, correction: bool = False
) -> PowerPosteriorEstimate:
    r"""Trapezoid-rule thermodynamic integration $\sum_k \frac{\Delta\beta_k}{2}(\bar\ell_k +
    \bar\ell_{k-1})$, minus $\sum_k \frac{\Delta\beta_k^2}{12}(V_k - V_{k-1})$ if
    ``correction`` (modified path sampling).

    Args:
        log_likelihoods: ``(T, C, S)`` or ``(T, S)`` draws of $\ell$ at every temperature.
        temperatures: ``(T,)`` increasing, from 0 to 1.
        correction: subtract Friel et al.'s (2014) trapezoid correction.

    Returns:
        `PowerPosteriorEstimate` with ``stderr`` $= \sqrt{\sum_k c_k^2
        \widehat{\mathrm{Var}}_k(\ell) / \mathrm{ESS}_k}$, $c_k$ the trapezoid weights.

    Examples:
        >>> ell = torch.tensor([[-3.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])
        >>> round(float(path_sampling(ell, [0.0, 0.5, 1.0]).value), 4)
        -1.25
    """
    betas, ell = _aligned(log_likelihoods, temperatures, needs_last=True)
    betas = betas.to(ell.device)
    steps = betas[1:] - betas[:-1]
    means, variances = ell.flatten(1).mean(1), ell.flatten(1).var(1)
    terms = steps * (means[1:] + means[:-1]) / 2
    if correction:
        terms = terms - steps.square() / 12 * (variances[1:] - variances[:-1])
    weights = torch.zeros_like(betas)
    weights[1:] += steps / 2
    weights[:-1] += steps / 2
    ess = mean_ess(ell)
    stderr = (weights.square() * variances / ess).sum().sqrt()
    return PowerPosteriorEstimate(terms.sum(), stderr, terms, ess)


def _aligned(log_likelihoods, temperatures, *, needs_last: bool):
    betas = check_temperatures(temperatures)
    ell = as_chains(log_likelihoods, "log_likelihoods", leading=1)
    expected = (len(betas),) if needs_last else (len(betas), len(betas) - 1)
    if ell.shape[0] not in expected:
        raise ValueError(
            f"log_likelihoods has draws at {ell.shape[0]} temperatures but temperatures has "
            f"{len(betas)} values; give one row of draws per temperature"
            + ("" if needs_last else " (the last, beta = 1, may be left out)")
        )
    return betas, ell
