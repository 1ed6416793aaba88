"""RQMC particles: exact marginals, an unbiased ELBO, lower variance than i.i.d."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from models.conjugate import ConjugateGaussian
from varinf import ELBO, IWAE, RQMCELBO
from varinf.handlers import quantile_sample
from varinf.weights import trace_log_weights


def gaussian_guide(problem, shift=0.4, widen=1.5):
    loc, scale = problem.posterior

    def guide():
        pyro.sample("mean", dist.Normal(loc + shift * scale, widen * scale).to_event(1))

    return guide, loc + shift * scale, widen * scale


def analytic_elbo(problem, q_loc, q_scale):
    r"""log p(x, mu) is quadratic in mu with Hessian -P I, P = 1/s0^2 + n/s^2, so
    E_q[log p(x, mu)] = log p(x, m) - P/2 sum q_scale^2, plus the entropy of q."""
    n = problem.data.shape[0]
    precision = problem.prior_scale**-2 + n * problem.noise_scale**-2
    log_joint = dist.Normal(torch.zeros_like(q_loc), problem.prior_scale).log_prob(q_loc).sum()
    log_joint = log_joint + dist.Normal(q_loc, problem.noise_scale).log_prob(problem.data).sum()
    dim = q_loc.numel()
    entropy = dim * (0.5 * math.log(2 * math.pi * math.e) + math.log(q_scale))
    return (log_joint - 0.5 * precision * dim * q_scale**2 + entropy).item()


def test_rqmc_elbo_unbiased_and_lower_variance_than_iid():
    problem = ConjugateGaussian.example(num_data=10, dim=2)
    guide, q_loc, q_scale = gaussian_guide(problem)
    truth = analytic_elbo(problem, q_loc, q_scale)
    repeats = 300
    rqmc = torch.tensor(
        [RQMCELBO(64, seed=s).estimate(problem.model, guide).value for s in range(repeats)]
    )
    iid = torch.tensor(
        [ELBO(64, seed=s).estimate(problem.model, guide).value for s in range(repeats)]
    )
    for draws in (rqmc, iid):
        assert abs(draws.mean().item() - truth) < 4 * draws.std().item() / math.sqrt(repeats)
    # For a smooth 2-d integrand scrambled Sobol beats 1/K by far; 10x is a loose floor.
    assert rqmc.var() < iid.var() / 10


def test_rqmc_particles_are_exact_marginal_draws():
    """Each RQMC particle is a draw from q: the mean of the weights' normalising check holds,
    and every coordinate's empirical CDF at the quantiles matches within Sobol's stratification."""
    problem = ConjugateGaussian.example(num_data=10, dim=2)
    guide, q_loc, q_scale = gaussian_guide(problem)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        weights = trace_log_weights(problem.model, guide, (), {}, num_particles=256, sampler="rqmc")
    samples = weights.guide_trace.nodes["mean"]["value"].reshape(256, 2)
    u = torch.distributions.Normal(q_loc, q_scale).cdf(samples)
    # a scrambled Sobol set of 2^8 points has exactly one point in each 1/256 interval per axis
    for axis in range(2):
        counts = torch.histc(u[:, axis].float(), bins=256, min=0, max=1)
        assert torch.equal(counts, torch.ones(256))


def test_quantile_sample_handles_multivariate_and_transformed_sites():
    u = torch.tensor([[0.5, 0.5], [0.975, 0.5]], dtype=torch.float64)
    mvn = dist.MultivariateNormal(
        torch.zeros(2, dtype=torch.float64), scale_tril=torch.eye(2, dtype=torch.float64) * 2
    )
    mvn = mvn.expand([2])
    value = quantile_sample(mvn, u)
    assert torch.allclose(value[0], torch.zeros(2, dtype=torch.float64))
    assert value[1, 0].item() == pytest.approx(2 * 1.959964, rel=1e-5)
    lognormal = dist.LogNormal(torch.zeros(2, 1, dtype=torch.float64), 1.0)
    assert torch.allclose(
        quantile_sample(lognormal, u[:, :1]).squeeze(),
        torch.tensor([1.0, math.exp(1.959964)], dtype=torch.float64),
        rtol=1e-5,
    )


def test_rqmc_refuses_discrete_sites_by_name():
    def model():
        pyro.sample("c", dist.Bernoulli(0.5))

    def guide():
        pyro.sample("c", dist.Bernoulli(0.3))

    with pytest.raises(ValueError, match="'c'.*inverse CDF"):
        IWAE(8, sampler="rqmc").estimate(model, guide)


def test_rqmc_estimate_has_no_stderr_and_says_why():
    problem = ConjugateGaussian.example()
    guide, _, _ = gaussian_guide(problem)
    result = RQMCELBO(16, seed=0).estimate(problem.model, guide)
    assert math.isnan(result.stderr) and "repeats" in result.diagnostics["stderr"]
    with pytest.raises(ValueError, match="sampler"):
        ELBO(4, sampler="sobol")
