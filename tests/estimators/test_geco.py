"""GECO: the multiplier's dynamics, the reported loss, gradients, resuming, and the digits VAE."""

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from models.conjugate import ConjugateGaussian
from models.vae import DigitsVAE, load_digits_images
from varinf import ELBO, GECO


def gaussian_problem():
    problem = ConjugateGaussian.example(num_data=10, dim=2)
    loc, scale = problem.posterior

    def guide():
        shift = pyro.param("shift", torch.zeros(2, dtype=torch.float64))
        pyro.sample("mean", dist.Normal(loc + shift, scale).to_event(1))

    return problem, guide


def test_multiplier_rises_while_violated_and_falls_once_satisfied():
    problem, guide = gaussian_problem()
    # the reconstruction error -log p(x | mean) is about 15 nats on these 10 points
    for tolerance, direction in [(5.0, +1), (50.0, -1)]:
        geco = GECO(tolerance=tolerance, rate=1e-2, alpha=0.5)
        multipliers = [geco.multiplier]
        for _ in range(10):
            geco.loss_and_grads(problem.model, guide)
            multipliers.append(geco.multiplier)
            # lambda <- lambda * exp(rate * C_ma), exactly
            expected = multipliers[-2] * math.exp(geco.rate * geco.constraint_ma)
            assert geco.multiplier == pytest.approx(expected, rel=1e-12)
        steps = torch.tensor(multipliers).diff()
        assert (direction * steps > 0).all(), multipliers


def test_reported_loss_is_kl_plus_multiplier_times_the_moving_average():
    problem, guide = gaussian_problem()
    geco = GECO(tolerance=10.0, num_particles=4, alpha=0.8)
    averages = []
    for _ in range(5):
        used = geco.multiplier
        loss = geco.loss_and_grads(problem.model, guide)
        state = geco.state_dict()
        averages.append(state["constraint"])
        assert state["multiplier_used"] == used
        assert loss == state["kl"] + used * state["constraint_ma"]  # exactly, as documented
    # the moving average follows its recursion from the first batch
    expected = averages[0]
    for observed in averages[1:]:
        expected = 0.8 * expected + 0.2 * observed
    assert geco.constraint_ma == pytest.approx(expected, rel=1e-12)


def test_gradient_is_the_current_batchs_lagrangian():
    """d/dphi of KL + lambda * C_hat on the same draws: the moving average adds no gradient."""
    problem, guide = gaussian_problem()
    geco = GECO(tolerance=10.0, num_particles=3)
    geco.loss_and_grads(problem.model, guide)  # one step sets C_ma and moves lambda
    pyro.param("shift").grad = None
    used = geco.multiplier
    pyro.set_rng_seed(3)
    geco.loss_and_grads(problem.model, guide)
    got = pyro.param("shift").unconstrained().grad.clone()

    pyro.set_rng_seed(3)
    weights = ELBO(3).log_weights(problem.model, guide, (), {})
    kl = (weights.log_q - weights.log_prior).mean()
    constraint = -weights.log_likelihood.mean() - 10.0
    shift = pyro.param("shift").unconstrained()
    (expected,) = torch.autograd.grad(kl + used * constraint, [shift])
    assert torch.allclose(got, expected, rtol=1e-10)


def test_a_custom_constraint():
    problem, guide = gaussian_problem()

    def squared_distance(weights):  # any differentiable per-particle value
        mean = weights.model_trace.nodes["mean"]["value"]
        return (mean**2).sum(-1)

    num_particles = 4000
    geco = GECO(0.5, num_particles, constraint=squared_distance, seed=0)
    estimate = geco.estimate(problem.model, guide)
    mean, scale = problem.posterior  # the guide is the exact posterior N(m, s^2 I)
    # |mean|^2 under q: expectation |m|^2 + d s^2, variance sum_j 4 m_j^2 s^2 + 2 s^4
    truth = float((mean**2).sum() + 2 * scale**2) - 0.5
    sd = math.sqrt(float((4 * mean**2 * scale**2 + 2 * scale**4).sum()) / num_particles)
    assert abs(estimate.diagnostics["constraint"] - truth) < 5 * sd
    assert math.isnan(estimate.diagnostics["reconstruction"])


