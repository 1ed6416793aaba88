"""CPO and PPD against their closed forms in Bayesian linear regression."""

import pytest
import torch

from tests.estimators.exact_draws import GaussianLinearModel
from varinf.estimators.predictive import (
    conditional_predictive_ordinates,
    pointwise_predictive_density,
)


@pytest.fixture(scope="module")
def regression():
    model = GaussianLinearModel.regression(num_data=60)
    generator = torch.Generator().manual_seed(0)
    draws = model.sample(1.0, (2, 2000), generator)
    return model, model.log_likelihood_per_datum(draws), model.predictive_truth()


def test_predictive_densities_within_five_standard_errors(regression):
    model, ell, (ppd, cpo) = regression
    for estimate, truth in (
        (pointwise_predictive_density(ell), ppd),
        (conditional_predictive_ordinates(ell), cpo),
    ):
        assert abs(estimate.value - truth) < 5 * estimate.stderr
        assert estimate.stderr < 0.5
    # Both condition on (nearly) all the data, so both exceed log p(x), PPD the most.
    assert ppd > cpo > model.log_evidence


def test_counts_weight_the_data(regression):
    _, ell, _ = regression
    doubled = torch.cat([ell, ell[..., :5]], -1)
    weights = torch.ones(ell.shape[-1])
    weights[:5] = 2.0
    for function in (pointwise_predictive_density, conditional_predictive_ordinates):
        assert torch.allclose(function(ell, weights).value, function(doubled).value)


def test_bad_per_datum_input(regression):
    _, ell, _ = regression
    with pytest.raises(ValueError, match="per-datum"):
        pointwise_predictive_density(ell.sum(-1)[0])
    with pytest.raises(ValueError, match="weights must be 60"):
        conditional_predictive_ordinates(ell, torch.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        bad = ell.clone()
        bad[0, 0, 0] = float("nan")
        pointwise_predictive_density(bad)


def test_cpo_and_ppd_estimators_on_a_pyro_model():
    from models.conjugate import ConjugateGaussian
    from tests.estimators.exact_draws import GaussianLinearModel
    from varinf import CPO, PointwisePredictiveDensity, PosteriorRun

    problem = ConjugateGaussian.example(num_data=10, dim=1)
    truth = GaussianLinearModel(problem.data.new_ones(10, 1), problem.data[:, 0], 1.0, 1.0)
    ppd, cpo = truth.predictive_truth()
    run = PosteriorRun.sample(problem.model, num_chains=8, num_warmup=60, num_draws=100, seed=2)
    assert run.log_likelihood_per_datum.shape == (8, 100, 10)
    for cls, truth in ((PointwisePredictiveDensity, ppd), (CPO, cpo)):
        result = cls(run=run).estimate(problem.model)
        assert abs(result.value - truth) < 5 * result.stderr, cls.name


def test_cpo_needs_a_data_plate():
    import pyro
    import pyro.distributions as dist

    from varinf import CPO

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0), 1.0))
        pyro.sample("x", dist.Normal(mu[..., None], 1.0).to_event(1), obs=torch.zeros(3))

    with pytest.raises(ValueError, match="per-datum likelihoods: put the model's data in a"):
        CPO(num_warmup=10, num_draws=10, seed=0).estimate(model)
