r"""Importance sampling of the evidence with proposals fitted to the posterior.

With $K$ draws $z_k \sim q$ over the unconstrained latents and $\pi(z) = p(x, T(z))
\lvert J_T(z)\rvert$ (`varinf.potential.Potential`),

$$\hat p(x) = \frac1K \sum_k w_k, \qquad w_k = \frac{\pi(z_k)}{q(z_k)},$$

unbiased for $p(x)$; $\log\hat p(x)$ is consistent, biased low by about $\mathrm{Var}(w) /
(2K\bar w^2)$, and its delta-method standard error is $\sqrt{\widehat{\mathrm{Var}}(w)/K} /
\bar w$, trustworthy when the Pareto $\hat k$ of the weights is below 0.7 (Vehtari et al.
2024, "Pareto smoothed importance sampling", JMLR). The proposals, after Fourment et al.
(2020), "19 dubious ways to compute the marginal likelihood of a phylogenetic tree topology":

- `ImportanceSampling`: a guide, a given distribution, or a multivariate Student-t at the
  Laplace fit;
- `GLIS` (`varinf.estimators.glis`): the product of the `varinf.GammaLaplus` Gammas;
- `VBIS` (`varinf.estimators.vbis`): a mean-field Gaussian or a flow fitted by stochastic
  variational inference, or a trained Pyro guide.

On positive parameters the Gamma-Laplus proposal is far better than a Gaussian or Student-t
in their logarithms: on DS1's top tree (51 branch lengths) its effective sample size is about
20 times that of the Laplace Student-t at equal cost (``docs/laplace.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from torch.distributions import Distribution, constraints

from varinf.diagnostics import importance_diagnostics
from varinf.estimate import Estimate, Estimator, make_estimate
from varinf.estimators.elbo import iwae_stderr
from varinf.estimators.laplace import Laplace, laplace_log_evidence
from varinf.estimators.laplus import site_supports
from varinf.potential import Potential
from varinf.weights import check_num_particles, guess_max_plate_nesting, trace_log_weights


def importance_log_weights(
    log_density: Callable, proposal: Distribution, num_particles: int, batch_size: int
) -> torch.Tensor:
    r"""$\log w_k = \log\pi(z_k) - \log q(z_k)$ for $K$ draws, in batches of ``batch_size``.

    Raises:
        FloatingPointError: when a log density is NaN, or the proposal density is not finite
            at its own draws.
    """
    chunks = []
    for start in range(0, num_particles, batch_size):
        z = proposal.sample((min(batch_size, num_particles - start),))
        log_q = proposal.log_prob(z)
        log_p = log_density(z)
        if not torch.isfinite(log_q).all():
            raise FloatingPointError("the proposal's log density is not finite at its own draws")
        if torch.isnan(log_p).any():
            raise FloatingPointError("the model's log density is NaN at some proposal draws")
        chunks.append(log_p - log_q)
    return torch.cat(chunks)


def importance_summary(log_weights: torch.Tensor) -> tuple[float, float, dict[str, Any]]:
    r"""$\log \frac1K\sum_k w_k$, its delta-method standard error, ESS and PSIS $\hat k$.

    Examples:
        >>> value, stderr, diagnostics = importance_summary(torch.zeros(100, dtype=torch.float64))
        >>> value, round(stderr, 6), round(diagnostics["ess"], 6)
        (0.0, 0.0, 100.0)
    """
    value = (log_weights.logsumexp(0) - math.log(len(log_weights))).item()
    stderr = iwae_stderr(log_weights).item()
    diagnostics = importance_diagnostics(log_weights)
    if diagnostics["khat"] > 0.7 and diagnostics["ess_fraction"] < 0.999:
        diagnostics["warning"] = (
            f"Pareto k-hat {diagnostics['khat']:.2f} > 0.7: the weights are heavy-tailed and the "
            "standard error is unreliable; use a wider proposal or more particles"
        )
    return value, stderr, diagnostics


def student_t_at(loc: torch.Tensor, hess: torch.Tensor, df: float) -> dist.MultivariateStudentT:
    r"""Multivariate Student-t with location ``loc`` and scale matrix $(-H)^{-1}$."""
    laplace_log_evidence(0.0, hess)  # raises a clear error when -H is not positive definite
    covariance = torch.linalg.inv(-hess)
    scale_tril = torch.linalg.cholesky((covariance + covariance.T) / 2)
    return dist.MultivariateStudentT(torch.as_tensor(float(df), dtype=loc.dtype), loc, scale_tril)


class ConstrainedProposal(Distribution):
    r"""A proposal over the model's constrained site values, seen in the unconstrained space:
    $z = T^{-1}(\theta)$, $\log q_z(z) = \sum_s \log q_s(\theta_s) + \log\lvert J_T(z)\rvert$.

    Args:
        proposals: site name -> distribution over that site's values (event shape the site's).
        potential: the model's `varinf.potential.Potential`.
        supports: site name -> the model's support for that site.

    Raises:
        ValueError: for a missing or extra site, or a proposal whose support does not cover
            the model's.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, proposals: dict, potential: Potential, supports: dict) -> None:
        names = [name for name, *_ in potential.sites]
        if set(proposals) != set(names):
            raise ValueError(
                f"proposal: give one distribution per latent site {names}, got {sorted(proposals)}"
            )
        for name in names:
            check_covers(name, proposals[name].support, supports[name])
        self.proposals, self.potential = proposals, potential
        super().__init__(event_shape=torch.Size([potential.dim]), validate_args=False)

    def sample(self, sample_shape=()) -> torch.Tensor:
        (num,) = sample_shape
        parts = []
        for name, shape, transform, _ in self.potential.sites:
            value = self.proposals[name].sample((num,)).reshape(num, *shape)
            parts.append(transform.inv(value).reshape(num, -1))
        return torch.cat(parts, 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        total = value.new_zeros(value.shape[0])
        for name, shape, transform, where in self.potential.sites:
            u = value[:, where].reshape(value.shape[0], *shape)
            theta = transform(u)
            log_q = self.proposals[name].log_prob(theta).reshape(value.shape[0], -1).sum(1)
            log_jac = transform.log_abs_det_jacobian(u, theta).reshape(value.shape[0], -1)
            total = total + log_q + log_jac.sum(1)
        return total


def check_covers(name: str, proposal_support, model_support) -> None:
    """Raise when the proposal's support misses part of the model's support of site ``name``."""
    if proposal_support == model_support or _base(proposal_support) is constraints.real:
        return
    lower_p, lower_m = _lower_bound(proposal_support), _lower_bound(model_support)
    if lower_p is not None and lower_m is not None and lower_p <= lower_m:
        return
    raise ValueError(
        f"proposal for site {name!r} has support {proposal_support}, which misses part of the "
        f"model's support {model_support}: importance weights there would be infinite. Use a "
        f"proposal on {model_support} (or the default Laplace Student-t)"
    )


def _base(constraint):
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return constraint


def _lower_bound(constraint) -> float | None:
    base = _base(constraint)
    if isinstance(base, constraints.greater_than | constraints.greater_than_eq):
        return float(base.lower_bound)
    if base is constraints.real:
        return -math.inf
    return None


class _PotentialImportance(Estimator):
    """Importance sampling on the potential: subclasses build the proposal."""

    kind: ClassVar[str] = "consistent"
    requires_guide: ClassVar[bool] = False

    def __init__(
        self,
        num_particles: int = 10000,
        *,
        batch_size: int = 1000,
        target_stderr: float | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        self.num_particles = check_num_particles(num_particles)
        self.batch_size = check_num_particles(batch_size, "batch_size")
        if target_stderr is not None and not target_stderr > 0:
            raise ValueError(f"target_stderr must be positive or None, got {target_stderr!r}")
        self.target_stderr = target_stderr

    def build_proposal(self, potential, model, args, kwargs) -> tuple[Distribution, dict]:
        raise NotImplementedError

    def sample_weights(self, potential, proposal) -> torch.Tensor:
        """All ``num_particles``, or batches until ``target_stderr`` is reached."""
        if self.target_stderr is None:
            return importance_log_weights(
                potential.log_density, proposal, self.num_particles, self.batch_size
            )
        chunks, drawn = [], 0
        while drawn < self.num_particles:
            size = min(self.batch_size, self.num_particles - drawn)
            chunks.append(importance_log_weights(potential.log_density, proposal, size, size))
            drawn += size
            if iwae_stderr(torch.cat(chunks)).item() <= self.target_stderr:
                break
        return torch.cat(chunks)

    def _estimate(self, model, guide, args, kwargs) -> Estimate:
        potential = Potential(model, args, kwargs)
        with torch.enable_grad():
            proposal, fit_diagnostics = self.build_proposal(potential, model, args, kwargs)
        fit_evaluations = potential.num_evaluations
        log_weights = self.sample_weights(potential, proposal)
        value, stderr, diagnostics = importance_summary(log_weights)
        diagnostics = {**fit_diagnostics, **diagnostics, "fit_evaluations": fit_evaluations}
        if guide is not None:
            diagnostics["guide"] = f"ignored: {self.name} fits its own proposal"
        return make_estimate(
            value,
            stderr,
            num_evaluations=potential.num_evaluations,
            log_weights=log_weights,
            diagnostics=diagnostics,
        )


class ImportanceSampling(_PotentialImportance):
    r"""Importance sampling of the evidence, $\log\frac1K\sum_k \pi(z_k)/q(z_k)$.

    The proposal, in order of precedence: ``proposal=`` (a distribution over the single
    latent site's values, or a dict of them per site, in the sites' own space); the guide
    passed to `estimate` (its weights come from `varinf.weights`, in batches); else a
    multivariate Student-t with ``df`` degrees of freedom centred at the `Laplace` mode of the
    unconstrained latents with scale matrix $(-H)^{-1}$.

    Args:
        num_particles: $K$ (the most drawn when ``target_stderr`` is set).
        proposal: see above.
        df: Student-t degrees of freedom.
        laplace: options of the `Laplace` fit (``num_starts``, ``hessian``, ...).
        **options: ``batch_size`` (draws per model call), ``target_stderr`` (stop drawing once
            the standard error is below this) and ``seed`` (see `varinf.Estimator`).

    Diagnostics: ``ess``, ``ess_fraction``, ``khat`` (PSIS), ``fit_evaluations`` (spent on the
    fit), the mode report; ``warning`` when $\hat k > 0.7$.

    Raises:
        ValueError: a proposal whose support misses the model's.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> result = ImportanceSampling(2000, seed=0).estimate(problem.model)
        >>> abs(result.value - problem.log_evidence) < 5 * result.stderr
        True
    """

    name = "is"

    def __init__(
        self,
        num_particles: int = 10000,
        *,
        proposal: Distribution | dict | None = None,
        df: float = 5.0,
        laplace: dict | None = None,
        **options: Any,
    ) -> None:
        super().__init__(num_particles, **options)
        self.proposal, self.df = proposal, df
        self.laplace = dict(laplace or {})

    def estimate(self, model, guide=None, *args, **kwargs) -> Estimate:
        if guide is not None and self.proposal is None:
            return _GuideImportance(self).estimate(model, guide, *args, **kwargs)
        return super().estimate(model, None, *args, **kwargs)

    def build_proposal(self, potential, model, args, kwargs):
        if self.proposal is not None:
            given = self.proposal
            if isinstance(given, Distribution):
                if len(potential.sites) != 1:
                    raise ValueError("proposal: the model has several latent sites; pass a dict")
                given = {potential.sites[0][0]: given}
            return ConstrainedProposal(given, potential, site_supports(model, args, kwargs)), {}
        mode, hess, how = Laplace(**self.laplace).gaussian(potential)
        proposal = student_t_at(mode.z, hess, self.df)
        return proposal, {"hessian": how, **mode.report}


class _GuideImportance(Estimator):
    """Importance sampling with a Pyro guide as proposal, in batches (for `ImportanceSampling`)."""

    name = "is"
    kind = "consistent"

    def __init__(self, owner: ImportanceSampling) -> None:
        super().__init__(seed=owner.seed)
        self.owner = owner

    def _estimate(self, model, guide, args, kwargs) -> Estimate:
        owner = self.owner
        nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        chunks = []
        for start in range(0, owner.num_particles, owner.batch_size):
            size = min(owner.batch_size, owner.num_particles - start)
            weights = trace_log_weights(model, guide, args, kwargs, num_particles=size,
                                        max_plate_nesting=nesting, per_datum=False)  # fmt: skip
            chunks.append(weights.log_weights.reshape(size))
        log_weights = torch.cat(chunks)
        value, stderr, diagnostics = importance_summary(log_weights)
        return make_estimate(value, stderr, num_evaluations=owner.num_particles,
                             log_weights=log_weights, diagnostics=diagnostics)  # fmt: skip
