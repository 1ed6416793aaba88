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
