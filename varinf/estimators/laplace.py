r"""Point proxies of the evidence and the Laplace approximation.

With $\theta$ the latents in their own (constrained) space, $z = T^{-1}(\theta)$ the
unconstrained coordinates of `varinf.potential.Potential` and $D$ their number:

- `MAP`: $\max_\theta \log p(x, \theta)$, the unnormalised posterior at its maximum;
- `MaximumLikelihood`: $\max_\theta \log p(x \mid \theta)$;
- `Laplace`: $\log \pi(\hat z) + \frac D2 \log 2\pi - \frac12 \log\det(-\nabla^2 \log \pi(\hat z))$,

where $\pi(z) = p(x, T(z))\,\lvert J_T(z)\rvert$ is the density of $z$ and $\hat z$ its mode.
Laplace is exact when $\pi$ is Gaussian (a linear-Gaussian model); otherwise its error is
$O(1/N)$ in the number of data (Tierney and Kadane 1986, "Accurate approximations for
posterior moments and marginal densities"). MAP and ML are the proxies of Fourment et al.
(2020), "19 dubious ways to compute the marginal likelihood of a phylogenetic tree topology":
they ignore the posterior's volume, so ML overestimates $\log p(x)$ by the log of the
likelihood's effective volume ratio and MAP is off by $\log$ of the posterior's volume
(see ``docs/laplace.md`` for the signs and sizes on the conjugate models).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from varinf.estimate import Estimate, Estimator, make_estimate
from varinf.estimators.mode import Mode, find_mode, hessian, objective_function
from varinf.potential import Potential

DETERMINISTIC = "a deterministic approximation has no Monte Carlo error"


def laplace_log_evidence(log_density: float, hess: torch.Tensor) -> float:
    r"""$\log \pi(\hat z) + \frac D2 \log 2\pi - \frac12 \log\det(-H)$.

    Args:
        log_density: $\log \pi(\hat z)$ at the mode.
        hess: ``(D, D)`` Hessian $H$ of $\log\pi$ at the mode.

    Raises:
        ValueError: when $-H$ is not positive definite (the point is not a maximum).

    Examples:
        >>> round(laplace_log_evidence(0.0, -torch.eye(2, dtype=torch.float64)), 6)
        1.837877
    """
    precision = -hess
    chol, info = torch.linalg.cholesky_ex(precision)
    if info.item() != 0:
        smallest = torch.linalg.eigvalsh((precision + precision.T) / 2).min().item()
        raise ValueError(
            "the Hessian of the log density at the mode is not negative definite (smallest "
            f"eigenvalue of -H: {smallest:.3g}): the optimiser stopped at a saddle or a flat "
            "direction. Raise num_starts or max_iter, pass init= near the mode, or check that "
            "every latent is identified"
        )
    dim = hess.shape[0]
    return log_density + 0.5 * dim * math.log(2 * math.pi) - chol.diagonal().log().sum().item()


class ModeEstimator(Estimator):
    """Base of the estimators that start at a mode of the model's log density.

    Args:
        num_starts: L-BFGS starts (prior draws, plus ``init`` if given); the best is kept.
        init: optional dict of constrained site values to start from (one more start).
        max_iter: L-BFGS iterations per start.
        gtol: L-BFGS gradient tolerance.
        seed: see `varinf.Estimator`.

    A guide, if passed, is ignored (the estimate says so in ``diagnostics["guide"]``).
    """

    requires_guide: ClassVar[bool] = False
    kind: ClassVar[str] = "approximation"
    objective: ClassVar[str] = "density"

    def __init__(
        self,
        *,
        num_starts: int = 4,
        init: dict | None = None,
        max_iter: int = 2000,
        gtol: float = 1e-5,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        if not isinstance(num_starts, int) or num_starts < 1:
            raise ValueError(f"num_starts must be a positive int, got {num_starts!r}")
        self.num_starts = num_starts
        self.init = init
        self.max_iter = max_iter
        self.gtol = gtol

    def potential(self, model: Callable, args: tuple, kwargs: dict) -> Potential:
        return Potential(model, args, kwargs)

    def mode(self, potential: Potential, objective: str | None = None) -> Mode:
        """The best of ``num_starts`` L-BFGS runs on ``objective`` (default: the class's)."""
        starts = potential.initial_points(self.num_starts)
        if self.init is not None:
            starts = torch.cat([potential.initial_points(1, init=self.init), starts])
        fn = objective_function(potential, objective or self.objective)
        return find_mode(fn, starts, max_iter=self.max_iter, gtol=self.gtol)

    def _estimate(self, model, guide, args, kwargs) -> Estimate:
        potential = self.potential(model, args, kwargs)
        with torch.enable_grad():
            value, stderr, diagnostics = self.evidence(potential)
        if guide is not None:
            diagnostics["guide"] = f"ignored: {self.name} needs no guide"
        return make_estimate(
            value, stderr, num_evaluations=potential.num_evaluations, diagnostics=diagnostics
        )

    def evidence(self, potential: Potential) -> tuple[float, float, dict[str, Any]]:
        """Value, standard error and diagnostics from the potential."""
        raise NotImplementedError


class MAP(ModeEstimator):
    r"""The unnormalised log posterior at its maximum, $\max_\theta \log p(x, \theta)$.

    A proxy, not an estimate: it omits the posterior volume $\log \int p(\theta\mid x)\,
    d\theta / p(\hat\theta \mid x)$, so it is biased low by that amount (about $\frac D2
    \log(2\pi) - \frac12 \log\det$ of the posterior precision for a near-Gaussian posterior;
    positive or negative depending on the units of $\theta$).

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> round(MAP().estimate(problem.model).value, 2)
        -27.54
    """

    name = "map"
    objective = "posterior"

    def evidence(self, potential):
        mode = self.mode(potential)
        return mode.value, math.nan, {"stderr": DETERMINISTIC, **mode.report}


class MaximumLikelihood(ModeEstimator):
    r"""The log-likelihood at its maximum, $\max_\theta \log p(x \mid \theta)$.

    A proxy: always at least the evidence's integrand, so it overestimates $\log p(x)$ by the
    Occam factor $-\log \int p(\theta) p(x\mid\theta) / p(x \mid \hat\theta)\, d\theta \ge 0$.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> MaximumLikelihood().estimate(problem.model).value > problem.log_evidence
        True
    """

    name = "ml"
    objective = "likelihood"

    def evidence(self, potential):
        mode = self.mode(potential)
        return mode.value, math.nan, {"stderr": DETERMINISTIC, **mode.report}


class Laplace(ModeEstimator):
    r"""Gaussian approximation at the mode of the density of the unconstrained latents.

    $\log \hat p(x) = \log \pi(\hat z) + \frac D2 \log 2\pi - \frac12\log\det(-H)$ with $H$
    the Hessian of $\log\pi$ at $\hat z$ (Tierney and Kadane 1986). Exact for a Gaussian
    $\pi$; on positive parameters it works on their logarithm, where the posterior is closer
    to Gaussian.

    Args:
        hessian: ``"auto"`` (autograd, checked against finite differences of the gradient;
            finite differences where autograd is wrong or unavailable), ``"autograd"``,
            ``"finite-difference"``, or a callable ``z -> (D, D)``; see
            `varinf.estimators.mode.hessian`.
        **options: see `ModeEstimator`.

    Raises:
        ValueError: when the Hessian at the mode is not negative definite.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> round(Laplace().estimate(problem.model).value - problem.log_evidence, 6)
        0.0
    """

    name = "laplace"

    def __init__(self, *, hessian: str | Callable = "auto", **options: Any) -> None:
        super().__init__(**options)
        self.hessian = hessian

    def gaussian(self, potential: Potential) -> tuple[Mode, torch.Tensor, str]:
        """The mode, the Hessian there and how it was computed."""
        mode = self.mode(potential)
        hess, how = hessian(potential.log_density, mode.z, self.hessian)
        return mode, hess, how

    def evidence(self, potential):
        mode, hess, how = self.gaussian(potential)
        value = laplace_log_evidence(mode.value, hess)
        return value, math.nan, {"stderr": DETERMINISTIC, "hessian": how, **mode.report}
