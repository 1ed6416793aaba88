r"""A mean-field Gaussian fitted to the posterior of the unconstrained latents, and its ELBO.

$q_\phi(z) = \prod_i N(z_i; \mu_i, \sigma_i^2)$ over the unconstrained coordinates of
`varinf.potential.Potential` (the family of Pyro's ``AutoDiagonalNormal``), fitted by
stochastic variational inference: Adam ascent of the reparameterised ELBO
$\mathbb E_q[\log\pi(\mu + \sigma\epsilon)] + \sum_i \log\sigma_i + \text{const}$ with
$\epsilon \sim N(0, I)$, all particles of a step in one batched potential call, the iterates
of the second half averaged (Polyak and Juditsky 1992; Kingma and Welling 2014). It starts
at the Laplace fit, where for a Gaussian posterior with precision $H$ the mean-field optimum
is already reached ($\mu = \hat z$, $\sigma_i^{-2} = H_{ii}$), so few steps are needed.

`FittedELBO` is the ELBO of that fit, the "ELBO" of Fourment et al. (2020), "19 dubious ways to
compute the marginal likelihood of a phylogenetic tree topology": a lower bound, low by
$\mathrm{KL}(q \,\|\, p(z\mid x))$ (for a Gaussian posterior: $\frac12(\sum_i \log H_{ii} -
\log\det H)$).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pyro.distributions as dist
import torch

from varinf.estimate import Estimate, Estimator, make_estimate
from varinf.estimators.laplace import Laplace
from varinf.potential import Potential
from varinf.weights import check_num_particles


def fit_mean_field(
    potential: Potential,
    *,
    num_steps: int = 300,
    num_particles: int = 8,
    lr: float = 0.02,
    init: str | tuple = "laplace",
) -> tuple[dist.Independent, dict[str, Any]]:
    r"""Fit $q_\phi$ by Adam on the reparameterised ELBO; return it and a fit report.

    Args:
        potential: the `varinf.potential.Potential`.
        num_steps: Adam steps.
        num_particles: draws per step (one batched call).
        lr: Adam learning rate.
        init: ``"laplace"`` (the mode and the Hessian diagonal, see above) or a tuple
            ``(loc, scale)`` of ``(D,)`` tensors.

    Returns:
        ``Normal(loc, scale).to_event(1)`` over $z$, and ``{"elbo_trace": [...]}`` (the ELBO
        estimate every tenth of the run).

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> q, _ = fit_mean_field(Potential(problem.model), num_steps=200)
        >>> loc, scale = problem.posterior
        >>> torch.allclose(q.base_dist.loc, loc, atol=0.05)
        True
    """
    if init == "laplace":
        mode, hess, _ = Laplace().gaussian(potential)
        precision = -torch.diagonal(hess)
        if not (precision > 0).all():
            raise ValueError("fit_mean_field: the Hessian diagonal at the mode is not negative")
        loc, scale = mode.z, precision.rsqrt()
    elif isinstance(init, tuple) and len(init) == 2:
        loc, scale = (torch.as_tensor(t, dtype=torch.float64) for t in init)
    else:
        raise ValueError(f"init must be 'laplace' or a (loc, scale) tuple, got {init!r}")
    check_num_particles(num_particles)
    check_num_particles(num_steps, "num_steps")
    loc = loc.detach().clone().requires_grad_(True)
    log_scale = scale.detach().log().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    trace, every = [], max(1, num_steps // 10)
    averaged, num_averaged = [torch.zeros_like(loc), torch.zeros_like(loc)], 0
    with torch.enable_grad():
        for step in range(num_steps):
            noise = torch.randn(num_particles, len(loc), dtype=loc.dtype, device=loc.device)
            z = loc + log_scale.exp() * noise
            elbo = potential.log_density(z).mean() + log_scale.sum()
            optimizer.zero_grad()
            (-elbo).backward()
            optimizer.step()
            if 2 * step >= num_steps:  # Polyak-Ruppert: average the second half's iterates
                averaged[0] += loc.detach()
                averaged[1] += log_scale.detach()
                num_averaged += 1
            if step % every == 0 or step == num_steps - 1:
                trace.append(elbo.item() + 0.5 * len(loc) * (1 + math.log(2 * math.pi)))
    loc, log_scale = (total / num_averaged for total in averaged)
    q = dist.Normal(loc, log_scale.exp()).to_event(1)
    return q, {"elbo_trace": trace}


class FittedELBO(Estimator):
    r"""The ELBO $\frac1K\sum_k \log \pi(z_k)/q(z_k)$ of a mean-field Gaussian fitted by
    `fit_mean_field`, on $K$ fresh draws: the paper's "ELBO", a lower bound.

    Args:
        num_particles: $K$ draws for the final estimate.
        fit: options of `fit_mean_field`.
        seed: see `varinf.Estimator`.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()  # mean-field is exact here: no gap
        >>> result = FittedELBO(1000, seed=0).estimate(problem.model)
        >>> abs(result.value - problem.log_evidence) < 0.01
        True
    """

    name = "fitted-elbo"
    kind: ClassVar[str] = "lower-bound"
    requires_guide: ClassVar[bool] = False

    def __init__(
        self, num_particles: int = 1000, *, fit: dict | None = None, seed: int | None = None
    ) -> None:
        super().__init__(seed=seed)
        self.num_particles = check_num_particles(num_particles)
        self.fit = dict(fit or {})

    def _estimate(self, model, guide, args, kwargs) -> Estimate:
        potential = Potential(model, args, kwargs)
        q, report = fit_mean_field(potential, **self.fit)
        z = q.sample((self.num_particles,))
        log_weights = potential.log_density(z) - q.log_prob(z)
        stderr = log_weights.std() / math.sqrt(self.num_particles)
        diagnostics = dict(report)
        if guide is not None:
            diagnostics["guide"] = "ignored: fitted-elbo fits its own mean-field guide"
        return make_estimate(log_weights.mean(), stderr, num_evaluations=potential.num_evaluations,
                             log_weights=log_weights, diagnostics=diagnostics)  # fmt: skip
