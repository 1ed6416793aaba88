r"""Importance-sampling diagnostics shared by the estimators.

Effective sample size (Kong 1992) and the Pareto $\hat k$ of Pareto-smoothed importance
sampling (Vehtari et al. 2024, "Pareto smoothed importance sampling", JMLR), the latter from
ArviZ.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def effective_sample_size(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    r"""$\mathrm{ESS} = (\sum_k w_k)^2 / \sum_k w_k^2$, computed in log space along ``dim``."""
    return torch.exp(2 * log_weights.logsumexp(dim) - (2 * log_weights).logsumexp(dim))


def pareto_khat(log_weights: torch.Tensor) -> float:
    r"""PSIS $\hat k$ of the weights along the first dimension (the largest over other dims).

    $\hat k < 0.7$ means the importance-sampling estimate is reliable (Vehtari et al.);
    ``nan`` when there are too few samples to fit the tail (fewer than 20).
    """
    if log_weights.shape[0] < 20:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about its coming refactor and small tails
        import arviz

        samples = log_weights.detach().double().cpu().numpy()
        samples = np.moveaxis(samples.reshape(samples.shape[0], -1), 0, -1)
        _, khat = arviz.psislw(samples)
    return float(np.max(khat))


def importance_diagnostics(log_weights: torch.Tensor) -> dict[str, float]:
    """ESS (smallest over data), its fraction of the particles, and PSIS $\\hat k$."""
    ess = effective_sample_size(log_weights).min().item()
    return {
        "ess": ess,
        "ess_fraction": ess / log_weights.shape[0],
        "khat": pareto_khat(log_weights),
    }