def test_estimate_reports_objective_state_and_no_stderr():
    problem, guide = gaussian_problem()
    geco = GECO(tolerance=10.0)
    geco.loss_and_grads(problem.model, guide)
    estimate = geco.estimate(problem.model, guide)
    d = estimate.diagnostics
    assert estimate.kind == "objective" and math.isnan(estimate.stderr)
    assert estimate.value == pytest.approx(-(d["kl"] + d["multiplier"] * d["constraint_ma"]))
    assert d["step"] == 1 and "moving average" in d["stderr"]


def _train(vae, geco, optimizer, x, steps):
    svi = pyro.infer.SVI(vae.model, vae.guide, optimizer, geco)
    return [svi.step(x, subsample_size=32) for _ in range(steps)]


def test_resuming_from_a_checkpoint_continues_the_same_trajectory():
    x = load_digits_images()[:256]

    def fresh():
        pyro.clear_param_store()
        torch.manual_seed(0)
        return DigitsVAE(latent_dim=2, hidden=16), GECO(tolerance=30.0, warmup=2)

    vae, geco = fresh()
    optimizer = pyro.optim.Adam({"lr": 1e-2})
    _train(vae, geco, optimizer, x, 5)
    checkpoint = {
        "vae": {k: v.clone() for k, v in vae.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.get_state()),  # Adam's moments change in place
        "geco": geco.state_dict(),
        "rng": torch.get_rng_state(),
    }
    uninterrupted = _train(vae, geco, optimizer, x, 5)
    final = geco.state_dict()

    vae, geco = fresh()
    vae.load_state_dict(checkpoint["vae"])  # pyro.module registers the loaded parameters
    optimizer = pyro.optim.Adam({"lr": 1e-2})
    optimizer.set_state(checkpoint["optimizer"])
    geco.load_state_dict(checkpoint["geco"])
    torch.set_rng_state(checkpoint["rng"])
    resumed = _train(vae, geco, optimizer, x, 5)
    assert resumed == uninterrupted
    assert geco.state_dict() == final


def test_bad_options_and_state_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        GECO(alpha=1.0)
    with pytest.raises(ValueError, match="multiplier"):
        GECO(multiplier=0.0)
    with pytest.raises(ValueError, match="warmup"):
        GECO(warmup=-1)
    with pytest.raises(KeyError, match="state_dict"):
        GECO().load_state_dict({"multiplier": 1.0})
    problem = ConjugateGaussian.example()

    def discrete_guide():
        pyro.sample("k", dist.Bernoulli(0.5))
        pyro.sample("mean", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))

    def model():
        pyro.sample("k", dist.Bernoulli(0.5))
        problem.model()

    with pytest.raises(ValueError, match="reparameterised guide"):
        GECO().loss_and_grads(model, discrete_guide)


@pytest.mark.slow
def test_digits_vae_ends_with_the_constraint_near_zero():
    """kappa = 10 nats per image is below what the ELBO reaches at this training length
    (about 12), so the constraint is active: lambda must settle above 1 (at lambda = 1 GECO
    is the ELBO) with the moving-average constraint in a band around 0."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = load_digits_images()
    vae, geco = DigitsVAE(latent_dim=8, hidden=64), GECO(tolerance=10.0, warmup=100)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), geco)
    averages, multipliers = [], []
    for _ in range(800):
        svi.step(x, subsample_size=128)
        averages.append(geco.constraint_ma)
        multipliers.append(geco.multiplier)
    assert max(averages[:100]) > 5  # violated at first
    assert max(multipliers) > 3  # so lambda rose
    assert all(abs(a) < 0.75 for a in averages[-50:]), averages[-50:]
    assert multipliers[-1] > 1
