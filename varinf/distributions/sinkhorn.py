r"""Log-space Sinkhorn normalisation, Hungarian matching and the Gumbel-Sinkhorn distribution.

The Sinkhorn operator (Sinkhorn 1964; Adams & Zemel 2011) alternately normalises the rows and
columns of $\exp(X)$; for a square matrix with positive entries it converges to the unique
doubly-stochastic matrix $S(X) = D_1 e^X D_2$.  As the temperature goes to zero,
$S(X/\tau)$ converges to the permutation matrix $M(X) = \arg\max_{P} \langle P, X\rangle_F$
(Mena, Belanger, Linderman & Snoek 2018, theorem 1), the matching that the Hungarian
algorithm finds exactly; we use `scipy.optimize.linear_sum_assignment` for it.
"""

from __future__ import annotations

import numpy as np
import torch
from pyro.distributions import TorchDistribution, constraints
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torch.distributions.utils import clamp_probs

from varinf.distributions.concrete import TemperatureSchedule, as_temperature

__all__ = ["GumbelSinkhorn", "doubly_stochastic", "hungarian", "log_sinkhorn", "sinkhorn"]

_EMPTY = torch.Size()


class _DoublyStochastic(constraints.Constraint):
    """Square non-negative matrices with unit row and column sums (up to ``atol``)."""

    event_dim = 2

    def __init__(self, atol: float = 1e-5) -> None:
        self.atol = atol
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        nonneg = (value >= -self.atol).flatten(-2).all(-1)
        rows = ((value.sum(-1) - 1).abs() <= self.atol).all(-1)
        cols = ((value.sum(-2) - 1).abs() <= self.atol).all(-1)
        return nonneg & rows & cols


doubly_stochastic = _DoublyStochastic()


def _check_square(x: Tensor, name: str) -> int:
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[-1] != x.shape[-2] or x.shape[-1] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape (..., N, N) with N >= 1, got {shape}")
    return x.shape[-1]


def log_sinkhorn(log_alpha: Tensor, n_iters: int = 1000, tol: float | None = 1e-6) -> Tensor:
    r"""Sinkhorn normalisation in log space: $\log S(X)$ for $X$ = ``log_alpha``.

    Each iteration subtracts the row log-sum-exp, then the column log-sum-exp.  Iteration
    stops after ``n_iters`` or, when ``tol`` is given, once every row sum is within ``tol``
    of one (columns are then exact up to rounding).  Convergence is linear and slows down as
    $X$ gets sharper (low temperature); ``tol=None`` runs exactly ``n_iters`` iterations, as
    in Mena et al. (2018), who train with 20.

    Args:
        log_alpha: ``(..., N, N)`` real scores.
        n_iters: maximum number of row-and-column sweeps.
        tol: stopping tolerance on the row sums, or ``None``.

    Returns:
        ``(..., N, N)`` log of a (nearly) doubly-stochastic matrix, differentiable.
    """
    _check_square(log_alpha, "log_alpha")
    if int(n_iters) != n_iters or n_iters < 0:
        raise ValueError(f"n_iters must be a non-negative integer, got {n_iters}")
    for i in range(int(n_iters)):
        row = log_alpha.logsumexp(-1, keepdim=True)
        # checking every few sweeps avoids a device sync per sweep on GPUs
        if tol is not None and i % 10 == 0 and i > 0 and bool(row.abs().max() < tol):
            return log_alpha
        log_alpha = log_alpha - row
        log_alpha = log_alpha - log_alpha.logsumexp(-2, keepdim=True)
    return log_alpha


def sinkhorn(log_alpha: Tensor, n_iters: int = 1000, tol: float | None = 1e-6) -> Tensor:
    r"""$S(X) = \exp(\text{log\_sinkhorn}(X))$, a doubly-stochastic ``(..., N, N)`` matrix."""
    return log_sinkhorn(log_alpha, n_iters, tol).exp()


def hungarian(scores: Tensor) -> Tensor:
    r"""The permutation matrix $\arg\max_P \sum_{ij} P_{ij} X_{ij}$, batched.

    Solved exactly by `scipy.optimize.linear_sum_assignment` on the CPU for each matrix in the
    batch (not differentiable; the result has the dtype and device of ``scores``).  For
    $X = \Psi$ this is also the permutation nearest to $\Psi$ in Frobenius norm.

    Examples:
        >>> hungarian(torch.tensor([[0.1, 0.9], [0.8, 0.3]]))
        tensor([[0., 1.],
                [1., 0.]])
    """
    n = _check_square(scores, "scores")
    flat = scores.detach().reshape(-1, n, n).to("cpu", torch.float64).numpy()
    cols = np.stack([linear_sum_assignment(m, maximize=True)[1] for m in flat])
    index = torch.as_tensor(cols, device=scores.device).reshape(scores.shape[:-1])
    return torch.zeros_like(scores).scatter_(-1, index.unsqueeze(-1), 1.0)


