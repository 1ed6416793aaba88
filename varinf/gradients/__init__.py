"""Gradient estimators for expectations over discrete variables (see ``docs/gradients.md``)."""

from varinf.gradients.base import GradientEstimator, Surrogate, enumerate_expectation
from varinf.gradients.expectation import ExpectationLoss
from varinf.gradients.pyro_loss import EstimatorELBO
from varinf.gradients.relax import RELAX, mlp_control_variate
from varinf.gradients.relaxed import GumbelSoftmax, StraightThrough
from varinf.gradients.score import ScoreFunction
from varinf.gradients.sum_and_sample import SumAndSample
from varinf.gradients.unordered_set import UnorderedSet
from varinf.gradients.vimco import VIMCOEstimator

__all__ = [
    "RELAX",
    "EstimatorELBO",
    "ExpectationLoss",
    "GradientEstimator",
    "GumbelSoftmax",
    "ScoreFunction",
    "StraightThrough",
    "SumAndSample",
    "Surrogate",
    "UnorderedSet",
    "VIMCOEstimator",
    "enumerate_expectation",
    "mlp_control_variate",
]
