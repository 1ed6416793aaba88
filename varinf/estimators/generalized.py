r"""`GeneralizedSteppingStone` (Fan et al. 2011): stepping stone along the path from a reference
distribution fitted to a posterior run (`varinf.estimators.reference.ReferencePath`) to the
posterior; the identities are `varinf.estimators.thermodynamic`'s.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from varinf.estimate import Estimate
from varinf.estimators.bridge import fit_proposal
from varinf.estimators.reference import ReferencePath
from varinf.estimators.runs import PosteriorRun, PowerPosteriorRun
from varinf.estimators.thermodynamic import SteppingStone


class GeneralizedSteppingStone(SteppingStone):
    r"""Generalized stepping stone (Fan et al. 2011): stepping stone along the path from a
    reference distribution, fitted to a posterior run, to the posterior (`ReferencePath`).

    Costs one posterior run (or none: pass ``posterior_run``, e.g. the one bridge sampling
    uses) plus one batched run along the path, and needs far fewer or shorter stones than
    `SteppingStone` for the same error.

    Args:
        temperatures, num_steps, alpha: as `SteppingStone`, along the reference path.
        posterior_run: a `PosteriorRun` to fit the reference to; default: sample one with
            ``num_posterior_chains`` chains of ``num_warmup`` + ``num_draws``.
        run: a finished `PowerPosteriorRun` along this estimator's reference path.
        **options: as `SteppingStone`.

    Diagnostics: as `SteppingStone`, with ``reference_evaluations``, the posterior run's cost
    (included in ``num_evaluations`` unless the run was passed in).

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> gss = GeneralizedSteppingStone(num_steps=3, num_warmup=50, num_draws=50, seed=0)
        >>> result = gss.estimate(problem.model)
        >>> bool(abs(result.value - problem.log_evidence) < 5 * result.stderr)
        True
    """

    name = "generalized-stepping-stone"

    def __init__(
        self,
        temperatures=None,
        *,
        posterior_run: PosteriorRun | None = None,
        num_posterior_chains: int = 4,
        **options: Any,
    ) -> None:
        super().__init__(temperatures, **options)
        if posterior_run is not None and not isinstance(posterior_run, PosteriorRun):
            raise TypeError(f"posterior_run must be a PosteriorRun, got {type(posterior_run)}")
        self.posterior_run, self.num_posterior_chains = posterior_run, num_posterior_chains

    def _estimate(self, model, guide, args, kwargs) -> Estimate:
        posterior, own_cost = self.posterior_run, 0
        if posterior is None and self.run is None:
            posterior = PosteriorRun.sample(
                model, args, kwargs, num_chains=self.num_posterior_chains,
                num_warmup=self.num_warmup, num_draws=self.num_draws, progress=self.progress,
                **self.mcmc_options,
            )  # fmt: skip
            own_cost = posterior.num_evaluations
        saved = self.run
        if saved is None:
            reference = fit_proposal(posterior.z.reshape(-1, posterior.z.shape[-1]))
            path = ReferencePath(posterior.potential, reference)
            self.run = PowerPosteriorRun.sample(
                model, potential=path, temperatures=self.temperatures,
                num_replicates=self.num_replicates, num_warmup=self.num_warmup,
                num_draws=self.num_draws, progress=self.progress,
                rhat_threshold=self.rhat_threshold, **self.mcmc_options,
            )  # fmt: skip
        try:
            estimate = super()._estimate(model, guide, args, kwargs)
        finally:
            self.run = saved
        diagnostics = {**estimate.diagnostics, "reference_evaluations": own_cost}
        cost = estimate.num_evaluations + own_cost
        return replace(estimate, num_evaluations=cost, diagnostics=diagnostics)
