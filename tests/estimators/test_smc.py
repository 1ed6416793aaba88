"""Tempered SMC and AIS against the analytic evidence of Bayesian linear regression."""

import math

import pytest
import torch

from tests.estimators.exact_draws import GaussianLinearModel, GaussianTarget
from varinf.estimators.smc import tempered_smc
from varinf.estimators.smc_math import next_temperature, systematic_resample


@pytest.fixture(scope="module")
def regression():
    return GaussianLinearModel.regression()


def log_mean_exp(values):
    return float(values.logsumexp(0) - math.log(len(values)))


@pytest.mark.parametrize("threshold", [0.5, 0.0], ids=["smc", "ais"])
def test_tempered_smc_within_five_standard_errors(regression, threshold):
    target = GaussianTarget(regression, seed=1)
    generator = torch.Generator().manual_seed(1)
    result = tempered_smc(
        target, 8, 64, resample_threshold=threshold, num_moves=2, num_leapfrog=5,
        generator=generator,
    )  # fmt: skip
    groups = result.log_evidence
    relative = torch.exp(groups - groups.logsumexp(0) + math.log(len(groups)))
    stderr = float(relative.std() / math.sqrt(len(groups)))
    value = log_mean_exp(groups)
    assert abs(value - regression.log_evidence) < 5 * stderr
    assert stderr < 0.5
    assert torch.equal(result.temperatures[-1], torch.ones(8, dtype=torch.float64))
    if threshold == 0.0:
        assert sum(result.resampled) == 0
    else:
        assert sum(result.resampled) > 0
    # The final particles are posterior draws: their mean is the posterior mean.
    mean, covariance = regression.power_posterior(1.0)
    particles = result.z.reshape(-1, len(mean))
    assert ((particles.mean(0) - mean).abs() < 5 * covariance.diagonal().sqrt() / 8).all()


def test_next_temperature_hits_the_conditional_ess():
    generator = torch.Generator().manual_seed(0)
    ell = -50 * torch.rand(3, 100, generator=generator, dtype=torch.float64)
    log_w = torch.log_softmax(torch.randn(3, 100, generator=generator, dtype=torch.float64), -1)
    beta = torch.tensor([0.0, 0.2, 0.999], dtype=torch.float64)
    new = next_temperature(log_w, ell, beta, 0.8)
    scaled = (new - beta)[:, None] * ell
    cess = torch.exp(2 * (log_w + scaled).logsumexp(-1) - (log_w + 2 * scaled).logsumexp(-1))
    assert torch.allclose(cess[:2], torch.tensor([0.8, 0.8], dtype=torch.float64), atol=1e-8)
    assert new[2] == 1.0 and cess[2] >= 0.8
    assert (new > beta).all()


def test_systematic_resampling_counts():
    weights = torch.tensor([[0.5, 0.25, 0.125, 0.125]], dtype=torch.float64)
    ancestors = systematic_resample(weights.log(), torch.Generator().manual_seed(0))
    counts = torch.bincount(ancestors[0], minlength=4)
    assert counts.tolist() == [2, 1, 0, 1] or counts.tolist() == [2, 1, 1, 0]


@pytest.mark.slow
def test_sequential_monte_carlo_estimator_on_a_pyro_model():
    from models.conjugate import BayesianLinearRegression
    from varinf import AnnealedImportanceSampling, SequentialMonteCarlo

    problem = BayesianLinearRegression.diabetes(50)
    result = SequentialMonteCarlo(64, seed=3).estimate(problem.model)
    assert abs(result.value - problem.log_evidence) < 5 * result.stderr
    assert result.stderr < 0.5
    assert result.num_evaluations > 64 * 4 * result.diagnostics["num_temperatures"]
    ais = AnnealedImportanceSampling(16, num_moves=1, num_leapfrog=2, seed=3)
    assert ais.estimate(problem.model).diagnostics["resampling_steps"] == 0


def test_non_finite_likelihood_is_an_error():
    import pyro
    import pyro.distributions as dist

    from varinf import SequentialMonteCarlo

    def model():
        x = pyro.sample("x", dist.Normal(torch.tensor(0.0), 1.0))
        pyro.factor("bad", torch.where(x > 0, x * 0 - float("inf"), -x.square()))

    with pytest.raises(FloatingPointError, match="non-finite log-likelihood"):
        SequentialMonteCarlo(16, num_groups=2, seed=0).estimate(model)


def test_a_wild_leapfrog_step_is_rejected_not_raised():
    """Steps of size 1e3 send the log scale past exp's range (scale = inf, which Pyro's
    Normal refuses): the moves reject them and the particles stay where they were."""
    import pyro
    import pyro.distributions as dist

    from varinf.estimators.smc_math import hmc_move
    from varinf.potential import Potential

    def model():
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, scale), obs=torch.tensor(0.5))

    potential = Potential(model)
    ones = torch.ones(8, dtype=torch.float64)
    z = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64)[:, None]

    def density(position):
        value, grad, terms = potential.value_and_grad(position, ones)
        return value, grad, terms.log_likelihood

    generator = torch.Generator().manual_seed(0)
    moved, _, accepted = hmc_move(
        density, z, density(z), 1e3 * ones, torch.ones_like(z), 3, generator
    )
    assert not accepted.any()
    torch.testing.assert_close(moved, z)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_particles": 1}, "num_particles must be an integer >= 2"),
        ({"num_groups": 1}, "num_groups must be an integer >= 2"),
        ({"target_cess": 1.0}, r"target_cess must be in \(0, 1\)"),
        ({"resample_threshold": 2.0}, r"resample_threshold must be in \[0, 1\]"),
    ],
)
def test_bad_smc_options(options, message):
    from varinf import SequentialMonteCarlo

    with pytest.raises(ValueError, match=message):
        SequentialMonteCarlo(**options)
