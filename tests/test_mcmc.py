"""Batched HMC (`varinf.mcmc`) against analytic posteriors, power posteriors, priors and Pyro's
NUTS; resume, interruption and bad input.

Tolerances: 5 Monte Carlo standard errors, from ArviZ's ESS, with fixed seeds.
"""

from __future__ import annotations

import warnings
from collections import namedtuple

import pytest
import torch

from models.conjugate import BayesianLinearRegression, ConjugateGaussian
from varinf.mcmc import MCMC, MCMCRun
from varinf.potential import Potential

Terms = namedtuple("Terms", "log_prior log_likelihood log_likelihood_per_datum")


class LinearGaussian:
    r"""$z \sim N(0, \alpha^{-1} I)$, $y \mid z \sim N(Xz, \lambda^{-1} I)$ in closed form (a cheap
    potential, so statistical tests can afford many draws); the power posterior at $\beta$ is
    $N(m_\beta, S_\beta)$, $S_\beta^{-1} = \alpha I + \beta\lambda X^\top X$,
    $m_\beta = \beta\lambda S_\beta X^\top y$."""

    def __init__(self, features, targets, prior_precision, noise_precision):
        self.x, self.y = features, targets
        self.alpha, self.lam = prior_precision, noise_precision
        self.dim = features.shape[1]
        self.num_evaluations = 0
        self.fail_after = None  # raise KeyboardInterrupt at this call (interruption tests)

    def posterior(self, beta: float = 1.0):
        eye = torch.eye(self.dim, dtype=self.x.dtype)
        cov = torch.linalg.inv(self.alpha * eye + beta * self.lam * self.x.T @ self.x)
        return beta * self.lam * cov @ self.x.T @ self.y, cov

    def terms(self, z):
        residual = self.y - z @ self.x.T
        log_prior = -0.5 * self.alpha * z.square().sum(-1)
        log_lik = -0.5 * self.lam * residual.square().sum(-1)
        return Terms(log_prior, log_lik, None)

    def value_and_grad(self, z, beta=1.0):
        self.num_evaluations += z.shape[0]
        if self.fail_after is not None and self.num_evaluations > self.fail_after:
            raise KeyboardInterrupt
        beta = torch.as_tensor(beta, dtype=z.dtype).reshape(-1, 1)
        terms = self.terms(z)
        residual = self.y - z @ self.x.T
        grad = -self.alpha * z + beta * self.lam * residual @ self.x
        return terms.log_prior + beta[:, 0] * terms.log_likelihood, grad, terms

    def initial_points(self, num_chains, init=None):
        return torch.randn(num_chains, self.dim, dtype=self.x.dtype) / self.alpha**0.5

    def constrain(self, z):
        return {"z": z}


def small_regression(num_features: int = 3) -> BayesianLinearRegression:
    """The diabetes regression on its first few features (less correlated: cheaper to sample)."""
    problem = BayesianLinearRegression.diabetes()
    return BayesianLinearRegression(problem.features[:, :num_features], problem.targets)


def blr_target(num_features: int = 10) -> LinearGaussian:
    problem = small_regression(num_features)
    return LinearGaussian(
        problem.features, problem.targets, problem.prior_precision, problem.noise_precision
    )


def assert_moments(run: MCMCRun, chains, mean, variance, values=None):
    """Means and variances of the chains' draws within 5 MCSE (ArviZ) of the truth."""
    z = run.z if values is None else values
    sub = MCMCRun(**{**vars(run), "z": z[chains], "beta": run.beta[chains]})
    draws = sub.z.reshape(-1, z.shape[-1])
    mcse_mean = sub.mcse()[0]
    centred = (sub.z - mean).square()
    mcse_var = sub.mcse(centred)[0]
    assert ((draws.mean(0) - mean).abs() < 5 * mcse_mean).all(), (draws.mean(0), mean, mcse_mean)
    second = centred.reshape(-1, z.shape[-1]).mean(0)
    assert ((second - variance).abs() < 5 * mcse_var).all(), (second, variance, mcse_var)


