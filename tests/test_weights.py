"""`varinf.weights`: the log-likelihood and the log prior apart, per particle and per datum."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from models.conjugate import LocalGaussian
from varinf.weights import trace_log_weights


def _hierarchical(data):
    """A global latent, per-datum latents, observations and a pyro.factor."""

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=data.dtype), 1.0))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=data)
        pyro.factor("penalty", -0.1 * mu**2)

    def guide():
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.3, dtype=data.dtype), 0.7))
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Normal(mu + 0.1, 0.8))

    return model, guide


def test_likelihood_and_prior_by_hand_with_a_global_latent():
    data = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    model, guide = _hierarchical(data)
    weights = trace_log_weights(model, guide, (), {}, num_particles=5)
    mu = weights.guide_trace.nodes["mu"]["value"]  # (5, 1): particles left of the data plate
    z = weights.guide_trace.nodes["z"]["value"]  # (5, 3)
    assert mu.shape == (5, 1) and z.shape == (5, 3)
    prior = dist.Normal(0.0, 1.0).log_prob(mu[:, 0]) + dist.Normal(mu, 1.0).log_prob(z).sum(-1)
    likelihood = dist.Normal(z, 0.5).log_prob(data).sum(-1) - 0.1 * mu[:, 0] ** 2
    assert weights.log_prior.shape == weights.log_likelihood.shape == (5,)  # a global latent
    torch.testing.assert_close(weights.log_prior, prior)
    torch.testing.assert_close(weights.log_likelihood, likelihood)
    assert torch.equal(weights.log_p, weights.log_likelihood + weights.log_prior)


def test_likelihood_and_prior_per_datum():
    problem = LocalGaussian.example(num_data=6)
    weights = trace_log_weights(problem.model, problem.guide, (), {}, num_particles=4)
    z = weights.guide_trace.nodes["z"]["value"]
    assert weights.datum_plate == "data"
    assert weights.log_prior.shape == weights.log_likelihood.shape == (4, 6)
    torch.testing.assert_close(weights.log_prior, dist.Normal(0.0, 1.0).log_prob(z))
    expected = dist.Normal(z, problem.noise_scale).log_prob(problem.data)
    torch.testing.assert_close(weights.log_likelihood, expected)
    assert torch.equal(weights.log_p, weights.log_likelihood + weights.log_prior)


def test_prior_sampling_splits_too():
    problem = LocalGaussian.example(num_data=3)
    weights = trace_log_weights(problem.model, None, (), {}, num_particles=7)
    torch.testing.assert_close(weights.log_prior, weights.log_q)  # the proposal is the prior
    torch.testing.assert_close(weights.log_weights, weights.log_likelihood)


@pytest.mark.parametrize("subsample_size", [2, 4])
def test_subsampled_terms_are_per_datum_and_unscaled(subsample_size):
    data = torch.arange(4.0, dtype=torch.float64)

    def model():
        with pyro.plate("data", 4, subsample_size=subsample_size) as index:
            z = pyro.sample("z", dist.Normal(torch.zeros(len(index), dtype=data.dtype), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[index])

    def guide():
        with pyro.plate("data", 4, subsample_size=subsample_size) as index:
            pyro.sample("z", dist.Normal(data[index] / 2, 0.7))

    weights = trace_log_weights(model, guide, (), {}, num_particles=3)
    z = weights.guide_trace.nodes["z"]["value"]
    observed = weights.model_trace.nodes["x"]["value"]
    assert weights.log_likelihood.shape == (3, subsample_size)
    assert weights.datum_scale == 4 / subsample_size
    torch.testing.assert_close(weights.log_likelihood, dist.Normal(z, 1.0).log_prob(observed))
    torch.testing.assert_close(weights.log_prior, dist.Normal(0.0, 1.0).log_prob(z))
