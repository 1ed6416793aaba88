r"""Temperature schedules for power posteriors, and their validation.

A power posterior $p_\beta(\theta) \propto p(x \mid \theta)^\beta p(\theta)$ runs from the prior
($\beta = 0$) to the posterior ($\beta = 1$). Xie, Lewis, Fan, Kuo and Chen (2011), "Improving
marginal likelihood estimation for Bayesian phylogenetic model selection" (Syst. Biol.), place
$K + 1$ temperatures at evenly spaced quantiles of a $\mathrm{Beta}(\alpha, 1)$ distribution,

$$\beta_k = (k / K)^{1/\alpha}, \qquad k = 0, \dots, K,$$

so that most temperatures sit near the prior, where $\mathbb{E}_\beta[\log p(x \mid \theta)]$
changes fastest. Fourment et al. (2020), "19 dubious ways to compute the marginal likelihood of
a phylogenetic tree topology" (Syst. Biol.), use $\alpha = 0.3$ and $K = 50$, our default;
MrBayes uses $\alpha = 0.4$.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def beta_quantile_temperatures(num_steps: int = 50, alpha: float = 0.3) -> torch.Tensor:
    r"""$\beta_k = (k/K)^{1/\alpha}$, $k = 0..K$: ``num_steps + 1`` increasing temperatures from
    0 to 1 (float64).

    Args:
        num_steps: $K \ge 1$.
        alpha: shape of the $\mathrm{Beta}(\alpha, 1)$ whose quantiles the temperatures are;
            0.3 in Fourment et al. (2020), 0.4 in MrBayes, 1 for evenly spaced.

    Examples:
        >>> beta_quantile_temperatures(4, alpha=0.5)
        tensor([0.0000, 0.0625, 0.2500, 0.5625, 1.0000], dtype=torch.float64)
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive (a Beta(alpha, 1) shape), got {alpha!r}")
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    return steps ** (1.0 / alpha)


def check_temperatures(
    temperatures: Sequence[float] | torch.Tensor,
    *,
    name: str = "temperatures",
    needs_zero: bool = True,
    needs_one: bool = True,
) -> torch.Tensor:
    r"""Validate a temperature list and return it as a float64 tensor.

    Raises:
        ValueError: not one-dimensional, fewer than two values, non-finite, outside $[0, 1]$,
            not strictly increasing, or without $0$ (``needs_zero``) or $1$ (``needs_one``) as its
            end points; the message names ``name`` and the fix.

    Examples:
        >>> check_temperatures([0.0, 0.1, 1.0])  # doctest: +ELLIPSIS
        tensor([0.0000, 0.1000, 1.0000], dtype=torch.float64)
        >>> check_temperatures([0.0, 0.5, 0.4, 1.0])
        Traceback (most recent call last):
        ...
        ValueError: temperatures must be strictly increasing, but 0.4 follows 0.5; sort them ...
    """
    betas = torch.as_tensor(temperatures, dtype=torch.float64)
    if betas.dim() != 1 or len(betas) < 2:
        raise ValueError(
            f"{name} must be a 1-D list of at least two temperatures in [0, 1], got shape "
            f"{tuple(betas.shape)}"
        )
    if not torch.isfinite(betas).all() or betas.min() < 0 or betas.max() > 1:
        bad = next(float(b) for b in betas if not (0 <= b <= 1))
        raise ValueError(f"{name} must lie in [0, 1] (0 = prior, 1 = posterior), got {bad}")
    steps = betas[1:] - betas[:-1]
    if (steps <= 0).any():
        k = int((steps <= 0).nonzero()[0])
        raise ValueError(
            f"{name} must be strictly increasing, but {float(betas[k + 1]):g} follows "
            f"{float(betas[k]):g}; sort them (e.g. beta_quantile_temperatures(50))"
        )
    if needs_zero and betas[0] != 0:
        raise ValueError(f"{name} must start at 0 (the prior), got {float(betas[0]):g} first")
    if needs_one and betas[-1] != 1:
        raise ValueError(f"{name} must end at 1 (the posterior), got {float(betas[-1]):g} last")
    return betas
