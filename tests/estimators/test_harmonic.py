"""The harmonic mean: right where 1/likelihood has finite variance, badly wrong where not."""

import math

import torch

from tests.estimators.exact_draws import GaussianLinearModel
from varinf.estimators.harmonic import harmonic_mean, stabilized_harmonic_mean


def posterior_log_likelihoods(model, num_draws, seed):
    generator = torch.Generator().manual_seed(seed)
    draws = model.sample(1.0, (2, num_draws), generator)
    return model.log_likelihood_per_datum(draws).sum(-1)


def test_harmonic_mean_is_consistent_when_its_variance_is_finite():
    # One datum of precision 0.5 under a N(0, 1) prior: E_post[1/L^2] < inf since the prior's
    # precision exceeds the likelihood's, so the central limit theorem holds.
    model = GaussianLinearModel.normal_mean(num_data=1)
    model.noise_precision = 0.5
    ell = posterior_log_likelihoods(model, 2000, seed=0)
    result = harmonic_mean(ell)
    assert abs(result.value - model.log_evidence) < 5 * result.stderr
    assert result.stderr < 0.05


def test_stabilized_harmonic_mean_solves_its_equation():
    # Newton and Raftery's eq. 13 (imagined prior draws) is an approximation at fixed delta,
    # exact as delta -> 0 where it is the harmonic mean; check the fixed point itself.
    model = GaussianLinearModel.normal_mean(num_data=5)
    ell = posterior_log_likelihoods(model, 500, seed=1).flatten()
    delta, n = 0.2, len(ell)
    p = stabilized_harmonic_mean(ell, delta).value.exp()
    likelihood = ell.exp()
    mix = delta * p + (1 - delta) * likelihood
    numerator = delta * n / (1 - delta) + (likelihood / mix).sum()
    denominator = delta * n / ((1 - delta) * p) + (1 / mix).sum()
    assert torch.allclose(numerator / denominator, p, rtol=1e-8)
    tiny = stabilized_harmonic_mean(ell, 1e-12).value
    assert torch.allclose(tiny, harmonic_mean(ell).value, atol=1e-8)


def test_harmonic_mean_fails_on_regression():
    # 100 data, 10 weights: the posterior is far narrower than the prior and 1/L has infinite
    # variance. Every repeat overestimates log p(x) by several nats, the reported standard
    # error is far below the actual error, and 16x more draws barely help (heavy tails: the
    # error shrinks much slower than 1/sqrt(S)).
    model = GaussianLinearModel.regression()
    truth = model.log_evidence
    errors, z_scores = [], []
    for seed in range(10):
        result = harmonic_mean(posterior_log_likelihoods(model, 250, seed))
        errors.append(float(result.value) - truth)
        z_scores.append(errors[-1] / float(result.stderr))
    assert min(errors) > 2.0  # always too high, by nats
    assert min(z_scores) > 5  # and "significantly" so by its own standard error
    more = harmonic_mean(posterior_log_likelihoods(model, 4000, seed=99))
    assert float(more.value) - truth > 0.5 * min(errors)  # 16x the draws, not 4x less error
    stabilized = stabilized_harmonic_mean(posterior_log_likelihoods(model, 4000, seed=99))
    assert float(stabilized.value) - truth > 2.0  # stabilizing does not rescue it here
    assert math.isfinite(float(stabilized.stderr))
