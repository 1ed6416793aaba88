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


def correlated_guides(problem):
    """Gaussian guides with a full covariance, sampled through transforms that are not
    elementwise: a lower-Cholesky affine map of a standard normal, and a low-rank normal."""
    loc, scale = problem.posterior
    m = loc + 0.3 * scale
    tril = scale * torch.tensor([[1.2, 0.0], [0.5, 0.8]], dtype=torch.float64)
    factor = scale * torch.tensor([[0.9], [0.6]], dtype=torch.float64)
    diag = scale**2 * torch.tensor([0.4, 0.7], dtype=torch.float64)

    def affine_guide():
        shift = pyro.param("shift", torch.zeros(2, dtype=torch.float64))
        base = dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1)
        transform = dist.transforms.LowerCholeskyAffine(m + shift, tril)
        pyro.sample("mean", dist.TransformedDistribution(base, [transform]))

    def low_rank_guide():
        shift = pyro.param("shift", torch.zeros(2, dtype=torch.float64))
        pyro.sample("mean", dist.LowRankMultivariateNormal(m + shift, factor, diag))

    return [
        ("affine", affine_guide, m, tril @ tril.T),
        ("low-rank", low_rank_guide, m, factor @ factor.T + torch.diag(diag)),
    ]


def gaussian_elbo_and_gradient(problem, q_loc, covariance):
    r"""E_q[log p(x, mu)] = log p(x, m) - P/2 tr S (Hessian -P I), entropy d/2 log 2 pi e +
    1/2 log det S; d ELBO / dm = -m / s0^2 + sum_i (x_i - m) / s^2."""
    n, dim = problem.data.shape
    precision = problem.prior_scale**-2 + n * problem.noise_scale**-2
    log_joint = dist.Normal(torch.zeros_like(q_loc), problem.prior_scale).log_prob(q_loc).sum()
    log_joint = log_joint + dist.Normal(q_loc, problem.noise_scale).log_prob(problem.data).sum()
    entropy = 0.5 * dim * math.log(2 * math.pi * math.e) + 0.5 * torch.logdet(covariance)
    value = log_joint - 0.5 * precision * torch.trace(covariance) + entropy
    gradient = (
        -q_loc / problem.prior_scale**2 + (problem.data - q_loc).sum(0) / problem.noise_scale**2
    )
    return value.item(), gradient


@pytest.mark.parametrize("which", [0, 1], ids=["affine", "low-rank"])
def test_rqmc_through_transforms_that_are_not_elementwise_is_unbiased(which):
    """Values and gradients: the mean over 200 randomisations is within 5 standard errors of the
    closed form, and the variance is far below i.i.d.'s at the same K."""
    problem = ConjugateGaussian.example(num_data=10, dim=2)
    name, guide, q_loc, covariance = correlated_guides(problem)[which]
    value, gradient = gaussian_elbo_and_gradient(problem, q_loc, covariance)
    repeats, values, grads, iid = 200, [], [], []
    for seed in range(repeats):
        pyro.set_rng_seed(seed)
        loss = RQMCELBO(32)
        values.append(-loss.loss_and_grads(problem.model, guide))
        shift = pyro.param("shift").unconstrained()
        grads.append(-shift.grad.clone())
        shift.grad = None
        iid.append(ELBO(32, seed=seed).estimate(problem.model, guide).value)
    values, grads, iid = torch.tensor(values), torch.stack(grads), torch.tensor(iid)
    assert abs(values.mean() - value) < 5 * values.std() / math.sqrt(repeats)
    stderr = grads.std(0) / math.sqrt(repeats)
    assert ((grads.mean(0) - gradient).abs() < 5 * stderr).all(), (grads.mean(0), gradient)
    assert values.var() < iid.var() / 5


def _autoguide(kind, problem):
    from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

    loc, scale = problem.posterior
    pyro.clear_param_store()
    if kind == "AutoNormal":
        guide = AutoNormal(problem.model)
        guide()
        pyro.param("AutoNormal.locs.mean").data.copy_(loc + 0.3 * scale)
        pyro.param("AutoNormal.scales.mean").data.fill_(1.3 * scale)
        q_loc = pyro.param("AutoNormal.locs.mean").detach()
        covariance = torch.diag(pyro.param("AutoNormal.scales.mean").detach() ** 2)
        return guide, "AutoNormal.locs.mean", q_loc, covariance
    guide = AutoMultivariateNormal(problem.model)
    guide()
    pyro.param("AutoMultivariateNormal.loc").data.copy_(loc + 0.3 * scale)
    tril = scale * torch.tensor([[1.2, 0.0], [0.5, 0.8]], dtype=torch.float64)
    pyro.get_param_store()["AutoMultivariateNormal.scale_tril"] = tril  # via its constraint
    posterior = guide.get_posterior()
    return (
        guide,
        "AutoMultivariateNormal.loc",
        posterior.loc.detach(),
        posterior.covariance_matrix.detach(),
    )


def _rqmc_draws(problem, guide, param, repeats, sampler="rqmc", particles=32):
    values, grads = [], []
    for seed in range(repeats):
        pyro.set_rng_seed(seed)
        loss = ELBO(particles, sampler=sampler)
        values.append(-loss.loss_and_grads(problem.model, guide))
        unconstrained = pyro.param(param).unconstrained()
        grads.append(-unconstrained.grad.clone())
        for p in pyro.get_param_store().values():
            p.unconstrained().grad = None
    return torch.tensor(values), torch.stack(grads)


@pytest.mark.parametrize("kind", ["AutoNormal", "AutoMultivariateNormal"])
def test_rqmc_through_autoguides_is_unbiased(kind):
    """The closed-form ELBO of the Gaussian guide, and its gradient in the guide's loc."""
    problem = ConjugateGaussian.example(num_data=10, dim=2)
    guide, param, q_loc, covariance = _autoguide(kind, problem)
    value, gradient = gaussian_elbo_and_gradient(problem, q_loc, covariance)
    repeats = 150
    values, grads = _rqmc_draws(problem, guide, param, repeats)
    assert abs(values.mean() - value) < 5 * values.std() / math.sqrt(repeats)
    stderr = grads.std(0) / math.sqrt(repeats)
    assert ((grads.mean(0) - gradient).abs() < 5 * stderr).all(), (grads.mean(0), gradient)


def test_rqmc_through_a_flow_guide_agrees_with_iid():
    """No closed form for a flow: RQMC and i.i.d. estimates of the ELBO and its gradient are
    both unbiased, so their means agree within 5 combined standard errors."""
    from varinf.guides import flow_guide

    problem = ConjugateGaussian.example(num_data=10, dim=2)
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = flow_guide(problem.model, "realnvp", depth=2, hidden=8)
    guide()
    with torch.no_grad():  # away from the identity map, so the flow is not Gaussian
        for parameter in guide.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    name = next(n for n in pyro.get_param_store() if n.endswith("weight"))
    repeats = 120
    rqmc_values, rqmc_grads = _rqmc_draws(problem, guide, name, repeats)
    iid_values, iid_grads = _rqmc_draws(problem, guide, name, repeats, sampler="iid")
    combined = (rqmc_values.var() + iid_values.var()).sqrt() / math.sqrt(repeats)
    assert abs(rqmc_values.mean() - iid_values.mean()) < 5 * combined
    combined = (rqmc_grads.var(0) + iid_grads.var(0)).sqrt() / math.sqrt(repeats)
    assert ((rqmc_grads.mean(0) - iid_grads.mean(0)).abs() <= 5 * combined + 1e-12).all()
    assert rqmc_values.var() < iid_values.var()
