"""Nested sampling within 5 reported standard errors of analytic evidences."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from models.conjugate import GammaPoisson
from varinf import NestedSampling


@pytest.mark.slow
def test_within_five_standard_errors():
    """Gamma priors go through SciPy's inverse incomplete gamma (torch has no Gamma icdf).
    (The Gaussian conjugate model is the class's doctest.)"""
    problem = GammaPoisson.example()
    result = NestedSampling(num_live=100, sample="unif", dlogz=0.5, seed=0).estimate(problem.model)
    assert 0 < result.stderr < 0.5
    assert abs(result.value - problem.log_evidence) <= 5 * result.stderr


def test_hierarchical_priors_are_refused_by_name():
    def model():
        scale = pyro.sample("scale", dist.Exponential(torch.tensor(1.0, dtype=torch.float64)))
        pyro.sample("loc", dist.Normal(torch.tensor(0.0, dtype=torch.float64), scale))

    with pytest.raises(ValueError, match="'loc'"):
        NestedSampling(num_live=10).estimate(model)
