r"""Nucleotide substitution models and discrete-Gamma rate heterogeneity.

All models are time-reversible with rate matrix :math:`Q_{ij} = r_{ij}\pi_j` (:math:`i \ne j`)
for exchangeabilities :math:`r` (order ``AC, AG, AT, CG, CT, GT``) and stationary frequencies
:math:`\pi`, scaled to one expected substitution per unit time, :math:`-\sum_i \pi_i Q_{ii} = 1`.
Transition matrices are :math:`P(t) = e^{Qt}`: closed form for JC69 and K80, otherwise the
eigendecomposition of the symmetric matrix :math:`\Pi^{1/2} Q \Pi^{-1/2} = U \Lambda U^\top`,
:math:`P(t) = \Pi^{-1/2} U e^{\Lambda t} U^\top \Pi^{1/2}`, computed once per rate matrix and
batched over branches, rate categories and particles. When a rate matrix carries gradients it
goes through `torch.linalg.matrix_exp` instead, because ``eigh``'s backward is undefined at the
repeated eigenvalues of, e.g., HKY with equal frequencies.

Each parameter is a tensor (fixed, or a learnable parameter; leading batch dimensions allowed)
or a Pyro distribution, in which case `SubstitutionModel.sample` draws it as a latent site of
that name. References: Jukes & Cantor (1969); Kimura (1980); Hasegawa, Kishino & Yano (1985);
Tavaré (1986); Yang (1994) for the discrete Gamma.
"""

from __future__ import annotations

import numpy as np
import pyro
import scipy.special
import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = [
    "SubstitutionModel",
    "JC69",
    "K80",
    "HKY",
    "GTR",
    "discrete_gamma_rates",
    "get_model",
    "transition_matrices",
]

Param = Tensor | Distribution | float


