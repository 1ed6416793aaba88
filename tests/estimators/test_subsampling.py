"""Subsampled plates give honest numbers: bounds that hold (or a refusal naming the plate), and
standard errors that include the minibatch's noise (or say they are conditional on it)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from models.conjugate import LocalGaussian
from varinf import ELBO, IWAE, SUMO, NaiveMonteCarlo

DATA = LocalGaussian.example(num_data=200, seed=3).data


def local_model(subsample_size):
    def model():
        with pyro.plate("data", len(DATA), subsample_size=subsample_size) as index:
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=DATA.dtype), 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=DATA[index])

    def exact_guide():
        shrink = 1 / 1.25
        with pyro.plate("data", len(DATA), subsample_size=subsample_size) as index:
            pyro.sample("z", dist.Normal(shrink * DATA[index], math.sqrt(shrink) * 0.5))

    return model, exact_guide


def global_model():
    def model():
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=DATA.dtype), 1.0))
        with pyro.plate("data", len(DATA), subsample_size=20) as index:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=DATA[index])

    def guide():
        pyro.sample("mu", dist.Normal(DATA.mean(), 0.1))

    return model, guide


@pytest.mark.parametrize(
    "estimator", [IWAE(10), SUMO(3), IWAE(4, gradient="vimco")], ids=["iwae", "sumo", "vimco"]
)
def test_multi_sample_bounds_refuse_a_subsampled_plate_coupled_by_a_global_latent(estimator):
    model, guide = global_model()
    with pytest.raises(ValueError, match=r"subsampled plate\(s\) \['data'\]"):
        estimator.estimate(model, guide)
    with pytest.raises(ValueError, match="subsampled plate"):
        estimator.loss(model, guide)


def test_naive_monte_carlo_refuses_it_too():
    model, _ = global_model()
    with pytest.raises(ValueError, match="subsampled plate"):
        NaiveMonteCarlo(10).estimate(model)


def test_elbo_under_global_subsampling_says_its_error_is_conditional():
    model, guide = global_model()
    result = ELBO(10, seed=0).estimate(model, guide)
    assert "conditional on the minibatch of plate(s) ['data']" in result.diagnostics["stderr"]


@pytest.mark.parametrize("make", [IWAE, ELBO], ids=["iwae", "elbo"])
def test_per_datum_standard_error_includes_the_subsampling_noise(make):
    """With the exact posterior as guide every per-datum weight is p(x_i): all the noise is the
    minibatch's. Across 40 minibatches the spread matches the reported error, and the mean is
    within 5 standard errors of log p(x)."""
    model, guide = local_model(subsample_size=20)
    results = [make(5, seed=seed).estimate(model, guide) for seed in range(40)]
    values = torch.tensor([r.value for r in results])
    reported = torch.tensor([r.stderr for r in results]).median().item()
    assert 0.6 < values.std().item() / reported < 1.6, (values.std(), reported)
    truth = LocalGaussian(DATA).log_evidence
    assert abs(values.mean().item() - truth) < 5 * values.std().item() / math.sqrt(len(values))
    assert results[0].diagnostics["stderr_subsampling"] > 0


def test_looped_particles_share_one_minibatch():
    """vectorize_particles=False replays the first particle's minibatch for the others: with the
    exact guide every particle's per-datum weight is the same log p(x_i)."""
    model, guide = local_model(subsample_size=10)
    result = IWAE(6, vectorize_particles=False, seed=0).estimate(model, guide)
    log_w = result.log_weights
    assert log_w.shape == (6, 10)
    torch.testing.assert_close(log_w, log_w[:1].expand(6, 10))
