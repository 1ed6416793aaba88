"""One contract over every estimator: what estimate() returns and how it behaves."""

import math

import pyro
import pyro.optim
import pytest
import torch

from models.conjugate import LocalGaussian
from varinf import (
    ELBO,
    IWAE,
    RQMCELBO,
    SUMO,
    VIMCO,
    Estimate,
    Estimator,
    NaiveMonteCarlo,
    ScoreELBO,
)
from varinf.estimators.objective import ParticleObjective

ESTIMATORS = [
    ELBO(3),
    IWAE(7),
    IWAE(7, gradient="dreg"),
    SUMO(num_draws=3),
    VIMCO(5),
    ScoreELBO(4),
    RQMCELBO(8),
    NaiveMonteCarlo(50),
]
IDS = ["elbo", "iwae", "iwae-dreg", "sumo", "vimco", "score-elbo", "rqmc-elbo", "naive-mc"]


def run(estimator, problem, seed=None):
    estimator.seed = seed
    guide = problem.guide if estimator.requires_guide else None
    return estimator.estimate(problem.model, guide)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_contract(estimator):
    assert isinstance(estimator, Estimator)
    problem = LocalGaussian.example()
    result = run(estimator, problem, seed=11)
    assert isinstance(result, Estimate)
    assert result.estimator == estimator.name and result.kind == estimator.kind
    assert math.isfinite(result.value)
    if estimator.sampler == "rqmc":  # dependent particles: no standard error, and a reason
        assert math.isnan(result.stderr) and result.diagnostics["stderr"]
    else:
        assert math.isfinite(result.stderr) and result.stderr >= 0
    assert result.num_evaluations >= 1 and result.elapsed >= 0
    assert result.log_weights.shape[0] == result.num_evaluations
    assert result.log_weights.shape[1:] == (len(problem.data),)
    assert not result.log_weights.requires_grad
    again = run(estimator, problem, seed=11)
    assert again.value == result.value  # same seed, same number
    assert run(estimator, problem, seed=12).value != result.value
    assert estimator.name in repr(result)


@pytest.mark.parametrize(
    "estimator",
    [e for e in ESTIMATORS if isinstance(e, ParticleObjective) and e.requires_guide],
    ids=IDS[:-1],
)
def test_contract_as_svi_loss(estimator):
    problem = LocalGaussian.example()
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), estimator)
    before = pyro.param("z_loc", torch.zeros_like(problem.data)).detach().clone()
    loss = svi.step()
    assert math.isfinite(loss)
    assert not torch.equal(pyro.param("z_loc").detach(), before)


def test_seeded_estimate_leaves_global_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    problem = LocalGaussian.example()
    IWAE(5, seed=3).estimate(problem.model, problem.exact_guide)
    assert torch.equal(torch.rand(1), expected)
