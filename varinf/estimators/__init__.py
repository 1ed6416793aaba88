"""Estimators of the log marginal likelihood, one module per family."""

from varinf.estimators.batched_nested import BatchedNestedSampling
from varinf.estimators.bridge import BridgeSampling
from varinf.estimators.elbo import ELBO, IWAE, RQMCELBO, VIMCO, ScoreELBO
from varinf.estimators.geco import GECO
from varinf.estimators.generalized import GeneralizedSteppingStone
from varinf.estimators.glis import GLIS
from varinf.estimators.harmonic import HarmonicMean, StabilizedHarmonicMean
from varinf.estimators.importance import ImportanceSampling
from varinf.estimators.laplace import MAP, Laplace, MaximumLikelihood
from varinf.estimators.laplus import BetaPrimeLaplus, GammaLaplus, LogNormalLaplus
from varinf.estimators.meanfield import FittedELBO
from varinf.estimators.naive import NaiveMonteCarlo
from varinf.estimators.nested import NestedSampling
from varinf.estimators.objective import Objective, ParticleObjective
from varinf.estimators.predictive import CPO, PointwisePredictiveDensity
from varinf.estimators.runs import PosteriorRun, PowerPosteriorRun
from varinf.estimators.smc import AnnealedImportanceSampling, SequentialMonteCarlo
from varinf.estimators.sumo import SUMO
from varinf.estimators.thermodynamic import ModifiedPathSampling, PathSampling, SteppingStone
from varinf.estimators.vbis import VBIS

__all__ = [
    "CPO",
    "ELBO",
    "GLIS",
    "GECO",
    "IWAE",
    "MAP",
    "RQMCELBO",
    "SUMO",
    "VBIS",
    "VIMCO",
    "AnnealedImportanceSampling",
    "BridgeSampling",
    "GeneralizedSteppingStone",
    "HarmonicMean",
    "ModifiedPathSampling",
    "BetaPrimeLaplus",
    "FittedELBO",
    "GammaLaplus",
    "ImportanceSampling",
    "Laplace",
    "LogNormalLaplus",
    "MaximumLikelihood",
    "NaiveMonteCarlo",
    "NestedSampling",
    "BatchedNestedSampling",
    "Objective",
    "ParticleObjective",
    "PathSampling",
    "PointwisePredictiveDensity",
    "PosteriorRun",
    "PowerPosteriorRun",
    "ScoreELBO",
    "SequentialMonteCarlo",
    "StabilizedHarmonicMean",
    "SteppingStone",
]
