r"""Laplus: Laplace's idea with densities on the positive half-line.

Fourment et al. (2020), "19 dubious ways to compute the marginal likelihood of a phylogenetic
tree topology" (Syst. Biol. 69(2)): at the posterior mode $\hat\theta$ (in the parameters' own,
constrained space), fit to each coordinate $i$ a density $q_i$ with the same mode $m_i =
\hat\theta_i$ and the same curvature $h_i = -\partial^2_{\theta_i} \log p(x, \hat\theta)$, then

$$\log \hat p(x) = \log p(x, \hat\theta) - \sum_i \log q_i(m_i).$$

It is exact when the posterior is the product of the $q_i$ (e.g. `GammaLaplus` on a
Gamma-Poisson model). With $c_i = h_i m_i^2$ (the curvature in $\log\theta_i$), the matched
families are

- Gamma$(\alpha, \beta)$: $\alpha = 1 + c_i$, $\beta = c_i / m_i$;
- LogNormal$(\mu, \sigma)$: $\sigma^2 = 1/c_i$, $\mu = \log m_i + \sigma^2$;
- BetaPrime$(\alpha, \beta)$ (density $x^{\alpha-1}(1+x)^{-\alpha-\beta}/B(\alpha,\beta)$):
  $\beta + 1 = c_i (1 + m_i)/m_i$, $\alpha = 1 + c_i(1 + m_i)$.

Coordinates on the whole real line get, together, the Gaussian of Laplace's method (the
precision is their block of $-H$), so a model without positive parameters gives `Laplace`'s
value. The curvature of a positive coordinate is its diagonal entry of the Hessian (those
coordinates are fitted independently), so where they are correlated the product of the $q_i$
is too narrow at the mode and the estimate is biased (for a Gaussian posterior with precision
$H$: low by $\frac12(\sum_i \log H_{ii} - \log\det H) \ge 0$, Hadamard's inequality).

The mode is found in $z = \log\theta$ on $\log p(x, e^z)$ (same maximiser); where it lies on
the boundary $\theta_i = 0$ the optimiser drifts to $m_i \to 0$ and the Gamma and beta-prime
fits tend to the exponential density with the posterior's slope at zero, while the log-normal
fit degenerates (its estimate then grows without bound). ``diagnostics["at_boundary"]``
counts such coordinates ($c_i < 10^{-3}$, a Gamma shape within $10^{-3}$ of one).
"""

from __future__ import annotations

import math
from typing import Any

import pyro.poutine as poutine
import torch
from torch.distributions import (
    Distribution,
    ExpTransform,
    Gamma,
    Independent,
    MultivariateNormal,
    TransformedDistribution,
    constraints,
)

from varinf.estimators.laplace import DETERMINISTIC, ModeEstimator, laplace_log_evidence
from varinf.estimators.mode import hessian, objective_function
from varinf.potential import Potential

FAMILIES = ("gamma", "lognormal", "betaprime")


def coordinate_kinds(potential: Potential, supports: dict) -> torch.Tensor:
    """``(D,)`` bool: True where the coordinate is a positive parameter, False where real.

    Args:
        potential: the `varinf.potential.Potential`.
        supports: site name -> support constraint (`site_supports`).

    Raises:
        ValueError: naming a site whose support is neither positive nor the real line.
    """
    kinds = []
    for name, _, _, where in potential.sites:
        fn_support = supports[name]
        base = fn_support
        while isinstance(base, constraints.independent):
            base = base.base_constraint
        if isinstance(base, constraints.greater_than | constraints.greater_than_eq) and (
            float(base.lower_bound) == 0.0
        ):
            positive = True
        elif base is constraints.real:
            positive = False
        else:
            raise ValueError(
                f"Laplus fits densities on (0, inf) or the real line, but site {name!r} has "
                f"support {fn_support}; use Laplace (which works in unconstrained space)"
            )
        kinds.append(torch.full((where.stop - where.start,), positive))
    return torch.cat(kinds)


