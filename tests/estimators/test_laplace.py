"""MAP, maximum likelihood and Laplace against analytic evidences."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from models.conjugate import BayesianLinearRegression, ConjugateGaussian, LocalGaussian
from varinf import MAP, Laplace, MaximumLikelihood
from varinf.estimators.mode import ConvergenceWarning, hessian
from varinf.potential import Potential

PROBLEMS = {
    "conjugate": ConjugateGaussian.example,
    "local": LocalGaussian.example,
    "regression": BayesianLinearRegression.diabetes,
}


@pytest.mark.parametrize("name", PROBLEMS)
def test_laplace_is_exact_on_linear_gaussian_models(name):
    problem = PROBLEMS[name]()
    result = Laplace(num_starts=2, seed=0).estimate(problem.model)
    assert abs(result.value - problem.log_evidence) < 1e-3
    assert math.isnan(result.stderr) and "deterministic" in result.diagnostics["stderr"]
    assert result.diagnostics["converged"]


def test_map_and_ml_equal_their_closed_forms():
    problem = ConjugateGaussian.example()
    loc, scale = problem.posterior
    data = problem.data
    prior = dist.Normal(torch.zeros(2, dtype=data.dtype), 1.0).log_prob(loc).sum()
    at_map = prior + dist.Normal(loc, 1.0).log_prob(data).sum()
    at_mle = dist.Normal(data.mean(0), 1.0).log_prob(data).sum()
    assert MAP(seed=0).estimate(problem.model).value == pytest.approx(at_map.item(), abs=1e-6)
    ml = MaximumLikelihood(seed=0).estimate(problem.model).value
    assert ml == pytest.approx(at_mle.item(), abs=1e-6)


@pytest.mark.parametrize("name", PROBLEMS)
def test_bias_of_the_proxies(name):
    """ML overestimates by the Occam factor; MAP misses the volume term of Laplace exactly."""
    problem = PROBLEMS[name]()
    truth = problem.log_evidence
    assert MaximumLikelihood(seed=0).estimate(problem.model).value > truth
    map_value = MAP(seed=0).estimate(problem.model).value
    # identity transforms: MAP + D/2 log 2 pi - 1/2 log det(H) is Laplace, exact here
    potential_dim = {"conjugate": 2, "local": 20, "regression": 10}[name]
    _, hess, _ = Laplace().gaussian(Potential(problem.model))
    volume = 0.5 * potential_dim * math.log(2 * math.pi) - 0.5 * torch.logdet(-hess).item()
    assert map_value + volume == pytest.approx(truth, abs=1e-4)


def test_non_convergence_is_reported_with_the_gradient_norm():
    problem = BayesianLinearRegression.diabetes()
    with pytest.warns(ConvergenceWarning, match="gradient norm"):
        result = MAP(num_starts=1, max_iter=2, seed=0).estimate(problem.model)
    assert not result.diagnostics["converged"] and result.diagnostics["grad_norm"] > 1e-3


def test_a_hessian_that_is_not_negative_definite_is_refused():
    problem = ConjugateGaussian.example()
    positive = lambda z: torch.eye(len(z), dtype=z.dtype)  # noqa: E731
    with pytest.raises(ValueError, match="not negative definite"):
        Laplace(hessian=positive).estimate(problem.model)


def test_discrete_latents_are_refused_by_name():
    def model():
        coin = pyro.sample("coin", dist.Bernoulli(torch.tensor(0.5, dtype=torch.float64)))
        pyro.sample("x", dist.Normal(coin, 1.0), obs=torch.tensor(0.3, dtype=torch.float64))

    with pytest.raises(ValueError, match="coin"):
        Laplace().estimate(model)


class _OnceDifferentiableSquare(torch.autograd.Function):
    """x**2 whose backward treats 2x as a constant: autograd's Hessian of it is zero."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x.detach())
        return x**2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x


def test_hessian_falls_back_to_finite_differences_where_autograd_is_wrong():
    def fn(z):
        return -_OnceDifferentiableSquare.apply(z).sum(-1) - (z[:, :1] * z[:, 1:]).sum(-1)

    hess, how = hessian(fn, torch.tensor([0.3, -0.2], dtype=torch.float64))
    assert how.startswith("finite-difference")
    expected = torch.tensor([[-2.0, -1.0], [-1.0, -2.0]], dtype=torch.float64)
    assert torch.allclose(hess, expected, atol=1e-6)
