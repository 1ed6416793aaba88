r"""The Bernoulli toy of Kool, van Hoof and Welling (2020), on which every estimator is checked.

$d = 3$ independent Bernoullis with one shared logit $\eta$, $f(b) =
\sum_i (b_i - p_{0,i})^2$ with $p_0 = (0.6, 0.51, 0.48)$; the exact gradient is
$\sigma'(\eta) \sum_i (1 - 2 p_{0,i})$: $-0.0450$ at $\eta = 0$ and
$-0.0032$ at $\eta = -4$.

Examples:
    >>> round(exact_gradient(0.0), 4), round(exact_gradient(-4.0), 4)
    (-0.045, -0.0032)
"""

from __future__ import annotations

import torch
from torch.distributions import Bernoulli, Independent

from varinf.gradients.base import GradientEstimator, enumerate_expectation

P0 = torch.tensor([0.6, 0.51, 0.48], dtype=torch.float64)


def f(b: torch.Tensor) -> torch.Tensor:
    return ((b - P0.to(b.dtype)) ** 2).sum(-1)


def toy_dist(eta: torch.Tensor) -> Independent:
    """Product of 3 Bernoullis sharing logit ``eta`` (batch of problems if ``eta`` has dims)."""
    return Independent(Bernoulli(logits=eta.unsqueeze(-1).expand(*eta.shape, 3)), 1)


def exact_gradient(eta: float) -> float:
    """d/dη E[f] by enumerating the 8 states (autograd through the exact expectation)."""
    eta = torch.tensor(eta, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(enumerate_expectation(toy_dist(eta), f), eta)
    return grad.item()


def sample_gradients(
    estimator: GradientEstimator,
    eta: float,
    num_particles: int,
    repeats: int,
    seed: int = 0,
    chunk: int = 5000,
) -> torch.Tensor:
    """``repeats`` independent gradient estimates d/dη, vectorised as a batch of problems."""
    generator = torch.Generator().manual_seed(seed)
    grads = []
    for start in range(0, repeats, chunk):
        size = min(chunk, repeats - start)
        etas = torch.full((size,), eta, dtype=torch.float64, requires_grad=True)
        out = estimator.surrogate(toy_dist(etas), f, num_particles, generator)
        (grad,) = torch.autograd.grad(out.surrogate.sum(), etas)
        grads.append(grad)
    return torch.cat(grads)