@pytest.mark.slow
def test_linear_regression_posterior_and_pyro_nuts():
    target = blr_target()
    mean, cov = target.posterior()
    run = MCMC(target, num_chains=16, num_warmup=200, num_draws=200, seed=1, progress=False).run()
    assert run.z.shape == (16, 200, target.dim)
    assert run.rhat().max() < 1.02  # 16 chains of 200 draws: R-hat's own noise is ~0.005
    assert_moments(run, slice(None), mean, cov.diagonal())
    nuts = MCMC(
        target, num_chains=2, num_warmup=100, num_draws=150, kernel="nuts", seed=2, progress=False
    ).run()
    assert nuts.z.shape == (2, 150, target.dim)
    assert_moments(nuts, slice(None), mean, cov.diagonal())
    # the two samplers agree within their combined standard errors
    gap = run.z.mean((0, 1)) - nuts.z.mean((0, 1))
    combined = (run.mcse()[0].square() + nuts.mcse()[0].square()).sqrt()
    assert (gap.abs() < 5 * combined).all()


@pytest.mark.slow
def test_power_posteriors_in_one_batched_run():
    target = blr_target()
    temperatures = torch.tensor([0.0, 0.01, 0.3, 1.0], dtype=torch.float64)
    beta = temperatures.repeat_interleave(4)
    calls = []
    original = target.value_and_grad

    def counted(z, b=1.0):
        calls.append(z.shape[0])
        return original(z, b)

    target.value_and_grad = counted
    run = MCMC(target, num_chains=16, num_warmup=200, num_draws=300, beta=beta, seed=3,
               progress=False).run()  # fmt: skip
    assert torch.equal(run.temperatures, temperatures)
    assert max(calls) == 16  # every chain of every temperature in one call
    for t in temperatures:
        mean, cov = target.posterior(float(t))
        assert_moments(run, run.beta == t, mean, cov.diagonal())
    tempered = run.log_prior + run.beta[:, None] * run.log_likelihood
    assert torch.allclose(run.log_density, tempered)
    # cross-chain adaptation: one step size, hence one trajectory length, per temperature
    steps = run.diagnostics["n_steps"]
    for t in temperatures:
        group = run.beta == t
        assert torch.equal(run.step_size[group], run.step_size[group][:1].expand(4))
        assert torch.equal(steps[group], steps[group][:1].expand(4, -1))
    assert len(torch.unique(run.step_size)) == len(temperatures)


@pytest.mark.parametrize("problem", [ConjugateGaussian.example(), small_regression(3)])
def test_conjugate_models_through_the_potential(problem):
    potential = Potential(problem.model)
    mean, spread = problem.posterior
    variance = spread.diagonal() if torch.is_tensor(spread) else torch.full_like(mean, spread**2)
    run = MCMC(potential, num_chains=8, num_warmup=150, num_draws=150, seed=4, progress=False).run()
    name = "mean" if isinstance(problem, ConjugateGaussian) else "weights"
    assert run.samples[name].shape == (8, 150, len(mean))
    assert_moments(run, slice(None), mean, variance)


@pytest.mark.slow
def test_prior_moments_of_ds1_branch_lengths():
    """At beta = 0 the draws follow the prior: DS1's 51 branch lengths, i.i.d. Exp(10) (mean
    0.1, variance 0.01), through the exp transform, so the log-Jacobians are right."""
    from models.phylo import datasets, phylo_model, read_alignment, read_trees

    alignment = read_alignment(datasets.path("DS1"))
    tree = read_trees(datasets.path("DS1-credible"), alignment.taxa)[0]  # the top topology
    potential = Potential(phylo_model(alignment, tree))
    assert potential.dim == 51
    run = MCMC(potential, num_chains=8, num_warmup=150, num_draws=100, beta=0.0, seed=5,
               progress=False).run()  # fmt: skip
    lengths = run.samples["branch_lengths"]
    assert (lengths > 0).all()
    ones = torch.ones(51, dtype=lengths.dtype)
    assert_moments(run, slice(None), 0.1 * ones, 0.01 * ones, values=lengths)


def test_resume_gives_the_same_draws_as_an_uninterrupted_run():
    target = blr_target(3)
    settings = dict(num_chains=4, num_warmup=40, num_draws=30, seed=7, progress=False)
    whole = MCMC(target, **settings).run()
    target.num_evaluations, target.fail_after = 0, whole.num_evaluations // 2
    interrupted = MCMC(target, **settings)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        partial = interrupted.run()
    assert partial.diagnostics["interrupted"]
    finished = partial.num_draws
    assert 0 <= finished < 30
    torch.testing.assert_close(partial.z, whole.z[:, :finished], rtol=0, atol=0)
    checkpoint = interrupted.state_dict()
    target.fail_after = None
    resumed = MCMC(target, **{**settings, "seed": 123})
    resumed.load_state_dict(checkpoint)
    rest = resumed.run()
    assert torch.equal(rest.z, whole.z)
    assert torch.equal(rest.grad, whole.grad)
    assert torch.equal(rest.step_size, whole.step_size)
    assert torch.equal(rest.log_likelihood, whole.log_likelihood)


