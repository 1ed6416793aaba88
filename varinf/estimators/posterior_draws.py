r"""The base of the estimators computed from one posterior run (`PosteriorRun`).

Bridge sampling, the harmonic means, CPO and the pointwise predictive density are functions of
one set of posterior draws; this base class samples them (or takes a finished run, ``run=``, to
share between estimators), checks there are enough, and packs the result with the run's cost
and diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from varinf.estimate import Estimate, Estimator, make_estimate
from varinf.estimators.runs import RHAT_THRESHOLD, PosteriorRun, _check_count


class PosteriorDrawEstimator(Estimator):
    r"""Base of the estimators computed from one posterior run (`PosteriorRun`).

    Args:
        num_chains, num_warmup, num_draws: of the batched `varinf.mcmc.MCMC` run at $\beta = 1$.
        run: a finished `PosteriorRun` to use instead of sampling (shared between estimators).
        rhat_threshold: a larger $\hat R$ is recorded in ``diagnostics["warnings"]``.
        progress: show the sampler's progress bar.
        seed: see `varinf.Estimator`.
        **mcmc_options: passed to `varinf.mcmc.MCMC`.
    """

    requires_guide = False
    min_draws = 2
    unlabelled = ("seed", "run", "progress", "rhat_threshold")

    def __init__(
        self,
        *,
        num_chains: int = 4,
        num_warmup: int = 500,
        num_draws: int = 500,
        run: PosteriorRun | None = None,
        rhat_threshold: float = RHAT_THRESHOLD,
        progress: bool = False,
        seed: int | None = None,
        **mcmc_options: Any,
    ) -> None:
        super().__init__(seed=seed)
        if run is not None and not isinstance(run, PosteriorRun):
            raise TypeError(f"run must be a PosteriorRun, got {type(run).__name__}")
        _check_count(num_draws, "num_draws", self.min_draws)
        self.num_chains, self.num_warmup, self.num_draws = num_chains, num_warmup, num_draws
        self.run, self.rhat_threshold, self.progress = run, rhat_threshold, progress
        self.mcmc_options = mcmc_options

    def sample(self, model: Callable, args: tuple = (), kwargs: dict | None = None) -> PosteriorRun:
        """The posterior run this estimator would make (to share with others)."""
        return PosteriorRun.sample(
            model, args, kwargs, num_chains=self.num_chains, num_warmup=self.num_warmup,
            num_draws=self.num_draws, progress=self.progress,
            rhat_threshold=self.rhat_threshold, **self.mcmc_options,
        )  # fmt: skip

    def _estimate(self, model, guide, args, kwargs) -> Estimate:
        run = self.run if self.run is not None else self.sample(model, args, kwargs)
        if run.z.shape[1] < self.min_draws:
            raise ValueError(
                f"{type(self).__name__} needs at least {self.min_draws} draws per chain, the "
                f"run has {run.z.shape[1]}; sample more (num_draws)"
            )
        value, stderr, extra, diagnostics = self.from_run(run)
        diagnostics = {"rhat": run.rhat, "warnings": list(run.warnings), **diagnostics}
        return make_estimate(
            value, stderr, num_evaluations=run.num_evaluations + extra, diagnostics=diagnostics
        )

    def from_run(self, run: PosteriorRun) -> tuple[Any, Any, int, dict]:
        """``(value, stderr, extra likelihood evaluations, diagnostics)`` from the draws."""
        raise NotImplementedError
