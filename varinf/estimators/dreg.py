r"""Doubly reparameterised gradients (DReG) for the guide of an importance-weighted bound.

Tucker, Lawson, Gu and Maddison (2019), "Doubly Reparameterized Gradient Estimators for Monte
Carlo Objectives": for a reparameterised guide $z_k = g_\phi(\epsilon_k)$, the IWAE gradient
w.r.t. $\phi$ has the lower-variance unbiased form

$$\nabla_\phi \mathrm{IWAE}_K = \mathbb{E}\Big[\sum_k \tilde w_k^2\,
\frac{\partial \log w_k}{\partial z_k} \frac{\partial z_k}{\partial \phi}\Big],
\qquad \tilde w_k = w_k / \textstyle\sum_j w_j,$$

where $\log w_k$ is evaluated with the guide density's parameters held fixed (only the path
through $z_k$ is differentiated).
"""

from __future__ import annotations

import torch

from varinf.weights import LogWeights


def dreg_guide_surrogate(weights: LogWeights) -> torch.Tensor:
    """Surrogate whose gradient w.r.t. the guide's parameters is the DReG estimator."""
    if weights.log_q_stopped is None:
        raise ValueError("DReG needs log weights traced with stop_guide_params=True")
    log_w = weights.log_weights
    normalized = torch.softmax(log_w.detach(), dim=0)
    path_log_w = weights.log_p - weights.log_q_stopped
    return (normalized.pow(2) * path_log_w).sum()