def test_draws_carry_the_score_of_their_power_posterior():
    # Control variates (varinf.estimators.control_variates) need the gradient at each draw.
    target = blr_target(3)
    beta = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    run = MCMC(target, num_chains=3, num_warmup=20, num_draws=10, beta=beta, seed=2).run()
    flat = run.z.reshape(-1, target.dim)
    _, score, _ = target.value_and_grad(flat, beta.repeat_interleave(10).to(flat))
    torch.testing.assert_close(run.grad, score.reshape(run.z.shape))


def test_same_seed_same_draws_and_arviz_view():
    target = blr_target(3)
    first = MCMC(target, num_chains=3, num_warmup=30, num_draws=20, seed=11, progress=False).run()
    second = MCMC(target, num_chains=3, num_warmup=30, num_draws=20, seed=11, progress=False).run()
    assert torch.equal(first.z, second.z)
    data = first.to_arviz()
    assert data.posterior["z"].shape == (3, 20, target.dim)
    assert data.sample_stats["log_likelihood"].shape == (3, 20)
    assert first.acceptance.shape == first.step_size.shape == first.divergences.shape == (3,)
    assert first.num_evaluations > 3 * 50


def test_divergences_are_recorded():
    target = blr_target()
    run = MCMC(
        target,
        num_chains=4,
        num_warmup=20,
        num_draws=20,
        seed=0,
        progress=False,
        max_energy_error=-1.0,
    ).run()  # fmt: skip  (every energy error counts)
    assert run.divergences.sum() > 0
    assert any("divergent" in note for note in run.diagnostics["warnings"])
    assert torch.isfinite(run.z).all()


def test_bad_input():
    target = blr_target()
    with pytest.raises(ValueError, match="num_chains"):
        MCMC(target, num_chains=0)
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
        MCMC(target, num_chains=2, beta=1.5)
    with pytest.raises(ValueError, match="beta must be a float or a tensor of shape"):
        MCMC(target, num_chains=2, beta=torch.ones(3))
    with pytest.raises(ValueError, match="kernel"):
        MCMC(target, kernel="gibbs")
    with pytest.raises(ValueError, match="init must have shape"):
        MCMC(target, num_chains=2, progress=False).run(init=torch.zeros(3, target.dim))
    bad = torch.zeros(2, target.dim, dtype=torch.float64)
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"not finite .* chains \[1\]"):
        MCMC(target, num_chains=2, progress=False).run(init=bad)
    checkpoint = MCMC(target, num_chains=2).state_dict()
    with pytest.raises(ValueError, match="num_chains"):
        MCMC(target, num_chains=3).load_state_dict(checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MCMC(target, num_chains=2, beta=torch.tensor([0.0, 1.0]))


def test_trajectories_are_capped_until_the_first_metric(monkeypatch):
    """Chains started far from the posterior must not run every early trajectory to
    `max_steps`: at most 8 leapfrog steps until the first metric (iteration 100 of 150)."""
    import varinf.mcmc.sampler as sampler
    from varinf.mcmc.adaptation import warmup_windows

    target, longest = blr_target(), []
    original = sampler.leapfrog_trajectory

    def spy(potential, start, momentum, step_size, inv_metric, num_steps, *rest):
        longest.append(int(num_steps.max()))
        return original(potential, start, momentum, step_size, inv_metric, num_steps, *rest)

    monkeypatch.setattr(sampler, "leapfrog_trajectory", spy)
    init = torch.full((4, target.dim), 30.0, dtype=torch.float64)  # far out: a long transient
    MCMC(target, num_chains=4, num_warmup=150, num_draws=20, seed=0, progress=False).run(init)
    first_metric = warmup_windows(150)[1][0]
    assert first_metric == 100 and len(longest) == 170
    assert max(longest[:first_metric]) <= 8
    assert max(longest[first_metric:]) > 8  # afterwards the integration time decides
