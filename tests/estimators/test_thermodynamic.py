"""Stepping stone and path sampling against analytic evidences, from exact power-posterior draws."""

import math

import pytest
import torch

from tests.estimators.exact_draws import GaussianLinearModel
from varinf.estimators.temperatures import beta_quantile_temperatures, check_temperatures
from varinf.estimators.thermodynamic import path_sampling, stepping_stone


@pytest.fixture(scope="module")
def regression():
    return GaussianLinearModel.regression()


@pytest.mark.parametrize("problem", ["regression", "normal_mean"])
def test_stepping_stone_within_five_standard_errors(problem):
    model = getattr(GaussianLinearModel, problem)()
    betas = beta_quantile_temperatures(50, alpha=0.3)
    ell = model.power_posterior_log_likelihoods(betas, num_chains=2, num_draws=200, seed=1)
    result = stepping_stone(ell, betas)
    assert abs(result.value - model.log_evidence) < 5 * result.stderr
    assert 0 < result.stderr < 1.0
    assert result.terms.shape == (50,)
    assert torch.allclose(result.terms.sum(), result.value)


def test_stepping_stone_standard_error_is_calibrated(regression):
    # Over independent repeats the reported error matches the spread of the estimates.
    betas = beta_quantile_temperatures(20, alpha=0.3)
    estimates, stderrs = [], []
    for seed in range(12):
        ell = regression.power_posterior_log_likelihoods(betas, 1, 200, seed=seed)
        result = stepping_stone(ell, betas)
        estimates.append(float(result.value))
        stderrs.append(float(result.stderr))
    spread = torch.tensor(estimates).std()
    ratio = spread / torch.tensor(stderrs).mean()
    assert 0.5 < ratio < 2.0  # the sample sd of 12 draws is within these bounds w.p. > 0.99
    mean = torch.tensor(estimates).mean()
    assert abs(mean - regression.log_evidence) < 5 * spread / math.sqrt(12)


def test_stepping_stone_accepts_draws_without_the_posterior(regression):
    betas = beta_quantile_temperatures(10)
    ell = regression.power_posterior_log_likelihoods(betas, 1, 50, seed=0)
    full, without_last = stepping_stone(ell, betas), stepping_stone(ell[:-1], betas)
    assert torch.equal(full.value, without_last.value)


def test_modified_path_sampling_within_five_standard_errors(regression):
    betas = beta_quantile_temperatures(50, alpha=0.3)
    ell = regression.power_posterior_log_likelihoods(betas, num_chains=2, num_draws=200, seed=2)
    result = path_sampling(ell, betas, correction=True)
    assert abs(result.value - regression.log_evidence) < 5 * result.stderr


def test_trapezoid_bias_and_its_correction(regression):
    # With few temperatures the plain trapezoid rule underestimates: the integrand is increasing
    # and concave (its slope Var_beta[loglik] falls with beta). Friel et al.'s correction
    # removes most of that discretisation error (here about two thirds).
    betas = beta_quantile_temperatures(8, alpha=0.3)
    ell = regression.power_posterior_log_likelihoods(betas, 4, 1000, seed=3)
    plain = path_sampling(ell, betas)
    corrected = path_sampling(ell, betas, correction=True)
    truth = regression.log_evidence
    assert truth - plain.value > 10 * plain.stderr
    assert abs(corrected.value - truth) < 0.5 * abs(plain.value - truth)


@pytest.mark.parametrize(
    ("temperatures", "message"),
    [
        ([0.0, 0.5, 1.5], r"must lie in \[0, 1\].*1.5"),
        ([-0.1, 0.5, 1.0], r"must lie in \[0, 1\]"),
        ([0.0, 0.6, 0.5, 1.0], "strictly increasing, but 0.5 follows 0.6"),
        ([0.0, 0.5, 0.5, 1.0], "strictly increasing"),
        ([0.1, 0.5, 1.0], "must start at 0"),
        ([0.0, 0.5, 0.9], "must end at 1"),
        ([1.0], "at least two"),
        ([[0.0, 1.0]], "1-D"),
        ([0.0, float("nan"), 1.0], r"must lie in \[0, 1\]"),
    ],
)
def test_bad_temperatures(temperatures, message):
    with pytest.raises(ValueError, match=message):
        check_temperatures(temperatures)
    ell = torch.zeros(max(len(temperatures), 1), 10)
    with pytest.raises(ValueError, match=message):
        stepping_stone(ell, temperatures)


def test_bad_draws():
    betas = [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="draws at 2 temperatures but temperatures has 3"):
        path_sampling(torch.zeros(2, 10), betas)
    with pytest.raises(ValueError, match="non-finite"):
        stepping_stone(torch.tensor([[0.0, float("nan")], [0.0, 1.0], [0.0, 1.0]]), betas)
    with pytest.raises(ValueError, match="at least 2 draws"):
        stepping_stone(torch.zeros(3, 1), betas)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        beta_quantile_temperatures(0)
    with pytest.raises(ValueError, match="alpha must be positive"):
        beta_quantile_temperatures(10, alpha=0.0)
