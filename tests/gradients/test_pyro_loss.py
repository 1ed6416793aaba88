"""Score-type estimators as Pyro losses (EstimatorELBO): unbiased for the exact ELBO gradient by
enumeration, exact at full support, SVI to the exact posterior, and refusals."""

import importlib.util
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI

from varinf.gradients import (
    EstimatorELBO,
    GumbelSoftmax,
    ScoreFunction,
    SumAndSample,
    UnorderedSet,
)

_spec = importlib.util.spec_from_file_location(
    "vimco_tests", Path(__file__).resolve().parent / "test_vimco.py"
)
problem = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(problem)
START = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)


def exact_elbo_gradient(logits):
    return problem.exact_objective_gradient(logits, 1, multi_sample=False)


def gradients(loss, repeats):
    pyro.param("logits", START.clone())
    param = pyro.param("logits").unconstrained()
    pyro.set_rng_seed(0)
    draws = []
    for _ in range(repeats):
        loss.loss_and_grads(problem.model, problem.guide, problem.DATA)
        draws.append(param.grad.clone())
        param.grad = None
    return torch.stack(draws)


@pytest.mark.slow
@pytest.mark.parametrize(
    "estimator",
    [ScoreFunction("leave-one-out"), SumAndSample(), UnorderedSet()],
    ids=lambda e: e.name,
)
def test_gradient_unbiased(estimator):
    grads = gradients(EstimatorELBO(estimator, 2), 2000)
    truth = exact_elbo_gradient(START)
    stderr = grads.std(0) / math.sqrt(len(grads))
    assert ((grads.mean(0) - truth).abs() < 3 * stderr).all(), (grads.mean(0), truth, stderr)


@pytest.mark.parametrize("estimator", [SumAndSample(), UnorderedSet()], ids=lambda e: e.name)
def test_full_support_is_the_exact_elbo(estimator):
    grads = gradients(EstimatorELBO(estimator, 3), 3)
    truth = exact_elbo_gradient(START)
    torch.testing.assert_close(grads, truth.expand(3, 3))
    log_q = START - START.logsumexp(0)
    elbo = (log_q.exp() * (problem.log_joint() - log_q)).sum()
    loss = EstimatorELBO(estimator, 3).loss(problem.model, problem.guide, problem.DATA)
    assert -loss == pytest.approx(elbo.item(), abs=1e-10)


def test_svi_with_unordered_set_recovers_exact_posterior():
    pyro.set_rng_seed(1)
    svi = SVI(
        problem.model,
        problem.guide,
        pyro.optim.Adam({"lr": 0.05}),
        loss=EstimatorELBO(UnorderedSet(), 2),
    )
    averaged = torch.zeros(3, dtype=torch.float64)
    for step in range(600):
        svi.step(problem.DATA)
        if step >= 400:
            averaged += torch.softmax(pyro.param("logits").detach(), 0) / 200
    posterior = torch.softmax(problem.log_joint(), 0)
    assert (averaged - posterior).abs().max() < 0.02, (averaged, posterior)


def test_refusals():
    with pytest.raises(ValueError, match="relaxed"):
        EstimatorELBO(GumbelSoftmax(), 2)
    with pytest.raises(TypeError, match="estimator"):
        EstimatorELBO("score", 2)

    def continuous_guide(data):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="exactly one latent site"):
        EstimatorELBO(UnorderedSet(), 2).loss(problem.model, continuous_guide, problem.DATA)