class SubstitutionModel:
    """Base class: named parameters, sampled or fixed, and the transition matrices they give."""

    name = "model"

    def __init__(self, **params: Param) -> None:
        self.params = {k: _as_param(k, v) for k, v in params.items()}

    def sample(self) -> dict[str, Tensor]:
        """Parameter values, drawing each distribution-valued one as a Pyro sample site."""
        return {
            k: pyro.sample(k, v) if isinstance(v, Distribution) else v
            for k, v in self.params.items()
        }

    def exchangeabilities(self, p: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def frequencies(self, p: dict[str, Tensor]) -> Tensor:
        """Stationary frequencies ``(..., 4)``."""
        return p["freqs"]

    def rate_matrix(self, p: dict[str, Tensor]) -> Tensor:
        """Normalised rate matrix ``(..., 4, 4)``."""
        return gtr_rate_matrix(self.exchangeabilities(p), self.frequencies(p))

    def transition_matrices(self, p: dict[str, Tensor], t: Tensor) -> Tensor:
        r""":math:`P(t)` of shape ``(..., M, 4, 4)`` for times ``t`` of shape ``(..., M)``."""
        q = self.rate_matrix(p).to(t)  # fixed parameters live on the CPU until used
        if q.requires_grad:
            return torch.linalg.matrix_exp(q[..., None, :, :] * t[..., None, None])
        left, lam, right = _eigen(q, self.frequencies(p).to(t))
        expl = torch.exp(lam[..., None, :] * t[..., None])  # (..., M, 4)
        return (left[..., None, :, :] * expl[..., None, :]) @ right[..., None, :, :]


def transition_matrices(
    substitution: SubstitutionModel, parameters: dict[str, Tensor], lengths: Tensor,
    rates: Tensor | None = None,
) -> Tensor:  # fmt: skip
    r"""Transition matrices $P(b_k r_c)$ of every branch and rate category.

    Args:
        substitution: the model.
        parameters: its parameter values (`SubstitutionModel.sample` or `.params`).
        lengths: `(..., E)` branch lengths.
        rates: `(..., C)` rate multipliers; one category of rate 1 if omitted.

    Returns:
        `(..., E, C, 4, 4)` matrices, in the dtype and on the device of `lengths`.

    Examples:
        >>> transition_matrices(JC69(), {}, torch.tensor([0.1, 0.2])).shape
        torch.Size([2, 1, 4, 4])
    """
    rates = lengths.new_ones(1) if rates is None else rates.to(lengths)
    t = lengths[..., :, None] * rates[..., None, :]
    return substitution.transition_matrices(parameters, t.flatten(-2)).unflatten(-3, t.shape[-2:])


def _as_param(name: str, value: Param) -> Tensor | Distribution:
    if isinstance(value, Distribution):
        return value
    value = torch.as_tensor(value, dtype=torch.float64)
    if not torch.isfinite(value).all() or (value <= 0).any():
        raise ValueError(f"substitution parameter {name!r} must be positive and finite")
    return value


def gtr_rate_matrix(rates: Tensor, freqs: Tensor) -> Tensor:
    r"""GTR rate matrix from exchangeabilities ``(..., 6)`` and frequencies ``(..., 4)``."""
    iu = torch.triu_indices(4, 4, 1, device=rates.device)
    batch = torch.broadcast_shapes(rates.shape[:-1], freqs.shape[:-1])
    r = rates.new_zeros(*batch, 4, 4)
    r[..., iu[0], iu[1]] = rates.expand(*batch, 6)
    r = r + r.transpose(-1, -2)
    q = r * freqs[..., None, :]
    q = q - torch.diag_embed(q.sum(-1))
    scale = -(freqs * torch.diagonal(q, dim1=-2, dim2=-1)).sum(-1)
    return q / scale[..., None, None]


def _eigen(q: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    sq = freqs.sqrt()
    sym = sq[..., :, None] * q / sq[..., None, :]
    lam, u = torch.linalg.eigh(0.5 * (sym + sym.transpose(-1, -2)))
    return u / sq[..., :, None], lam, u.transpose(-1, -2) * sq[..., None, :]


class JC69(SubstitutionModel):
    r"""Jukes–Cantor: :math:`P_{ij}(t) = \tfrac14 + (\delta_{ij} - \tfrac14) e^{-4t/3}`."""

    name = "JC69"

    def __init__(self) -> None:
        super().__init__()

    def frequencies(self, p: dict[str, Tensor]) -> Tensor:
        return torch.full((4,), 0.25, dtype=torch.float64)

    def exchangeabilities(self, p: dict[str, Tensor]) -> Tensor:
        return torch.ones(6, dtype=torch.float64)

    def transition_matrices(self, p: dict[str, Tensor], t: Tensor) -> Tensor:
        e = torch.exp(-4.0 / 3.0 * t)[..., None, None]
        eye = torch.eye(4, dtype=t.dtype, device=t.device)
        return 0.25 + (eye - 0.25) * e


class K80(SubstitutionModel):
    r"""Kimura two-parameter model, transition/transversion ratio :math:`\kappa`.

    Closed form with :math:`a = e^{-4t/(\kappa+2)}`, :math:`b = e^{-2t(\kappa+1)/(\kappa+2)}`:
    :math:`P_{ii} = \tfrac14 + \tfrac14 a + \tfrac12 b`, transitions
    :math:`\tfrac14 + \tfrac14 a - \tfrac12 b`, transversions :math:`\tfrac14 - \tfrac14 a`.
    """

    name = "K80"
    _TRANSITION = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]])

    def __init__(self, kappa: Param = 2.0) -> None:
        super().__init__(kappa=kappa)

    def frequencies(self, p: dict[str, Tensor]) -> Tensor:
        return torch.full((4,), 0.25, dtype=torch.float64)

    def exchangeabilities(self, p: dict[str, Tensor]) -> Tensor:
        k = torch.as_tensor(p["kappa"])[..., None]
        one = torch.ones_like(k)
        return torch.cat([one, k, one, one, k, one], -1)

    def transition_matrices(self, p: dict[str, Tensor], t: Tensor) -> Tensor:
        k = torch.as_tensor(p["kappa"], dtype=t.dtype, device=t.device)[..., None]
        a = torch.exp(-4.0 * t / (k + 2.0))[..., None, None]
        b = torch.exp(-2.0 * t * (k + 1.0) / (k + 2.0))[..., None, None]
        eye = torch.eye(4, dtype=t.dtype, device=t.device)
        ts = self._TRANSITION.to(t)
        tv = 1.0 - eye - ts
        same = 0.25 + 0.25 * a + 0.5 * b
        transition = 0.25 + 0.25 * a - 0.5 * b
        return eye * same + ts * transition + tv * (0.25 - 0.25 * a)


class HKY(SubstitutionModel):
    r"""Hasegawa–Kishino–Yano: K80 exchangeabilities with frequencies :math:`\pi`."""

    name = "HKY"

    def __init__(self, kappa: Param = 2.0, freqs: Param = (0.25,) * 4) -> None:
        super().__init__(kappa=kappa, freqs=freqs)

    def exchangeabilities(self, p: dict[str, Tensor]) -> Tensor:
        return K80.exchangeabilities(self, p)


class GTR(SubstitutionModel):
    r"""General time-reversible model: six exchangeabilities ``AC, AG, AT, CG, CT, GT``."""

    name = "GTR"

    def __init__(self, rates: Param = (1.0,) * 6, freqs: Param = (0.25,) * 4) -> None:
        super().__init__(rates=rates, freqs=freqs)

    def exchangeabilities(self, p: dict[str, Tensor]) -> Tensor:
        return p["rates"]


def get_model(spec: str | SubstitutionModel) -> SubstitutionModel:
    """A model from its name (``"JC69"``/``"JC"``, ``"K80"``, ``"HKY"``, ``"GTR"``) or itself."""
    if isinstance(spec, SubstitutionModel):
        return spec
    table = {"JC69": JC69, "JC": JC69, "K80": K80, "K2P": K80, "HKY": HKY, "HKY85": HKY,
             "GTR": GTR}  # fmt: skip
    key = str(spec).upper()
    if key not in table:
        raise ValueError(f"substitution={spec!r}: expected one of {sorted(table)} or a model")
    return table[key]()


