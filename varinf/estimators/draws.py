r"""Monte Carlo means over MCMC draws, with standard errors from the effective sample size.

The evidence estimators built on posterior or power-posterior draws are smooth functions of
sample means $\bar f = \frac1S \sum_s f(\theta_s)$. With correlated draws their variance is
$\mathrm{Var}(\bar f) \approx \mathrm{Var}(f) / \mathrm{ESS}(f)$, where $\mathrm{ESS}$ is the
effective sample size of the sequence $f(\theta_s)$ (ArviZ's ``ess(method="mean")``, Vehtari et
al. 2021, "Rank-normalization, folding, and localization: an improved $\hat R$"), and the
delta method carries that to a function of the mean.

Draws come as ``(..., C, S)``: ``C`` chains of ``S`` draws for each leading index (a
temperature, a datum).
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch


def as_chains(values: torch.Tensor, name: str, leading: int) -> torch.Tensor:
    r"""Return ``values`` as ``(*leading_shape, C, S)`` float64, reading ``(*leading, S)`` as one
    chain; raise a ``ValueError`` naming ``name`` for other shapes or non-finite values."""
    values = torch.as_tensor(values)
    if values.dim() == leading + 1:
        values = values.unsqueeze(-2)
    if values.dim() != leading + 2:
        raise ValueError(
            f"{name} must have shape (..., chains, draws) or (..., draws) with {leading} leading "
            f"dimension(s), got shape {tuple(values.shape)}"
        )
    if values.shape[-1] < 2:
        raise ValueError(f"{name}: need at least 2 draws per chain, got {values.shape[-1]}")
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(
            f"{name} has {bad} non-finite value(s); the model's log-likelihood is NaN or "
            "infinite at some draws: check the model and the sampler's diagnostics"
        )
    return values.to(torch.float64)


def mean_ess(values: torch.Tensor) -> torch.Tensor:
    r"""ArviZ effective sample size for the mean of each sequence, shape ``(...)``, from draws
    ``(..., C, S)``; capped at the number of draws $C S$ (ArviZ may exceed it for
    antithetic chains, which would make standard errors optimistic)."""
    chains, draws = values.shape[-2:]
    flat = values.reshape(-1, chains, draws).detach().cpu().numpy()
    if np.ptp(flat, axis=(1, 2)).max(initial=0.0) == 0.0:
        return values.new_full(values.shape[:-2], float(chains * draws))
    with warnings.catch_warnings(), _quiet_arviz():
        warnings.simplefilter("ignore")
        import arviz

        data = arviz.convert_to_dataset(np.moveaxis(flat, 0, -1))
        ess = np.asarray(arviz.ess(data, method="mean")["x"].values, dtype=np.float64)
    ess = np.where(np.isfinite(ess), ess, 1.0).clip(1.0, chains * draws)
    return torch.as_tensor(ess, dtype=torch.float64).reshape(values.shape[:-2]).to(values.device)


def rhat(values: torch.Tensor) -> torch.Tensor:
    r"""ArviZ rank-normalised split $\hat R$ of each sequence, shape ``(...)``, from draws
    ``(..., C, S)`` (``nan`` with fewer than 2 chains or 4 draws)."""
    chains, draws = values.shape[-2:]
    if chains < 2 or draws < 4:
        return values.new_full(values.shape[:-2], math.nan)
    flat = values.reshape(-1, chains, draws).detach().cpu().numpy()
    with warnings.catch_warnings(), _quiet_arviz():
        warnings.simplefilter("ignore")
        import arviz

        data = arviz.convert_to_dataset(np.moveaxis(flat, 0, -1))
        result = np.asarray(arviz.rhat(data)["x"].values, dtype=np.float64)
    return torch.as_tensor(result, dtype=torch.float64).reshape(values.shape[:-2])


def log_mean_exp(log_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""$\log \bar f$, its delta-method standard error $\sqrt{\widehat{\mathrm{Var}}(f) /
    (\mathrm{ESS}(f)\, \bar f^2)}$ and $\mathrm{ESS}(f)$ for $f = e^{\text{log\_values}}$,
    over the last two dims ``(C, S)``; computed in log space."""
    count = log_values.shape[-1] * log_values.shape[-2]
    flat = log_values.flatten(-2)
    log_mean = flat.logsumexp(-1) - math.log(count)
    relative = torch.exp(log_values - log_mean[..., None, None])  # f / f̄
    ess = mean_ess(relative)
    variance = relative.flatten(-2).var(-1) / ess
    return log_mean, variance.sqrt(), ess


class _quiet_arviz:
    """Silence ArviZ's logging about short chains inside the block."""

    def __enter__(self):
        self.logger = logging.getLogger("arviz")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