class _RoundStraightThrough(torch.autograd.Function):
    # forward: the exact permutation matrix (``P + X - X.detach()`` is off by rounding);
    # backward: the identity, i.e. the gradient of the relaxed sample
    @staticmethod
    def forward(ctx, soft: Tensor) -> Tensor:
        return hungarian(soft)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class GumbelSinkhorn(TorchDistribution):
    r"""Gumbel-Sinkhorn distribution over doubly-stochastic matrices (Mena et al. 2018).

    $$
    X = S\big((\log\alpha + G) / \tau\big), \qquad G_{ij} \sim \mathrm{Gumbel}(0, 1),
    $$

    a reparameterisable relaxation of the Gumbel-matching distribution
    $M(\log\alpha + G)$ over permutation matrices, which it approaches as
    $\tau \to 0$.  With ``hard=True``, samples are the Hungarian rounding of $X$ in the
    forward pass with the gradient of $X$ (straight-through).

    It has no tractable density: `log_prob` raises `NotImplementedError`.  Use
    `StickBreakingBirkhoff` or `RoundingBirkhoff` when a density is needed (e.g. for an
    entropy term of an ELBO).

    Args:
        log_alpha: ``batch_shape + (N, N)`` scores.
        temperature: $\tau > 0$ (number, one-element tensor or schedule).
        n_iters: maximum Sinkhorn sweeps; ``tol``: stopping tolerance (see `log_sinkhorn`).
        hard: straight-through permutation samples.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> d = GumbelSinkhorn(torch.randn(4, 4), temperature=0.5)
        >>> x = d.rsample((3,))
        >>> x.shape, bool(torch.allclose(x.sum(-1), torch.ones(3, 4), atol=1e-5))
        (torch.Size([3, 4, 4]), True)
    """

    arg_constraints = {"log_alpha": constraints.independent(constraints.real, 2)}
    support = doubly_stochastic
    has_rsample = True

    def __init__(
        self,
        log_alpha: Tensor,
        temperature: float | Tensor | TemperatureSchedule = 1.0,
        n_iters: int = 1000,
        hard: bool = False,
        tol: float | None = 1e-6,
        validate_args: bool | None = None,
    ) -> None:
        n = _check_square(log_alpha, "log_alpha")
        if int(n_iters) != n_iters or n_iters < 0:
            raise ValueError(f"n_iters must be a non-negative integer, got {n_iters}")
        self.log_alpha = log_alpha
        self.temperature = as_temperature(temperature, log_alpha)
        self.n_iters, self.hard, self.tol = int(n_iters), bool(hard), tol
        super().__init__(log_alpha.shape[:-2], torch.Size((n, n)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GumbelSinkhorn, _instance)
        batch_shape = torch.Size(batch_shape)
        new.log_alpha = self.log_alpha.expand(batch_shape + self.event_shape)
        new.temperature, new.n_iters, new.hard, new.tol = (
            self.temperature,
            self.n_iters,
            self.hard,
            self.tol,
        )
        super(GumbelSinkhorn, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> Tensor:
        shape = self._extended_shape(sample_shape)
        u = clamp_probs(torch.rand(shape, dtype=self.log_alpha.dtype, device=self.log_alpha.device))
        gumbel = -(-u.log()).log()
        scores = (self.log_alpha + gumbel) / self.temperature
        soft = sinkhorn(scores, self.n_iters, self.tol)
        if not self.hard:
            return soft
        return _RoundStraightThrough.apply(soft)

    def log_prob(self, value: Tensor) -> Tensor:
        raise NotImplementedError(
            "GumbelSinkhorn has no tractable density: the Sinkhorn operator maps N^2 Gumbel "
            "variables onto the (N-1)^2-dimensional Birkhoff polytope, so the density would be an "
            "intractable integral over the fibres. Use StickBreakingBirkhoff or RoundingBirkhoff "
            "for a distribution with an exact log_prob."
        )
