"""Bad input gets an exception that names the problem."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from models.conjugate import ConjugateGaussian
from varinf import ELBO, IWAE, SUMO, NaiveMonteCarlo, compare


@pytest.mark.parametrize("make", [ELBO, IWAE, NaiveMonteCarlo], ids=["elbo", "iwae", "naive"])
@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_zero_or_non_integer_particles(make, bad):
    with pytest.raises(ValueError, match="num_particles"):
        make(num_particles=bad)


def test_guide_missing_a_latent_site():
    problem = ConjugateGaussian.example()

    def empty_guide():
        pass

    with pytest.raises(ValueError, match="does not sample the model's latent site.*mean"):
        IWAE(4).estimate(problem.model, empty_guide)


def test_guide_with_a_site_the_model_lacks():
    problem = ConjugateGaussian.example()

    def guide():
        problem.exact_guide()
        pyro.sample("extra", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="extra"):
        ELBO(4).estimate(problem.model, guide)


def test_missing_guide_is_refused_with_the_fix():
    problem = ConjugateGaussian.example()
    with pytest.raises(ValueError, match="needs a guide"):
        SUMO().estimate(problem.model)
    with pytest.raises(ValueError, match="guide=None"):
        NaiveMonteCarlo(10).estimate(problem.model, problem.guide)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_model_with_non_finite_log_density(bad):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("broken", x * 0 + bad)

    def guide():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    pyro.enable_validation(False)  # with validation Pyro refuses a NaN factor itself
    with pytest.raises(FloatingPointError, match=r"model log density is NaN or \+inf"):
        IWAE(5).estimate(model, guide)


def test_minus_infinite_log_weights_are_zero_weights():
    """A particle the model rules out (log p = -inf) is a zero weight, not an error: for
    p(x) = N(x; 0, 1) [x > 0], Z = 1/2, and IWAE with a N(0, 1) guide averages 1[x > 0]."""

    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("positive", torch.where(x > 0, 0.0, -math.inf))

    def guide():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    result = IWAE(4000, seed=0).estimate(model, guide)
    assert abs(result.value - math.log(0.5)) < 5 * result.stderr
    assert NaiveMonteCarlo(10, seed=0).estimate(model).value < 0


def test_guide_support_missing_the_models():
    """A guide proposing negative values for a positive site: -inf model density."""

    def model():
        pyro.sample("rate", dist.Exponential(1.0))

    def guide():
        pyro.sample("rate", dist.Normal(0.0, 1.0))

    pyro.enable_validation(False)  # Exponential.log_prob is then finite for negative rates
    with pytest.raises(ValueError, match="outside the support.*'rate'"):
        ELBO(50).estimate(model, guide)


@pytest.mark.parametrize("truth", ["1.8", [1.8], float("nan"), True])
def test_wrong_truth_type(truth):
    problem = ConjugateGaussian.example()
    with pytest.raises(TypeError, match="truth"):
        compare([ELBO(2)], problem.model, problem.guide, repeats=2, truth=truth)


def test_compare_rejects_non_estimators_and_bad_repeats():
    problem = ConjugateGaussian.example()
    with pytest.raises(TypeError, match="Estimator"):
        compare([pyro.infer.Trace_ELBO()], problem.model, problem.guide)
    with pytest.raises(ValueError, match="repeats"):
        compare([ELBO(2)], problem.model, problem.guide, repeats=0)


def test_bad_seed_type():
    with pytest.raises(TypeError, match="seed"):
        IWAE(3, seed="1")


def test_bad_gradient_options():
    with pytest.raises(ValueError, match="gradient"):
        IWAE(3, gradient="score")
    with pytest.raises(ValueError, match="gradient"):
        ELBO(3, gradient="dreg")
    with pytest.raises(ValueError, match="num_particles must be at least 2"):
        IWAE(1, gradient="vimco")


def test_dreg_refuses_discrete_guides():
    def model():
        pyro.sample("c", dist.Bernoulli(0.5))

    def guide():
        pyro.sample("c", dist.Bernoulli(torch.tensor(0.3, requires_grad=True)))

    with pytest.raises(ValueError, match="reparameterised"):
        IWAE(3, gradient="dreg").differentiable_loss(model, guide)


def test_guide_sampling_a_site_the_model_observes():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(mu, 1.0), obs=torch.tensor(0.5))

    def guide():
        pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="model observes"):
        IWAE(10).estimate(model, guide)


def test_numpy_integers_are_accepted_as_counts():
    import numpy as np

    assert IWAE(np.int64(5)).num_particles == 5
