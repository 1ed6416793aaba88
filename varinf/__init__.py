"""varinf: variational and Monte Carlo estimators of the log marginal likelihood for Pyro models.

Every estimator answers through one call, `estimate(model, guide, *args, **kwargs)`, with an
`Estimate`; `compare` puts several side by side.
"""

from varinf.compare import Comparison, GradientVariance, compare, gradient_variance
from varinf.estimate import Estimate, Estimator
from varinf.estimators import (
    ELBO,
    GECO,
    GLIS,
    IWAE,
    MAP,
    RQMCELBO,
    SUMO,
    VBIS,
    VIMCO,
    BetaPrimeLaplus,
    FittedELBO,
    GammaLaplus,
    ImportanceSampling,
    Laplace,
    LogNormalLaplus,
    MaximumLikelihood,
    NaiveMonteCarlo,
    NestedSampling,
    ScoreELBO,
)
from varinf.gradients import EstimatorELBO

__version__ = "0.1.0"

__all__ = [
    "ELBO",
    "GLIS",
    "GECO",
    "IWAE",
    "MAP",
    "VBIS",
    "BetaPrimeLaplus",
    "FittedELBO",
    "GammaLaplus",
    "ImportanceSampling",
    "Laplace",
    "LogNormalLaplus",
    "MaximumLikelihood",
    "NestedSampling",
    "RQMCELBO",
    "SUMO",
    "VIMCO",
    "EstimatorELBO",
    "Comparison",
    "Estimate",
    "Estimator",
    "GradientVariance",
    "NaiveMonteCarlo",
    "ScoreELBO",
    "compare",
    "gradient_variance",
]