class _DiscreteGamma(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shape: Tensor, categories: int) -> Tensor:
        ctx.categories = categories
        ctx.save_for_backward(shape)
        return _gamma_rates_np(shape, categories)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (shape,) = ctx.saved_tensors
        return (grad * _gamma_rates_derivative(shape, ctx.categories)).sum(-1), None


def _gamma_rates_derivative(shape: Tensor, categories: int) -> Tensor:
    r"""$\partial r_k / \partial \alpha$ `(..., K)` of `discrete_gamma_rates`, exactly.

    With cuts $c_k = P^{-1}(\alpha, k/K)$ ($P$ the regularised lower incomplete gamma
    function), $r_k = K[P(\alpha+1, c_k) - P(\alpha+1, c_{k-1})]$ and, since
    $P(\alpha, c_k) = k/K$ for every $\alpha$, $c_k' = -\partial_a P(\alpha, c_k) /
    \partial_x P(\alpha, c_k)$. Written by hand because SciPy has no derivative of $P$ in its
    shape: $\partial_a P(a, x) = \sum_{m \ge 0} t_m(a, x) (\log x - \psi(a+m+1))$ with
    $t_m = x^{a+m} e^{-x} / \Gamma(a+m+1)$, the derivative of the series
    $P(a, x) = \sum_m t_m$ (terms summed until they are below $10^{-17}$ of the total).
    """
    a = shape.detach().cpu().double().numpy()[..., None]
    k = np.arange(1, categories) / categories
    cuts = scipy.special.gammaincinv(a, k)
    dcut = -_dP_da(a, cuts) / np.exp((a - 1) * np.log(cuts) - cuts - scipy.special.gammaln(a))
    dx = np.exp(a * np.log(cuts) - cuts - scipy.special.gammaln(a + 1))  # d/dx P(a+1, x)
    inner = _dP_da(a + 1, cuts) + dx * dcut  # d/da of P(a+1, c_k(a)), k = 1 .. K-1
    zero = np.zeros_like(inner[..., :1])
    d = np.diff(np.concatenate([zero, inner, zero], -1), axis=-1) * categories
    return torch.from_numpy(d).to(shape)


def _dP_da(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Derivative in ``a`` of the regularised lower incomplete gamma function, by series."""
    terms = int(np.max(x + 12 * np.sqrt(x))) + 60
    m = np.arange(terms)
    log_x = np.log(x)[..., None]
    log_t = (a[..., None] + m) * log_x - x[..., None] - scipy.special.gammaln(a[..., None] + m + 1)
    return (np.exp(log_t) * (log_x - scipy.special.digamma(a[..., None] + m + 1))).sum(-1)


def _gamma_rates_np(shape: Tensor, categories: int) -> Tensor:
    a = shape.detach().cpu().double().numpy()[..., None]
    k = torch.arange(1, categories, dtype=torch.float64).numpy()
    cuts = scipy.special.gammaincinv(a, k / categories)  # quantiles of Gamma(a, 1)
    upper = torch.from_numpy(scipy.special.gammainc(a + 1.0, cuts))
    zeros, ones = torch.zeros_like(upper[..., :1]), torch.ones_like(upper[..., :1])
    cdf = torch.cat([zeros, upper, ones], -1)
    return (torch.diff(cdf, dim=-1) * categories).to(shape)


def discrete_gamma_rates(shape: Tensor | float, categories: int = 4) -> Tensor:
    r"""Yang's (1994) discrete Gamma rates: the mean of each of ``categories`` equal-probability
    slices of :math:`\mathrm{Gamma}(\alpha, \alpha)`,

    .. math:: r_k = K\,[F_{\alpha+1}(\alpha q_k) - F_{\alpha+1}(\alpha q_{k-1})],

    with :math:`q_k` the :math:`k/K` quantile and :math:`F_a` the regularised lower incomplete
    gamma function (the "mean" rates IQ-TREE and MrBayes use by default). Shape ``(..., K)``
    for ``shape`` of shape ``(...)``; differentiable in ``shape`` (an exact derivative written
    by hand, since SciPy has no derivative of the incomplete gamma function in its shape).

    Example:
        >>> discrete_gamma_rates(torch.tensor(0.5), 4)
        tensor([0.0334, 0.2519, 0.8203, 2.8944], dtype=torch.float64)
    """
    shape = torch.as_tensor(shape, dtype=torch.float64)
    if categories < 1:
        raise ValueError(f"categories must be at least 1, got {categories}")
    if not torch.isfinite(shape).all() or (shape <= 0).any():
        raise ValueError("gamma shape must be positive and finite")
    if categories == 1:
        return torch.ones(*shape.shape, 1, dtype=shape.dtype, device=shape.device)
    return _DiscreteGamma.apply(shape, categories)
