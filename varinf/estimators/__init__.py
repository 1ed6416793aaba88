"""Estimators of the log marginal likelihood, one module per family."""

from varinf.estimators.elbo import ELBO, IWAE, RQMCELBO, VIMCO, ScoreELBO
from varinf.estimators.geco import GECO
from varinf.estimators.naive import NaiveMonteCarlo
from varinf.estimators.objective import Objective, ParticleObjective
from varinf.estimators.sumo import SUMO

__all__ = [
    "ELBO",
    "GECO",
    "IWAE",
    "RQMCELBO",
    "SUMO",
    "VIMCO",
    "NaiveMonteCarlo",
    "Objective",
    "ParticleObjective",
    "ScoreELBO",
]
