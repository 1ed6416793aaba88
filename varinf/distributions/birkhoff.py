r"""Distributions on (a neighbourhood of) the Birkhoff polytope with exact densities.

Linderman, Mena, Cooper, Paninski & Cunningham (2018), "Reparameterizing the Birkhoff polytope
for variational permutation inference" (AISTATS), give two reparameterisations of
$N \times N$ doubly-stochastic matrices whose densities are tractable, so that an ELBO with an
entropy term can be optimised over permutations.

**Stick-breaking** (their §3.1): $(N-1)^2$ variables $\beta_{ij} \in (0, 1)$ fill the
upper-left block row by row, $x_{ij} = \ell_{ij} + \beta_{ij}(u_{ij} - \ell_{ij})$, between the
bounds that keep the rest completable,

$$
u_{ij} = \min\Big(1 - \sum_{k<j} x_{ik},\; 1 - \sum_{k<i} x_{kj}\Big), \qquad
\ell_{ij} = \max\Big(0,\; 1 - N + j - \sum_{k<j} x_{ik}
    + \sum_{k<i}\sum_{m>j} x_{km}\Big),
$$

and the last row and column follow from the sums.  The map is triangular in the filling
order, so $\log|\det J| = \sum_{ij} \log(u_{ij} - \ell_{ij})$.  With
$\beta = \sigma(\psi / \tau)$, $\psi \sim \mathcal N(\mu, \nu^2)$ this is
`StickBreakingBirkhoff`.

**Rounding** (their §3.2): $\Psi = \tilde M + V \odot Z$, $\tilde M = S(\log M)$ the Sinkhorn
normalisation, $Z \sim \mathcal N(0, I)$, then
$X = \tau \Psi + (1 - \tau)\,\mathrm{round}(\Psi)$ with $\mathrm{round}$ the nearest
permutation (Hungarian algorithm).  The map is piecewise affine and injective:
$\mathrm{round}(X) = \mathrm{round}(\Psi)$, so
$\Psi = (X - (1-\tau)\,\mathrm{round}(X)) / \tau$ and $\log|\det J| = N^2 \log \tau$
on the image of the map (the cells shrunk by $\tau$ towards their permutations; the density
is zero in the gaps between them).  This is `RoundingBirkhoff`; its samples lie near, not
on, the polytope.

Densities are with respect to Lebesgue measure on the upper-left $(N-1)\times(N-1)$ block
(stick-breaking) and on all $N^2$ entries (rounding).
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import Normal, TransformedDistribution, constraints
from torch import Tensor
from torch.distributions.transforms import SigmoidTransform, Transform

from varinf.distributions.concrete import TemperatureSchedule, as_temperature
from varinf.distributions.sinkhorn import _check_square, doubly_stochastic, hungarian, sinkhorn

__all__ = [
    "RoundingBirkhoff",
    "RoundingTransform",
    "StickBreakingBirkhoff",
    "StickBreakingBirkhoffTransform",
    "stick_breaking_centre",
]


def _bounds(block: Tensor) -> tuple[Tensor, Tensor]:
    """Stick-breaking bounds (lower, upper) of every block entry, from the filled block."""
    n = block.shape[-1] + 1
    row_before = block.cumsum(-1) - block  # sum_{k<j} x_ik
    col_before = block.cumsum(-2) - block  # sum_{k<i} x_kj
    rows_above = block.cumsum(-1).cumsum(-2) - block.cumsum(-1)  # sum_{k<i} sum_{m<=j} x_km
    i = torch.arange(n - 1, device=block.device, dtype=block.dtype)
    ij = i.unsqueeze(-1) + i  # 0-based i + j
    upper = torch.minimum(1 - row_before, 1 - col_before)
    lower = (ij + 2 - n - row_before - rows_above).clamp_min(0)
    return lower, upper


def _complete(block: Tensor) -> Tensor:
    """Append the last column and row implied by unit row and column sums."""
    last_col = 1 - block.sum(-1, keepdim=True)
    top = torch.cat([block, last_col], -1)
    return torch.cat([top, 1 - top.sum(-2, keepdim=True)], -2)


class StickBreakingBirkhoffTransform(Transform):
    r"""Stick-breaking bijection $(0,1)^{(N-1)\times(N-1)} \to$ Birkhoff polytope.

    Maps ``(..., N-1, N-1)`` to ``(..., N, N)`` doubly-stochastic matrices (see the module
    docstring for the bounds $\ell, u$); ``log_abs_det_jacobian`` is
    $\sum_{ij}\log(u_{ij} - \ell_{ij})$, the Jacobian of the block (the last row and column
    are functions of it).  Written by hand: neither torch nor Pyro has it.  The forward map
    is a loop over the $(N-1)^2$ entries; the inverse and the Jacobian are vectorised.

    Examples:
        >>> t = StickBreakingBirkhoffTransform()
        >>> x = t(torch.full((2, 2), 0.5))
        >>> x.sum(-1), x.sum(-2)
        (tensor([1., 1., 1.]), tensor([1., 1., 1.]))
    """

    domain = constraints.independent(constraints.unit_interval, 2)
    codomain = doubly_stochastic
    bijective = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StickBreakingBirkhoffTransform)

    def forward_shape(self, shape):
        return torch.Size(shape[:-2]) + (shape[-2] + 1, shape[-1] + 1)

    def inverse_shape(self, shape):
        return torch.Size(shape[:-2]) + (shape[-2] - 1, shape[-1] - 1)

    def _call(self, beta: Tensor) -> Tensor:
        _check_square(beta, "beta")
        m = beta.shape[-1]
        n = m + 1
        col_before = torch.zeros_like(beta[..., 0, :])
        rows = []
        for i in range(m):
            rows_above = col_before.cumsum(-1)
            row_before = torch.zeros_like(beta[..., 0, 0])
            row = []
            for j in range(m):
                upper = torch.minimum(1 - row_before, 1 - col_before[..., j])
                lower = (i + j + 2 - n - row_before - rows_above[..., j]).clamp_min(0)
                x = lower + beta[..., i, j] * (upper - lower)
                row.append(x)
                row_before = row_before + x
            row = torch.stack(row, -1)
            rows.append(row)
            col_before = col_before + row
        return _complete(torch.stack(rows, -2))

    def _inverse(self, x: Tensor) -> Tensor:
        _check_square(x, "value")
        block = x[..., :-1, :-1]
        lower, upper = _bounds(block)
        width = upper - lower
        # a collapsed stick (u = l, only on the boundary) leaves beta free: pick 1/2
        positive = width > 0
        beta = (block - lower) / torch.where(positive, width, torch.ones_like(width))
        return torch.where(positive, beta, torch.full_like(beta, 0.5))

    def log_abs_det_jacobian(self, beta: Tensor, x: Tensor) -> Tensor:
        lower, upper = _bounds(x[..., :-1, :-1])
        # sticks collapse (u = l up to rounding) when a saturated sigmoid gives beta = 1 - eps;
        # clamping keeps the log density finite there instead of -inf with nan gradients
        width = (upper - lower).clamp_min(torch.finfo(x.dtype).tiny)
        return width.log().sum((-1, -2))


def stick_breaking_centre(
    n: int,
    temperature: float = 1.0,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Tensor:
    r"""The ``(n-1, n-1)`` loc $\mu$ whose noiseless stick-breaking image is the barycentre.

    Returns $\mu = \tau\,\sigma^{-1}(\beta^\star)$ with $\beta^\star$ the sticks of
    $J/N$ (all entries $1/N$), so `StickBreakingBirkhoff` ``(mu, scale, temperature)`` has
    its median sample at the centre of the polytope.  This is the natural starting point of
    a fit: ``loc = 0`` ($\beta = 1/2$) is *not* central but a matrix concentrated near the
    diagonal ($x_{11} = 1/2$, $x_{12} = 1/4$, ...), which favours the identity and its
    neighbours before any data are seen (the reference code of Linderman et al. also starts
    at $J/N$).

    Examples:
        >>> mu = stick_breaking_centre(3)
        >>> StickBreakingBirkhoffTransform()(torch.sigmoid(mu))
        tensor([[0.3333, 0.3333, 0.3333],
                [0.3333, 0.3333, 0.3333],
                [0.3333, 0.3333, 0.3333]])
    """
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    tau = as_temperature(temperature)
    centre = torch.full((n, n), 1.0 / n, dtype=dtype, device=device)
    beta = StickBreakingBirkhoffTransform().inv(centre)
    return tau.to(beta) * torch.logit(beta)


class RoundingTransform(Transform):
    r"""$\Psi \mapsto X = \tau\Psi + (1-\tau)\,\mathrm{round}(\Psi)$ on ``(..., N, N)`` matrices.

    $\mathrm{round}$ is the nearest permutation matrix in Frobenius norm (Hungarian
    algorithm, `hungarian`).  Because $\mathrm{round}(X) = \mathrm{round}(\Psi)$ the map is
    injective, with inverse $(X - (1-\tau)\,\mathrm{round}(X))/\tau$ and
    $\log|\det J| = N^2\log\tau$ (Linderman et al. 2018, §3.2).  Gradients flow through
    $\Psi$ only: the rounding is piecewise constant.

    Args:
        temperature: $\tau \in (0, 1]$; $\tau = 1$ is the identity.
    """

    domain = constraints.independent(constraints.real, 2)
    codomain = constraints.independent(constraints.real, 2)
    bijective = True

    def __init__(self, temperature: float | Tensor | TemperatureSchedule, cache_size: int = 0):
        self.temperature = as_temperature(temperature)
        if float(self.temperature) > 1:
            raise ValueError(f"temperature must be in (0, 1], got {float(self.temperature)}")
        super().__init__(cache_size=cache_size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RoundingTransform) and bool(self.temperature == other.temperature)

    def with_cache(self, cache_size: int = 1) -> RoundingTransform:
        return RoundingTransform(self.temperature, cache_size=cache_size)

    def _call(self, psi: Tensor) -> Tensor:
        tau = self.temperature.to(psi)
        return tau * psi + (1 - tau) * hungarian(psi)

    def _inverse(self, x: Tensor) -> Tensor:
        tau = self.temperature.to(x)
        return (x - (1 - tau) * hungarian(x)) / tau

    def log_abs_det_jacobian(self, psi: Tensor, x: Tensor) -> Tensor:
        n = x.shape[-1]
        value = n * n * math.log(float(self.temperature))
        return torch.full(x.shape[:-2], value, dtype=x.dtype, device=x.device)


class StickBreakingBirkhoff(TransformedDistribution):
    r"""Logistic-normal stick-breaking distribution on the Birkhoff polytope.

    $\psi \sim \mathcal N(\mu, \mathrm{diag}\,\nu^2)$ on $\mathbb R^{(N-1)\times(N-1)}$,
    $\beta = \sigma(\psi/\tau)$, $X = $ `StickBreakingBirkhoffTransform` $(\beta)$
    (Linderman et al. 2018, §3.1).  ``log_prob`` is exact (change of variables with the
    triangular Jacobian), so it can be a guide site whose entropy enters the ELBO.

    Args:
        loc: $\mu$, ``batch_shape + (N-1, N-1)``.
        scale: $\nu > 0$, same shape.
        temperature: $\tau > 0$; lower values push samples towards permutation matrices.

    Samples have shape ``sample_shape + batch_shape + (N, N)``.

    Examples:
        >>> d = StickBreakingBirkhoff(torch.zeros(3, 3), torch.ones(3, 3), temperature=0.5)
        >>> x = d.rsample((2,))
        >>> x.shape, d.log_prob(x).shape
        (torch.Size([2, 4, 4]), torch.Size([2]))
    """

    arg_constraints = {
        "loc": constraints.independent(constraints.real, 2),
        "scale": constraints.independent(constraints.positive, 2),
    }
    support = doubly_stochastic
    has_rsample = True

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor,
        temperature: float | Tensor | TemperatureSchedule = 1.0,
        validate_args: bool | None = None,
    ) -> None:
        _check_square(loc, "loc")
        tau = as_temperature(temperature, loc)
        # psi / tau ~ N(loc / tau, scale / tau): folding tau into the base avoids an affine
        # transform (torch's AffineTransform undercounts a scalar scale when event_dim > 0)
        self.temperature = tau  # before __init__: validation reads loc and scale
        base = Normal(loc / tau, scale / tau, validate_args=validate_args).to_event(2)
        transforms = [SigmoidTransform(cache_size=1), StickBreakingBirkhoffTransform(cache_size=1)]
        super().__init__(base, transforms, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StickBreakingBirkhoff, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.temperature = self.temperature
        return new

    @property
    def loc(self) -> Tensor:
        return self.base_dist.base_dist.loc * self.temperature

    @property
    def scale(self) -> Tensor:
        return self.base_dist.base_dist.scale * self.temperature


class RoundingBirkhoff(TransformedDistribution):
    r"""The rounding distribution near the Birkhoff polytope (Linderman et al. 2018, §3.2).

    $\Psi = S(\log M) + V \odot Z$, $Z \sim \mathcal N(0, I)$, and
    $X = \tau\Psi + (1-\tau)\,\mathrm{round}(\Psi)$ (see `RoundingTransform`), with the exact
    density $\log q(X) = \log\mathcal N(\Psi; S(\log M), V^2) - N^2 \log\tau$.
    As $\tau \to 0$ the samples concentrate on permutation matrices.

    Args:
        log_mean: $\log M$, ``batch_shape + (N, N)`` (Sinkhorn-normalised to the mean).
        scale: $V > 0$, broadcastable to ``log_mean``.
        temperature: $\tau \in (0, 1]$.
        n_iters: Sinkhorn sweeps for the mean (stops early at row-sum error ``1e-6``).

    Examples:
        >>> d = RoundingBirkhoff(torch.zeros(3, 3), 0.1 * torch.ones(3, 3), temperature=0.1)
        >>> x = d.sample()
        >>> bool(torch.isfinite(d.log_prob(x)))
        True
    """

    arg_constraints = {
        "log_mean": constraints.independent(constraints.real, 2),
        "scale": constraints.independent(constraints.positive, 2),
    }
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(
        self,
        log_mean: Tensor,
        scale: Tensor,
        temperature: float | Tensor | TemperatureSchedule = 0.1,
        n_iters: int = 1000,
        validate_args: bool | None = None,
    ) -> None:
        _check_square(log_mean, "log_mean")
        self.log_mean = log_mean
        mean = sinkhorn(log_mean, n_iters)
        base = Normal(mean, scale, validate_args=validate_args).to_event(2)
        super().__init__(base, RoundingTransform(temperature, cache_size=1), validate_args)
        self.temperature = self.transforms[0].temperature

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(RoundingBirkhoff, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.temperature = self.temperature
        new.log_mean = self.log_mean.expand(torch.Size(batch_shape) + self.event_shape)
        return new

    @property
    def scale(self) -> Tensor:
        return self.base_dist.base_dist.scale

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact log density; $-\\infty$ off the image of the rounding map."""
        log_prob = super().log_prob(value)
        # The image of each rounding cell {round(psi) = P} is a copy shrunk by tau towards P;
        # a value whose preimage rounds to another permutation is outside the support.
        psi = self.transforms[0].inv(value)
        outside = (hungarian(psi) != hungarian(value)).flatten(-2).any(-1)
        return log_prob.masked_fill(outside, -math.inf)
