r"""VIMCO: leave-one-out score-function gradients for multi-sample objectives.

Mnih and Rezende (2016), "Variational inference for Monte Carlo objectives". For $K$
samples $z_k \sim q_\theta$ and log weights $\ell_k = \log w(z_k)$, the objective is
$\hat L = \log \frac1K \sum_k e^{\ell_k}$ (the IWAE bound when $\ell_k = \log p(x,
z_k) - \log q(z_k)$). Its gradient estimator is

$$
\nabla \hat L = \sum_k \hat L_{\setminus k}\, \nabla\log q_\theta(z_k)
    + \sum_k \tilde w_k \nabla \ell_k, \qquad
\hat L_{\setminus k} = \hat L - \log \frac1K \Big(\sum_{j \neq k} e^{\ell_j}
    + e^{\frac1{K-1}\sum_{j\ne k}\ell_j}\Big),
$$

with $\tilde w_k$ the normalised weights and $\nabla\ell_k$ taken at fixed
$z_k$: each sample's learning signal is how much it raises $\hat L$ compared with
a stand-in, the geometric mean of the other weights. Unbiased for
$\nabla_\theta\,\mathbb{E}[\hat L]$ for $K \ge 2$.

`VIMCOEstimator` is the functional form (``f`` returns the log weights); the Pyro loss is
``varinf.IWAE(K, gradient="vimco")`` (also named ``varinf.VIMCO``), built on `vimco_surrogate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from varinf.gradients.base import (
    CategoricalView,
    GradientEstimator,
    Surrogate,
    leave_one_out_mean,
    score_term,
)


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return log_w.logsumexp(dim) - math.log(log_w.shape[dim])


def vimco_signal(log_w: torch.Tensor) -> torch.Tensor:
    r"""Per-sample learning signals $\hat L - \hat L_{\setminus k}$ along dim 0 (detached).

    Args:
        log_w: Log weights, shape ``(K, ...)`` with $K \geq 2$.
    """
    log_w = log_w.detach()
    num = log_w.shape[0]
    if num < 2:
        raise ValueError(f"VIMCO needs at least 2 samples, got {num}")
    stand_in = leave_one_out_mean(log_w)  # log of the geometric mean of the others
    eye = torch.eye(num, dtype=torch.bool, device=log_w.device)
    eye = eye.reshape(num, num, *([1] * (log_w.dim() - 1)))
    replaced = torch.where(eye, stand_in.unsqueeze(1), log_w.unsqueeze(0))  # [k, j]
    return log_mean_exp(log_w) - log_mean_exp(replaced, dim=1)


def vimco_surrogate(log_w: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    r"""$\hat L$ plus zero-valued score terms; gradient = VIMCO. Shapes ``(K, ...)``,
    result ``(...)``."""
    return log_mean_exp(log_w) + score_term(vimco_signal(log_w), log_q).sum(0)


class VIMCOEstimator(GradientEstimator):
    r"""VIMCO for $\nabla\,\mathbb{E}[\log\frac1k\sum_i e^{f(z_i)}]$ (``f`` returns log
    weights). Note the target: not $\nabla\,\mathbb{E}[f]$ as for the other estimators.

    Examples:
        >>> import torch
        >>> from torch.distributions import Categorical
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> out = VIMCOEstimator().surrogate(Categorical(logits=logits), lambda z: -z.double(), 4)
        >>> out.num_evaluations
        4
    """

    name = "vimco"
    min_particles = 2

    def _surrogate(
        self, view: CategoricalView, f: Callable, num_particles: int, generator
    ) -> Surrogate:
        indices = view.sample(num_particles, generator)
        log_w = f(view.decode(indices))
        surrogate = vimco_surrogate(log_w, view.log_prob(indices))
        return Surrogate(log_mean_exp(log_w.detach()), surrogate, num_particles)
