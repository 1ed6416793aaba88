"""Estimators of the log marginal likelihood, one module per family."""

from varinf.estimators.elbo import ELBO, IWAE, RQMCELBO, VIMCO, ScoreELBO
from varinf.estimators.geco import GECO
from varinf.estimators.importance import GLIS, VBIS, ImportanceSampling
from varinf.estimators.laplace import MAP, Laplace, MaximumLikelihood
from varinf.estimators.laplus import BetaPrimeLaplus, GammaLaplus, LogNormalLaplus
from varinf.estimators.meanfield import FittedELBO
from varinf.estimators.naive import NaiveMonteCarlo
from varinf.estimators.nested import NestedSampling
from varinf.estimators.objective import Objective, ParticleObjective
from varinf.estimators.sumo import SUMO

__all__ = [
    "ELBO",
    "GLIS",
    "GECO",
    "IWAE",
    "MAP",
    "RQMCELBO",
    "SUMO",
    "VBIS",
    "VIMCO",
    "BetaPrimeLaplus",
    "FittedELBO",
    "GammaLaplus",
    "ImportanceSampling",
    "Laplace",
    "LogNormalLaplus",
    "MaximumLikelihood",
    "NaiveMonteCarlo",
    "NestedSampling",
    "Objective",
    "ParticleObjective",
    "ScoreELBO",
]
