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


# ---- the estimators, on Pyro models through the batched MCMC ------------------------------


# The conjugate Gaussian (2 latents, 10 data) keeps HMC trajectories short; the estimators' math
# is tested on Bayesian linear regression above, with exact draws.


@pytest.fixture(scope="module")
def shared_run():
    from models.conjugate import ConjugateGaussian
    from varinf import PowerPosteriorRun

    problem = ConjugateGaussian.example()
    run = PowerPosteriorRun.sample(
        problem.model, temperatures=beta_quantile_temperatures(20), num_replicates=2,
        num_warmup=60, num_draws=100, seed=0,
    )  # fmt: skip
    return problem, run


def test_one_run_feeds_every_power_posterior_method(shared_run):
    from varinf import ModifiedPathSampling, PathSampling, SteppingStone

    problem, run = shared_run
    assert run.log_likelihood.shape == (21, 2, 100)
    for cls in (SteppingStone, ModifiedPathSampling):
        result = cls(run=run).estimate(problem.model)
        assert abs(result.value - problem.log_evidence) < 5 * result.stderr, cls.name
        assert result.num_evaluations == run.num_evaluations
        assert len(result.diagnostics["rhat"]) == len(result.diagnostics["ess"]) == 21
        assert max(result.diagnostics["rhat"]) < 1.1
        assert math.isfinite(result.diagnostics["stderr_replicates"])
    plain = PathSampling(run=run).estimate(problem.model)
    assert plain.value < problem.log_evidence  # the trapezoid's bias, which the correction fixes
    assert plain.diagnostics["discretisation"] > 0


def test_generalized_stepping_stone_on_a_pyro_model(shared_run):
    from varinf import GeneralizedSteppingStone, SteppingStone

    problem, run = shared_run
    gss = GeneralizedSteppingStone(beta_quantile_temperatures(4, alpha=1.0), num_warmup=60,
                                   num_draws=100, num_replicates=1, seed=1)  # fmt: skip
    result = gss.estimate(problem.model)
    assert abs(result.value - problem.log_evidence) < 5 * result.stderr
    # A fitted reference: 5 stones give a smaller error than 21 from the prior.
    assert result.stderr < SteppingStone(run=run).estimate(problem.model).stderr / 3
    assert result.diagnostics["reference_evaluations"] > 0


def test_high_rhat_is_recorded():
    from varinf import PowerPosteriorRun, SteppingStone

    generator = torch.Generator().manual_seed(0)
    ell = torch.randn(3, 2, 50, generator=generator, dtype=torch.float64)
    ell[:, 1] += 5.0  # the replicate chains disagree
    run = PowerPosteriorRun.from_log_likelihoods([0.0, 0.5, 1.0], ell)
    result = SteppingStone(run=run).estimate(lambda: None)
    assert "R-hat above 1.05 at 3 temperature(s)" in result.diagnostics["warnings"][0]


def test_power_posterior_run_rejects_bad_draws():
    from varinf import PowerPosteriorRun, SteppingStone

    bad = torch.zeros(3, 2, 10, dtype=torch.float64)
    bad[1, 0, 3] = -float("inf")
    with pytest.raises(FloatingPointError, match=r"non-finite log-likelihood \(at temperature"):
        PowerPosteriorRun.from_log_likelihoods([0.0, 0.5, 1.0], bad)
    with pytest.raises(ValueError, match="temperatures"):
        PowerPosteriorRun.from_log_likelihoods([0.0, 0.5], torch.zeros(3, 2, 10))
    with pytest.raises(TypeError, match="run must be a PowerPosteriorRun"):
        SteppingStone(run=torch.zeros(3))
    with pytest.raises(ValueError, match="must end at 1"):
        SteppingStone([0.0, 0.5])
    with pytest.raises(ValueError, match="num_draws must be an integer >= 4"):
        PowerPosteriorRun.sample(lambda: None, num_draws=2)


def test_power_posterior_runs_cap_trajectories_unless_told():
    """Their estimators use the log-likelihood only (see `POWER_MAX_STEPS`); a user's
    ``max_steps`` wins."""
    from models.conjugate import ConjugateGaussian
    from varinf import PowerPosteriorRun
    from varinf.estimators.runs import POWER_MAX_STEPS
    from varinf.potential import Potential

    potential = Potential(ConjugateGaussian.example().model)
    assert PowerPosteriorRun.sampler(potential, num_draws=10).max_steps == POWER_MAX_STEPS == 12
    assert PowerPosteriorRun.sampler(potential, num_draws=10, max_steps=50).max_steps == 50
