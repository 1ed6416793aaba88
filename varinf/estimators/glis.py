r"""`GLIS`: importance sampling with the gamma-Laplus proposal (Fourment et al. 2020).

The `varinf.estimators.importance` machinery with the product of the `varinf.GammaLaplus`
Gammas as proposal on the positive coordinates (and Laplace's Gaussian on the real ones).
"""

from __future__ import annotations

from typing import Any

from varinf.estimators.importance import _PotentialImportance
from varinf.estimators.laplus import GammaLaplus, LaplusProposal, site_supports


class GLIS(_PotentialImportance):
    r"""Gamma-Laplus importance sampling (Fourment et al. 2020): the proposal is the product of
    the `GammaLaplus` Gammas on the positive coordinates (and Laplace's Gaussian on the real
    ones).

    Args:
        num_particles: $K$.
        laplus: options of the `GammaLaplus` fit.
        **options: ``batch_size``, ``target_stderr``, ``seed``.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> result = GLIS(2000, seed=0).estimate(problem.model)
        >>> abs(result.value - problem.log_evidence) < 5 * result.stderr
        True
    """

    name = "glis"

    def __init__(
        self, num_particles: int = 10000, *, laplus: dict | None = None, **options: Any
    ) -> None:
        super().__init__(num_particles, **options)
        self.laplus = dict(laplus or {})

    def build_proposal(self, potential, model, args, kwargs):
        fitter = GammaLaplus(**self.laplus)
        fitter._supports = site_supports(model, args, kwargs)
        positive, constrained, curvature, real_precision, mode, how = fitter.fit(potential)
        proposal = LaplusProposal(constrained, curvature, positive, real_precision)
        return proposal, {"hessian": how, **mode.report}
