"""varinf: variational and Monte Carlo estimators of the log marginal likelihood for Pyro models.

Every estimator answers through one call, ``estimate(model, guide, *args, **kwargs)``, with an
:class:`Estimate`; :func:`compare` puts several side by side.
"""

from varinf.compare import Comparison, GradientVariance, compare, gradient_variance
from varinf.estimate import Estimate, Estimator
from varinf.estimators import (
    CPO,
    ELBO,
    GECO,
    IWAE,
    RQMCELBO,
    SUMO,
    VIMCO,
    AnnealedImportanceSampling,
    BridgeSampling,
    GeneralizedSteppingStone,
    HarmonicMean,
    ModifiedPathSampling,
    NaiveMonteCarlo,
    PathSampling,
    PointwisePredictiveDensity,
    PosteriorRun,
    PowerPosteriorRun,
    ScoreELBO,
    SequentialMonteCarlo,
    StabilizedHarmonicMean,
    SteppingStone,
)
from varinf.gradients import EstimatorELBO
from varinf.mcmc import MCMC, MCMCRun

__version__ = "0.1.0"

__all__ = [
    "AnnealedImportanceSampling",
    "BridgeSampling",
    "CPO",
    "GeneralizedSteppingStone",
    "HarmonicMean",
    "ModifiedPathSampling",
    "PathSampling",
    "PointwisePredictiveDensity",
    "PosteriorRun",
    "PowerPosteriorRun",
    "SequentialMonteCarlo",
    "StabilizedHarmonicMean",
    "SteppingStone",
    "ELBO",
    "GECO",
    "IWAE",
    "RQMCELBO",
    "SUMO",
    "VIMCO",
    "EstimatorELBO",
    "Comparison",
    "Estimate",
    "Estimator",
    "GradientVariance",
    "MCMC",
    "MCMCRun",
    "NaiveMonteCarlo",
    "ScoreELBO",
    "compare",
    "gradient_variance",
]
