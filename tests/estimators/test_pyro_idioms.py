"""Pyro's idioms work, or are refused with a reason: autoguides, models that don't vectorise,
enumeration, point masses, swapped arguments, mismatched guides, non-finite weights."""

import functools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms import block_autoregressive, iterated
from pyro.infer import Trace_ELBO, autoguide
from pyro.nn import PyroModule, PyroSample

from models.conjugate import ConjugateGaussian
from varinf import ELBO, IWAE, SUMO

AUTOGUIDES = {
    "AutoNormal": functools.partial(autoguide.AutoNormal, init_scale=0.5),
    "AutoDiagonalNormal": functools.partial(autoguide.AutoDiagonalNormal, init_scale=0.5),
    "AutoMultivariateNormal": functools.partial(autoguide.AutoMultivariateNormal, init_scale=0.5),
    "AutoLowRankMultivariateNormal": functools.partial(
        autoguide.AutoLowRankMultivariateNormal, init_scale=0.5
    ),
    "AutoIAFNormal": functools.partial(autoguide.AutoIAFNormal, hidden_dim=[4]),
    "AutoNormalizingFlow": functools.partial(
        autoguide.AutoNormalizingFlow,
        init_transform_fn=functools.partial(iterated, 1, block_autoregressive),
    ),
}


def small_problem():
    """Three data points: a posterior sd of 1/2, so untrained autoguides cover it."""
    return ConjugateGaussian.example(num_data=3, dim=2, seed=1)


@pytest.mark.parametrize("name", AUTOGUIDES)
def test_autoguide_elbo_equals_trace_elbo_on_the_same_draws(name):
    problem = small_problem()
    pyro.set_rng_seed(0)
    guide = AUTOGUIDES[name](problem.model)
    guide()  # initialise its parameters
    with torch.random.fork_rng():
        torch.manual_seed(3)
        ours = ELBO(20).estimate(problem.model, guide).value
    with torch.random.fork_rng():
        torch.manual_seed(3)
        loss = Trace_ELBO(num_particles=20, vectorize_particles=True, max_plate_nesting=1)
        theirs = -loss.loss(problem.model, guide)
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("name", AUTOGUIDES)
def test_iwae_with_every_autoguide_converges_to_the_evidence(name):
    problem = small_problem()
    pyro.set_rng_seed(0)
    guide = (
        AUTOGUIDES[name](
            problem.model,
            init_loc_fn=autoguide.init_to_value(values={"mean": problem.posterior[0]}),
        )
        if "Flow" not in name and "IAF" not in name
        else AUTOGUIDES[name](problem.model)
    )
    result = IWAE(4000, seed=1).estimate(problem.model, guide)
    assert result.diagnostics["khat"] < 0.7
    assert abs(result.value - problem.log_evidence) < 5 * result.stderr, result


@pytest.mark.parametrize("make", [autoguide.AutoDelta, autoguide.AutoLaplaceApproximation])
def test_point_mass_guides_are_refused(make):
    problem = small_problem()
    guide = make(problem.model)
    for estimator in (ELBO(5), IWAE(5), SUMO(3)):
        with pytest.raises(ValueError, match="point mass"):
            estimator.estimate(problem.model, guide)


def test_swapped_model_and_guide_is_refused():
    problem = small_problem()
    with pytest.raises(ValueError, match="swap model and guide"):
        IWAE(10).estimate(problem.exact_guide, problem.model)


# -- a PyroModule regression, which does not vectorise over particles ------------------------
def regression():
    torch.manual_seed(0)
    x = torch.randn(20, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(20)

    class Regression(PyroModule):
        def __init__(self):
            super().__init__()
            self.linear = PyroModule[torch.nn.Linear](3, 1, bias=False)
            self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))

        def forward(self, x, y=None):
            mean = self.linear(x).squeeze(-1)
            with pyro.plate("data", len(x)):
                return pyro.sample("y", dist.Normal(mean, 0.5), obs=y)

    return Regression(), x, y


