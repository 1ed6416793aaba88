r"""Pyro effect handlers shared by the estimators.

`tempered` raises the likelihood to a power $\beta$: under it a model's joint density is the
unnormalised power posterior $p(x \mid z)^\beta\, p(z)$ (Friel and Pettitt 2008), with $\beta$ a
number or one temperature per chain or particle, so a whole ladder of temperatures is one
batched model call.

`QuasiMonteCarloMessenger` replaces the guide's i.i.d. draws by randomised quasi-Monte Carlo
points: one scrambled Sobol point set $u_{1..K} \in [0,1)^D$ covers all $D$ latent dimensions of
a particle jointly, and each site takes its columns through the inverse CDF,
$z = F^{-1}(u)$ (Buchholz, Wenzel and Mandt 2018, "Quasi-Monte Carlo Variational Inference").
Each point is marginally uniform, so each particle is still an exact draw from $q$ and averages
over particles stay unbiased; the points are negatively correlated, which lowers the variance
of those averages (most for smooth integrands in low dimension).

Written by hand: Pyro has no QMC sampling; the Sobol points come from
`torch.quasirandom.SobolEngine`.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample  # a plate's index site

MAX_SOBOL_DIMENSION = 21201  # torch's SobolEngine limit


class tempered(Messenger):  # noqa: N801 (a handler, named like Pyro's poutine.scale)
    r"""Scale the log density of every likelihood site by an inverse temperature $\beta$.

    Likelihood sites are the observed sample sites, `pyro.factor` included; latent sites keep
    their prior. The traced joint log density becomes

    $$\log p_\beta(x, z) = \beta \log p(x \mid z) + \log p(z),$$

    the log density of the power posterior (Friel and Pettitt 2008, "Marginal likelihood
    estimation via power posteriors"). A site is a likelihood site when it is observed at the
    moment this handler sees it, so data supplied by `poutine.condition` are tempered when the
    condition is inside: ``tempered(beta)(poutine.condition(model, data))``.
    ``pyro.deterministic`` sites carry no density and are left alone.

    Args:
        beta: $\beta \geq 0$, a float, or a tensor of shape ``(C,)`` with one temperature per
            element of the chain or particle plate at dimension ``dim``.
        dim: The (negative) dimension of that plate, e.g. ``-(max_plate_nesting + 1)``;
            required when ``beta`` has more than one element. ``beta`` is reshaped to
            ``(C, 1, ..., 1)`` with ``-dim - 1`` trailing ones, so it broadcasts against every
            site's log density.

    Raises:
        ValueError: a negative or non-finite ``beta``, or a tensor ``beta`` without ``dim``.

    Examples:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))
        >>> with tempered(0.3):
        ...     trace = pyro.poutine.trace(model).get_trace()
        >>> z = trace.nodes["z"]["value"]
        >>> prior = dist.Normal(0.0, 1.0).log_prob(z)
        >>> loglik = dist.Normal(z, 1.0).log_prob(torch.tensor(0.5))
        >>> bool(torch.isclose(trace.log_prob_sum(), 0.3 * loglik + prior))
        True

        One temperature per chain, in one model call:

        >>> betas = torch.tensor([0.0, 0.5, 1.0])
        >>> with pyro.plate("chains", 3, dim=-1), tempered(betas, dim=-1):
        ...     trace = pyro.poutine.trace(model).get_trace()
        >>> trace.compute_log_prob()
        >>> trace.nodes["x"]["log_prob"].shape
        torch.Size([3])
    """

    def __init__(self, beta: float | torch.Tensor, dim: int | None = None) -> None:
        super().__init__()
        self.beta = check_beta(beta, dim)

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] and not msg["infer"].get("_deterministic", False):
            msg["scale"] = self.beta * msg["scale"]


def check_beta(beta: float | torch.Tensor, dim: int | None) -> float | torch.Tensor:
    """``beta`` as a float, a 0-d tensor, or a ``(C,)`` tensor reshaped to broadcast at ``dim``;
    a ValueError for a negative or non-finite ``beta`` or a tensor ``beta`` without a ``dim``."""
    if not torch.is_tensor(beta):
        beta = float(beta)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be finite and non-negative, got {beta}")
        return beta
    if not (torch.isfinite(beta).all() and (beta >= 0).all()):
        raise ValueError(f"beta must be finite and non-negative, got {beta}")
    if beta.numel() == 1 and dim is None:
        return beta.reshape(())
    if dim is None or beta.dim() != 1 or dim >= 0:
        raise ValueError(
            f"a tensor beta of shape {tuple(beta.shape)} needs shape (C,) and a negative dim, "
            f"the dimension of the chain or particle plate it runs along (got dim={dim})"
        )
    return beta.reshape(beta.shape + (1,) * (-dim - 1))


class QuasiMonteCarloMessenger(Messenger):
    """Draw every latent sample site from one scrambled Sobol point set.

    Args:
        num_particles: $K$, the size of the particle plate the guide runs in (the points are
            shared across that plate's dimension).
        dimension: $D$, uniforms per particle (see `count_dimensions`).

    Supported sites: any reparameterised distribution with an `icdf` (Normal, Uniform, Cauchy,
    Laplace, ...), `MultivariateNormal`, `LowRankMultivariateNormal`, `Independent`, and a
    `TransformedDistribution` of any of these through any transforms: its base distribution is
    driven by the points and the draw pushed through the transforms, so `AutoMultivariateNormal`,
    `AutoLowRankMultivariateNormal`, `AutoIAFNormal` and flow guides work. A deterministic
    `Delta` site (an autoguide's unpacking of its latent) takes no points.
    """

    def __init__(self, num_particles: int, dimension: int) -> None:
        super().__init__()
        if not 1 <= dimension <= MAX_SOBOL_DIMENSION:
            raise ValueError(
                f"RQMC needs 1 to {MAX_SOBOL_DIMENSION} latent dimensions per particle, "
                f"the guide has {dimension}"
            )
        seed = int(torch.randint(0, 2**62, ()).item())  # scrambling follows the torch seed
        engine = torch.quasirandom.SobolEngine(dimension, scramble=True, seed=seed)
        points = engine.draw(num_particles, dtype=torch.float64)
        self.points = points
        self.num_particles = num_particles
        self.offset = 0

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None or isinstance(msg["fn"], _Subsample):
            return
        fn = msg["fn"]
        width = _site_dimension(fn, self.num_particles)
        if width == 0:
            return  # a Delta: its value is already determined
        if self.offset + width > self.points.shape[1]:
            raise ValueError(f"site {msg['name']!r} needs more RQMC dimensions than were counted")
        u = self.points[:, self.offset : self.offset + width]
        self.offset += width
        msg["value"] = quantile_sample(fn, u, msg["name"])
        msg["done"] = True


def _site_dimension(fn, num_particles: int) -> int:
    """Uniforms one particle of this site needs."""
    shape = fn.batch_shape + fn.event_shape
    if not shape or shape[0] != num_particles:
        raise ValueError(
            "RQMC needs every guide site inside the particle plate as its leftmost batch "
            f"dimension; got a site of shape {tuple(shape)}"
        )
    return _num_uniforms(fn) // num_particles


def _num_uniforms(fn) -> int:
    """Uniforms a draw of ``fn`` takes: its base distribution's size, 0 for a Delta."""
    if isinstance(fn, dist.Delta):
        return 0
    if isinstance(fn, dist.Independent | torch.distributions.Independent):
        return _num_uniforms(fn.base_dist)
    if isinstance(fn, torch.distributions.TransformedDistribution):
        # the base may be smaller than the sample (e.g. a stick-breaking transform)
        return _num_uniforms(fn.base_dist)
    if isinstance(fn, torch.distributions.LowRankMultivariateNormal):
        rank = fn.cov_factor.shape[-1]
        return math.prod(fn.batch_shape) * (rank + fn.event_shape[0])
    return math.prod(fn.batch_shape + fn.event_shape)


def count_dimensions(trace, num_particles: int) -> int:
    """Uniforms per particle a vectorised guide trace needs."""
    return sum(
        _site_dimension(site["fn"], num_particles)
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site["is_observed"]
    )


def quantile_sample(fn, u: torch.Tensor, name: str = "?") -> torch.Tensor:
    """Map uniforms ``u`` of shape ``(K, D_site)`` to a sample of ``fn`` by inverse CDFs (of
    its base distribution, pushed through its transforms)."""
    reference = _parameter(fn)
    u = u.to(dtype=reference.dtype, device=reference.device)
    # Sobol points can be exactly 0, where inverse CDFs are infinite: keep them inside (0, 1)
    # by the resolution of the sample's own dtype.
    eps = torch.finfo(u.dtype).eps
    return _quantile(fn, u.clamp(eps, 1 - eps), name)


def _quantile(fn, u, name):
    """``u`` is ``(K, uniforms per particle)``; returns a draw of shape ``fn.shape()``."""
    if isinstance(fn, dist.Independent | torch.distributions.Independent):
        return _quantile(fn.base_dist, u, name)
    if isinstance(fn, torch.distributions.LowRankMultivariateNormal):
        rank = fn.cov_factor.shape[-1]
        normal = torch.special.ndtri(u).reshape(*fn.batch_shape, rank + fn.event_shape[0])
        low, diagonal = normal[..., :rank], normal[..., rank:]
        factor = (fn.cov_factor @ low.unsqueeze(-1)).squeeze(-1)
        return fn.loc + factor + fn.cov_diag.sqrt() * diagonal
    if isinstance(fn, dist.MultivariateNormal | torch.distributions.MultivariateNormal):
        normal = torch.special.ndtri(u).reshape(fn.batch_shape + fn.event_shape)
        return fn.loc + (fn.scale_tril @ normal.unsqueeze(-1)).squeeze(-1)
    if isinstance(fn, torch.distributions.TransformedDistribution):
        value = _quantile(fn.base_dist, u, name)
        # an exact base draw through any deterministic map is an exact draw of the result
        for transform in fn.transforms:
            value = transform(value)
        return value
    if getattr(fn, "has_rsample", False):
        try:
            return fn.icdf(u.reshape(fn.batch_shape + fn.event_shape))
        except NotImplementedError:
            pass
    raise ValueError(
        f"RQMC cannot sample site {name!r}: {type(fn).__name__} has no reparameterised inverse "
        "CDF; use sampler='iid' for this guide"
    )


def _parameter(fn) -> torch.Tensor:
    """A floating-point parameter of the innermost distribution: its dtype and device are the
    sample's."""
    while hasattr(fn, "base_dist"):  # Independent, TransformedDistribution
        fn = fn.base_dist
    for value in vars(fn).values():
        if torch.is_tensor(value) and value.is_floating_point():
            return value
    return torch.zeros(())
