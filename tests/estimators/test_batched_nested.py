"""Batched nested sampling within 5 reported standard errors of analytic evidences; the
quadrature and its error on known integrals; bad input."""

import math

import pytest
import torch

from models.conjugate import BayesianLinearRegression, ConjugateGaussian, GammaPoisson
from varinf import BatchedNestedSampling
from varinf.estimators.batched_nested import _simulated_log_shrink, nested_log_evidence

PROBLEMS = {
    "conjugate": ConjugateGaussian.example,
    "gamma-poisson": GammaPoisson.example,  # Gamma priors: SciPy's inverse incomplete gamma
    "regression": BayesianLinearRegression.diabetes,  # 10 correlated dimensions, H = 18 nats
}


@pytest.mark.parametrize("problem_name", PROBLEMS)
@pytest.mark.parametrize("seed", [0, 1])
def test_within_five_standard_errors(problem_name, seed):
    problem = PROBLEMS[problem_name]()
    result = BatchedNestedSampling(num_live=200, seed=seed).estimate(problem.model)
    assert 0 < result.stderr < 0.5
    assert abs(result.value - problem.log_evidence) <= 5 * result.stderr
    assert result.diagnostics["stuck"] < 0.01 and 0.2 < result.diagnostics["acceptance"] < 0.45


def test_quadrature_of_a_known_likelihood_curve():
    r"""Dead points at their expected volumes $X_i = e^{-i/n}$ with $L(X) = e^{-X/a}$, removed
    in batches of K: $\log\hat Z$ converges to $\log \int_0^1 L\,dX = \log a(1 - e^{-1/a})$."""
    n, k, a = 1000, 100, 0.01
    counts = torch.arange(n, n - k, -1, dtype=torch.float64).repeat(60)  # 6000 dead points
    log_x = -torch.cumsum(1.0 / counts, 0)
    live_x = log_x[-1].exp() * torch.rand(
        n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    log_l = torch.cat([-log_x.exp() / a, -live_x / a])
    num_live = torch.cat([counts, torch.zeros(n, dtype=torch.float64)])
    log_z, information = nested_log_evidence(log_l, num_live)
    exact = math.log(a * -math.expm1(-1 / a))
    assert log_z.item() == pytest.approx(exact, abs=2e-3)
    # The information of this curve: H = -log(a) - 1 (for a << 1).
    assert information.item() == pytest.approx(-math.log(a) - 1, abs=0.02)


def test_simulated_error_is_skillings_sqrt_h_over_n():
    """The spread of log Z over simulated shrinkages matches sqrt(H/n) (Skilling 2006)."""
    n, k, a = 200, 50, 1e-3
    counts = torch.arange(n, n - k, -1, dtype=torch.float64).repeat(40)
    log_x = -torch.cumsum(1.0 / counts, 0)
    log_l = torch.cat([-log_x.exp() / a, torch.zeros(n, dtype=torch.float64)])
    num_live = torch.cat([counts, torch.zeros(n, dtype=torch.float64)])
    _, information = nested_log_evidence(log_l, num_live)
    torch.manual_seed(0)
    spread = nested_log_evidence(log_l, num_live, _simulated_log_shrink(num_live, 2000))[0].std()
    assert spread.item() == pytest.approx(math.sqrt(information.item() / n), rel=0.2)


def test_a_run_stopped_early_says_so():
    problem = ConjugateGaussian.example()
    result = BatchedNestedSampling(num_live=40, max_iterations=2, seed=0).estimate(problem.model)
    assert "max_iterations=2" in result.diagnostics["warnings"][0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_live": 3}, "num_live"),
        ({"num_live": 10, "num_replace": 10}, "num_replace"),
        ({"walks": 0}, "walks"),
        ({"dlogz": 0.0}, "dlogz"),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        BatchedNestedSampling(**options)