def test_models_that_do_not_vectorise_name_the_option():
    model, x, y = regression()
    guide = autoguide.AutoNormal(model)
    with pytest.raises(RuntimeError, match="vectorize_particles=False"):
        IWAE(5).estimate(model, guide, x, y)


def test_vectorize_particles_false_loops_and_matches_the_analytic_evidence():
    model, x, y = regression()
    covariance = torch.eye(20) * 0.25 + x @ x.T
    truth = dist.MultivariateNormal(torch.zeros(20), covariance).log_prob(y).item()
    precision = torch.eye(3) + x.T @ x / 0.25
    posterior_scale = torch.linalg.inv(precision).diagonal().sqrt()
    mean = torch.linalg.solve(precision, x.T @ y / 0.25)
    guide = autoguide.AutoNormal(
        model,
        init_loc_fn=autoguide.init_to_value(values={"linear.weight": mean.reshape(1, 3)}),
        init_scale=float(posterior_scale.mean()),
    )
    result = IWAE(300, vectorize_particles=False, seed=0).estimate(model, guide, x, y)
    assert abs(result.value - truth) < 5 * result.stderr + 1e-3, (result, truth)
    svi = pyro.infer.SVI(
        model, guide, pyro.optim.Adam({"lr": 0.01}), ELBO(3, vectorize_particles=False)
    )
    assert math.isfinite(svi.step(x, y))


def test_vectorize_particles_false_draws_the_same_distribution():
    problem = small_problem()
    looped = IWAE(400, vectorize_particles=False, seed=0).estimate(problem.model, problem.guide)
    batched = IWAE(400, seed=1).estimate(problem.model, problem.guide)
    assert abs(looped.value - batched.value) < 5 * math.hypot(looped.stderr, batched.stderr)


def test_enumeration_is_said_to_be_unsupported():
    data = torch.tensor([0.1, 2.3, -0.5])

    @pyro.infer.config_enumerate
    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=data)

    def guide():
        pass

    with pytest.raises(ValueError, match="enumerates.*not support"):
        IWAE(4).estimate(model, guide)


def test_iwae_loss_with_a_discrete_guide_warns_and_points_to_vimco():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))

    def guide():
        probs = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        pyro.sample("z", dist.Bernoulli(probs))

    with pytest.warns(UserWarning, match="gradient='vimco'"):
        IWAE(4).loss_and_grads(model, guide)
    IWAE(4, gradient="vimco").loss_and_grads(model, guide)  # no warning (warnings are errors)
    IWAE(4).estimate(model, guide)  # nor for an estimate


def test_a_discrete_guide_for_a_continuous_site_is_refused():
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        pyro.sample("z", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match=r"'z' is continuous in the model .*discrete in the guide"):
        IWAE(4).estimate(model, guide)


def test_a_guide_with_another_event_shape_is_refused():
    def model():
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def guide():
        pyro.sample("z", dist.Normal(torch.zeros(2, 2), 1.0).to_event(2))

    with pytest.raises(ValueError, match=r"'z' has event shape \(2,\) in the model but \(2, 2\)"):
        ELBO(4).estimate(model, guide)


@pytest.mark.parametrize("side", ["model", "guide"])
def test_batch_dimensions_no_plate_explains_are_named(side):
    """Pyro's shape check ignores dimensions left of max_plate_nesting; before, they reached the
    particle sums as a bare broadcasting RuntimeError."""
    extra, plain = torch.zeros(3, 1, 5), torch.zeros(5)

    def model():
        with pyro.plate("data", 5):
            pyro.sample("z", dist.Normal(extra if side == "model" else plain, 1.0))

    def guide():
        with pyro.plate("data", 5):
            pyro.sample("z", dist.Normal(extra if side == "guide" else plain, 1.0))

    with pytest.raises(ValueError, match=r"site 'z' has log-density shape \(3, 4, 5\)"):
        IWAE(4).estimate(model, guide)
