r"""Subsplit Bayesian networks: support, distribution and fitting (Zhang & Matsen 2018)."""

from varinf.distributions.sbn.distribution import SubsplitBayesianNetwork
from varinf.distributions.sbn.fitting import (
    ConditionalCladeDistribution,
    fit_sbn,
    sample_frequencies,
)
from varinf.distributions.sbn.support import SBNSupport

__all__ = [
    "SubsplitBayesianNetwork",
    "SBNSupport",
    "ConditionalCladeDistribution",
    "fit_sbn",
    "sample_frequencies",
]