def site_supports(model, args: tuple, kwargs: dict) -> dict:
    """The support of every latent sample site, from one prior run of ``model``."""
    with poutine.block(), torch.random.fork_rng():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    return {
        name: site["fn"].support
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and hasattr(site["fn"], "support")
    }


def log_q_at_mode(family: str, mode: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    r"""$\log q_i(m_i)$ of the matched density, per coordinate.

    Args:
        family: ``"gamma"``, ``"lognormal"`` or ``"betaprime"``.
        mode: ``(D,)`` $m_i > 0$.
        curvature: ``(D,)`` $c_i = h_i m_i^2 > 0$.

    Examples:
        >>> m, c = torch.tensor([2.0]), torch.tensor([3.0])  # the mode of Gamma(4, 1.5)
        >>> bool(torch.isclose(log_q_at_mode("gamma", m, c), Gamma(4.0, 1.5).log_prob(m)))
        True
    """
    if family == "gamma":
        return matched_gamma(mode, curvature).log_prob(mode)
    if family == "lognormal":
        variance = 1 / curvature
        return -(mode.log() + 0.5 * variance.log() + 0.5 * math.log(2 * math.pi)) - variance / 2
    if family == "betaprime":
        alpha, beta = 1 + curvature * (1 + mode), curvature * (1 + mode) / mode - 1
        log_beta_fn = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
        return (alpha - 1) * mode.log() - (alpha + beta) * torch.log1p(mode) - log_beta_fn
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def matched_gamma(mode: torch.Tensor, curvature: torch.Tensor) -> Gamma:
    r"""Gamma$(1 + c_i, c_i / m_i)$: mode $m_i$, curvature $c_i/m_i^2$ at the mode."""
    return Gamma(1 + curvature, curvature / mode)


class LaplusProposal(Distribution):
    r"""The product of matched Gammas (positive coordinates) and a Gaussian (the real ones), as
    a density of the unconstrained $z$ ($z_i = \log\theta_i$ on positive coordinates).

    The proposal of `varinf.GLIS`.

    Args:
        mode: ``(D,)`` the constrained mode.
        curvature: ``(D,)`` $c_i$ of the positive coordinates (others ignored).
        positive: ``(D,)`` bool, which coordinates are positive.
        real_precision: precision matrix of the real coordinates, their block of $-H$.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(
        self,
        mode: torch.Tensor,
        curvature: torch.Tensor,
        positive: torch.Tensor,
        real_precision: torch.Tensor,
    ) -> None:
        self.positive = positive.to(mode.device)
        pos, real = self.positive, ~self.positive
        log_gamma = TransformedDistribution(
            matched_gamma(mode[pos], curvature[pos]), [ExpTransform().inv]
        )
        self.parts = [
            (pos, Independent(log_gamma, 1)),
        ]
        if real.any():
            gaussian = MultivariateNormal(mode[real], precision_matrix=real_precision)
            self.parts.append((real, gaussian))
        super().__init__(event_shape=mode.shape, validate_args=False)

    def sample(self, sample_shape=()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.event_shape
        z = torch.empty(shape, dtype=self.positive_dtype, device=self.positive.device)
        for mask, part in self.parts:
            if mask.any():
                z[..., mask] = part.sample(sample_shape)
        return z

    @property
    def positive_dtype(self) -> torch.dtype:
        return self.parts[0][1].base_dist.base_dist.concentration.dtype

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        total = value.new_zeros(value.shape[:-1])
        for mask, part in self.parts:
            if mask.any():
                total = total + part.log_prob(value[..., mask])
        return total


class GammaLaplus(ModeEstimator):
    r"""Laplus with a Gamma density per positive coordinate (Fourment et al. 2020): the best
    of their fast methods on phylogenetic trees.

    Args:
        hessian: how the curvature is computed, see `varinf.estimators.mode.hessian`.
        **options: see `varinf.estimators.laplace.ModeEstimator`.

    Raises:
        ValueError: for a site neither positive nor real, or a coordinate whose curvature at
            the mode is not negative.

    Examples:
        >>> import pyro, pyro.distributions as dist
        >>> counts = torch.tensor([3.0, 5.0, 4.0], dtype=torch.float64)
        >>> def model():
        ...     rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=torch.float64), 1.0))
        ...     with pyro.plate("data", 3):
        ...         pyro.sample("x", dist.Poisson(rate), obs=counts)
        >>> exact = (2 * math.log(1.0) - math.lgamma(2) + math.lgamma(14) - 14 * math.log(4)
        ...          - sum(math.lgamma(k + 1) for k in (3, 5, 4)))
        >>> abs(GammaLaplus().estimate(model).value - exact) < 1e-6  # the posterior is a Gamma
        True
    """

    name = "gamma-laplus"
    family = "gamma"
    objective = "posterior"

    def __init__(self, *, hessian: Any = "auto", **options: Any) -> None:
        super().__init__(**options)
        self.hessian = hessian

    def _estimate(self, model, guide, args, kwargs):
        self._supports = site_supports(model, args, kwargs)
        return super()._estimate(model, guide, args, kwargs)

    def fit(self, potential) -> tuple:
        """Positive mask, constrained mode, curvatures, precision of the real block, the
        `Mode` and the Hessian method."""
        positive = coordinate_kinds(potential, self._supports)
        mode = self.mode(potential)
        positive = positive.to(mode.z.device)
        fn = objective_function(potential, "posterior")
        hess, how = hessian(fn, mode.z, self.hessian)
        curvature = -torch.diagonal(hess)
        if not (curvature[positive] > 0).all():
            bad = torch.nonzero((curvature <= 0) & positive).flatten().tolist()
            raise ValueError(
                f"Laplus: the log posterior is not concave along coordinates {bad} at the mode "
                "(non-positive curvature); the optimiser did not reach a maximum: raise "
                "num_starts or max_iter, or pass init="
            )
        constrained = torch.where(positive, mode.z.exp(), mode.z)
        real_precision = -hess[~positive][:, ~positive]
        return positive, constrained, curvature, real_precision, mode, how

    def evidence(self, potential):
        positive, constrained, curvature, real_precision, mode, how = self.fit(potential)
        log_q = log_q_at_mode(self.family, constrained[positive], curvature[positive]).sum()
        # the real block's Gaussian at its mode: 1/2 log det(P / 2 pi), via Laplace's check
        volume = laplace_log_evidence(0.0, -real_precision) if len(real_precision) else 0.0
        value = mode.value - log_q.item() + volume
        # the mode is at theta = 0 when the fitted Gamma is an exponential (shape 1 + c ~ 1)
        at_boundary = int((curvature[positive] < 1e-3).sum())
        diagnostics = {"stderr": DETERMINISTIC, "hessian": how, "at_boundary": at_boundary}
        if at_boundary and self.family == "lognormal":
            diagnostics["warning"] = (
                f"{at_boundary} coordinates have their mode at 0, where the log-normal fit "
                "degenerates and this estimate is meaningless; use GammaLaplus"
            )
        return value, math.nan, {**diagnostics, **mode.report}


class LogNormalLaplus(GammaLaplus):
    r"""Laplus with a log-normal density per positive coordinate (Fourment et al. 2020).

    Exact when each posterior marginal is log-normal and they are independent; degenerate
    when a mode lies on the boundary $\theta_i = 0$.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()  # real coordinates: Laplace's Gaussian
        >>> round(LogNormalLaplus().estimate(problem.model).value - problem.log_evidence, 6)
        0.0
    """

    name = "lognormal-laplus"
    family = "lognormal"


class BetaPrimeLaplus(GammaLaplus):
    r"""Laplus with a beta-prime density $x^{\alpha-1}(1+x)^{-\alpha-\beta}/B(\alpha,\beta)$ per
    positive coordinate (Fourment et al. 2020). Needs $c_i(1+m_i)/m_i > 1$.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> round(BetaPrimeLaplus().estimate(problem.model).value - problem.log_evidence, 6)
        0.0
    """

    name = "betaprime-laplus"
    family = "betaprime"
