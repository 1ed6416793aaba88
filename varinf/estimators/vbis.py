r"""`VBIS`: importance sampling with a proposal fitted by maximising the ELBO (Fourment et al.
2020): a mean-field Gaussian, a normalizing flow, or a Pyro guide trained by SVI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from varinf.estimate import Estimate, Estimator, make_estimate
from varinf.estimators.importance import ImportanceSampling, _GuideImportance, _PotentialImportance
from varinf.estimators.meanfield import fit_mean_field
from varinf.weights import guess_max_plate_nesting


class VBIS(_PotentialImportance):
    r"""Variational-Bayes importance sampling (Fourment et al. 2020): importance sampling with a
    proposal fitted by maximising the ELBO.

    ``guide=`` chooses the proposal:

    - ``"mean-field"`` (default): a mean-field Gaussian over the unconstrained latents (the
      family of Pyro's ``AutoDiagonalNormal``), `fit_mean_field`, as in the paper;
    - ``"flow"``: a normalizing flow on top of a full-rank Gaussian, started at the Laplace fit
      (`varinf.estimators.flowfit.fit_flow`): it can follow skewed and correlated posteriors
      that a mean-field Gaussian cannot, at the price of a longer fit;
    - a Pyro guide (e.g. `varinf.guides.flow_guide`, or an autoguide): trained here by Pyro's
      SVI on ``Trace_ELBO``, then its draws are the proposal (weights from `varinf.weights`).

    Args:
        num_particles: $K$.
        guide: ``"mean-field"``, ``"flow"`` or a Pyro guide, see above.
        fit: options of the fit: of `fit_mean_field` (``num_steps``, ``num_particles``,
            ``lr``), of `fit_flow` (also ``flow``, ``depth``, ``hidden``, ``laplace``), or for
            a Pyro guide ``num_steps`` (1000), ``num_particles`` (8) and ``lr`` (0.01).
        **options: ``batch_size``, ``target_stderr``, ``seed``.

    Diagnostics: as `ImportanceSampling`, plus ``elbo_trace`` and ``fit`` (the proposal).

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> result = VBIS(2000, seed=0).estimate(problem.model)
        >>> abs(result.value - problem.log_evidence) < 5 * result.stderr
        True
        >>> flow = VBIS(2000, guide="flow", fit={"num_steps": 50}, seed=0)
        >>> result = flow.estimate(problem.model)
        >>> abs(result.value - problem.log_evidence) < 5 * result.stderr
        True
    """

    name = "vbis"

    def __init__(
        self,
        num_particles: int = 10000,
        *,
        guide: str | Callable = "mean-field",
        fit: dict | None = None,
        **options: Any,
    ) -> None:
        super().__init__(num_particles, **options)
        if not (
            guide in ("mean-field", "flow") or (callable(guide) and not isinstance(guide, str))
        ):
            raise ValueError(f"guide must be 'mean-field', 'flow' or a Pyro guide, got {guide!r}")
        self.guide, self.fit = guide, dict(fit or {})

    def estimate(self, model, guide=None, *args, **kwargs) -> Estimate:
        if callable(self.guide) and not isinstance(self.guide, str):
            return _TrainedGuideImportance(self).estimate(model, None, *args, **kwargs)
        return super().estimate(model, guide, *args, **kwargs)

    def build_proposal(self, potential, model, args, kwargs):
        if self.guide == "flow":
            from varinf.estimators.flowfit import fit_flow

            return fit_flow(potential, **self.fit)
        guide, report = fit_mean_field(potential, **self.fit)
        return guide, {**report, "fit": "mean-field"}


class _TrainedGuideImportance(Estimator):
    """`VBIS` with a Pyro guide: SVI on ``Trace_ELBO``, then importance sampling with it."""

    name = "vbis"
    kind = "consistent"
    requires_guide: ClassVar[bool] = False

    def __init__(self, owner: VBIS) -> None:
        super().__init__(seed=owner.seed)
        self.owner = owner

    def _estimate(self, model, guide, args, kwargs) -> Estimate:
        import pyro
        from pyro.infer import SVI, Trace_ELBO

        owner, guide = self.owner, self.owner.guide
        options = {"num_steps": 1000, "num_particles": 8, "lr": 0.01, **owner.fit}
        unknown = set(options) - {"num_steps", "num_particles", "lr"}
        if unknown:
            raise ValueError(f"fit: unknown options {sorted(unknown)} for a Pyro guide")
        nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        loss = Trace_ELBO(num_particles=options["num_particles"], vectorize_particles=True,
                          max_plate_nesting=nesting)  # fmt: skip
        svi = SVI(model, guide, pyro.optim.Adam({"lr": options["lr"]}), loss)
        trace, every = [], max(1, options["num_steps"] // 10)
        for step in range(options["num_steps"]):
            value = -svi.step(*args, **kwargs)
            if step % every == 0 or step == options["num_steps"] - 1:
                trace.append(value)
        sampler = ImportanceSampling(owner.num_particles, batch_size=owner.batch_size)
        result = _GuideImportance(sampler).estimate(model, guide, *args, **kwargs)
        fit_evaluations = options["num_steps"] * options["num_particles"]
        diagnostics = {**result.diagnostics, "elbo_trace": trace, "fit": "Pyro guide (SVI)",
                       "fit_evaluations": fit_evaluations}  # fmt: skip
        return make_estimate(result.value, result.stderr, log_weights=result.log_weights,
                             num_evaluations=fit_evaluations + result.num_evaluations,
                             diagnostics=diagnostics)  # fmt: skip
