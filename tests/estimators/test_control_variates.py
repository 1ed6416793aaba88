"""Zero-variance control variates: mean-zero features, unbiased cross-fitted means, and the
stepping stone they control against analytic evidences."""

import math

import pytest
import torch

from tests.estimators.exact_draws import GaussianLinearModel
from varinf.estimators.control_variates import (
    controlled_draws,
    controlled_means,
    folds,
    usable_degree,
    zero_variance_features,
)
from varinf.estimators.temperatures import beta_quantile_temperatures
from varinf.estimators.thermodynamic import path_sampling, stepping_stone

# z = log(rate) with rate ~ Gamma(a, b): log density a z - b e^z, score a - b e^z. Not Gaussian
# in z, so no feature set makes a function of it exact.
SHAPE, RATE = 3.0, 2.0


def gamma_draws(shape):
    rates = torch.distributions.Gamma(SHAPE, RATE).sample(shape).double()
    z = rates.log().unsqueeze(-1)
    return z, SHAPE - RATE * z.exp()


def test_features_have_mean_zero_under_the_target():
    torch.manual_seed(0)
    z, score = gamma_draws((40000,))
    psi = zero_variance_features(z, score, degree=2)
    assert psi.shape == (40000, 2)
    stderr = psi.std(0) / math.sqrt(len(psi))
    assert (psi.mean(0).abs() < 5 * stderr).all()


def test_cross_fitted_means_are_unbiased_with_less_variance():
    # f = rate^{1/2} = e^{z/2}: E f = Gamma(a + 1/2) / (Gamma(a) b^{1/2}).
    torch.manual_seed(1)
    truth = math.exp(math.lgamma(SHAPE + 0.5) - math.lgamma(SHAPE)) / math.sqrt(RATE)
    plain, controlled = [], []
    for _ in range(200):
        z, score = gamma_draws((4, 25))
        f = (z / 2).exp().squeeze(-1)
        plain.append(float(f.mean()))
        controlled.append(float(controlled_draws(f, zero_variance_features(z, score)).mean()))
    plain, controlled = torch.tensor(plain), torch.tensor(controlled)
    stderr = controlled.std() / math.sqrt(len(controlled))
    assert abs(controlled.mean() - truth) < 5 * stderr
    assert controlled.var() < plain.var() / 1000  # 12,000x with this seed


def test_folds_and_usable_degree():
    assert folds(4, 3).tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]]
    assert folds(2, 4).tolist() == [[0, 0, 1, 1], [2, 2, 3, 3]]
    assert folds(1, 8).unique().tolist() == [0, 1, 2, 3]
    # DS1: 51 branch lengths; 4 chains of 200 fit 103 coefficients on 600 draws.
    assert usable_degree(4, 200, 51) == 2
    assert usable_degree(2, 200, 51) == 1
    assert usable_degree(1, 10, 51) == 0


@pytest.mark.parametrize("problem", ["regression", "normal_mean"])
def test_controlled_stepping_stone_within_five_standard_errors(problem):
    model = getattr(GaussianLinearModel, problem)()
    betas = beta_quantile_temperatures(50, alpha=0.3)
    z, ell, score = model.power_posterior_draws(betas, num_chains=2, num_draws=200, seed=1)
    features = zero_variance_features(z, score)
    controlled, plain = (stepping_stone(ell, betas, features=x) for x in (features, None))
    assert abs(controlled.value - model.log_evidence) < 5 * controlled.stderr
    # The diagonal quadratic cannot follow the correlated weights' cross terms: 2.5x here.
    assert controlled.stderr < plain.stderr / (2 if problem == "regression" else 5)
    assert controlled.chain_values.shape == (2,)


def test_controlled_stepping_stone_standard_error_is_calibrated():
    regression = GaussianLinearModel.regression()
    betas = beta_quantile_temperatures(20, alpha=0.3)
    estimates, stderrs = [], []
    for seed in range(12):
        z, ell, score = regression.power_posterior_draws(betas, 1, 200, seed=seed)
        result = stepping_stone(ell, betas, features=zero_variance_features(z, score))
        estimates.append(float(result.value))
        stderrs.append(float(result.stderr))
    spread = torch.tensor(estimates).std()
    assert 0.5 < spread / torch.tensor(stderrs).mean() < 2.0  # w.p. > 0.99 for 12 draws
    assert abs(torch.tensor(estimates).mean() - regression.log_evidence) < 5 * spread / 12**0.5


def test_controlled_modified_path_sampling_within_five_standard_errors():
    # Oates et al.'s controlled thermodynamic integral, with Friel et al.'s correction.
    regression = GaussianLinearModel.regression()
    betas = beta_quantile_temperatures(50, alpha=0.3)
    z, ell, score = regression.power_posterior_draws(betas, 2, 200, seed=3)
    features = zero_variance_features(z, score)
    controlled = path_sampling(ell, betas, correction=True, features=features)
    plain = path_sampling(ell, betas, correction=True)
    assert abs(controlled.value - regression.log_evidence) < 5 * controlled.stderr
    assert controlled.stderr < plain.stderr / 2


def test_bad_features():
    ell = torch.zeros(3, 2, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"features must be \(temperatures, chains, draws, F\)"):
        stepping_stone(ell, [0.0, 0.5, 1.0], features=torch.zeros(3, 2, 9, 4))
    with pytest.raises(ValueError, match="degree must be one of"):
        zero_variance_features(torch.zeros(2, 1), torch.zeros(2, 1), degree=3)
    with pytest.raises(ValueError, match="same shape"):
        zero_variance_features(torch.zeros(2, 1), torch.zeros(2, 2))


@pytest.mark.slow
def test_stepping_stone_estimator_on_a_positive_model():
    """Gamma-Poisson through the batched HMC: log-rates are not Gaussian, the truth is exact."""
    from models.conjugate import GammaPoisson
    from varinf import SteppingStone

    problem = GammaPoisson.example(num_data=5, dim=10)
    estimator = SteppingStone(beta_quantile_temperatures(20), num_replicates=4, num_warmup=100,
                              num_draws=200, seed=0)  # fmt: skip
    result = estimator.estimate(problem.model)
    plain = result.diagnostics["uncontrolled"]
    assert result.diagnostics["control_variates"] == "quadratic"
    assert abs(result.value - problem.log_evidence) < 5 * result.stderr
    assert abs(plain["value"] - problem.log_evidence) < 5 * plain["stderr"]
    assert result.stderr < plain["stderr"] / 2


def test_estimator_without_gradients_runs_uncontrolled():
    from varinf import PowerPosteriorRun, SteppingStone

    generator = torch.Generator().manual_seed(0)
    ell = torch.randn(3, 2, 50, generator=generator, dtype=torch.float64)
    run = PowerPosteriorRun.from_log_likelihoods([0.0, 0.5, 1.0], ell)
    result = SteppingStone(run=run).estimate(lambda: None)
    assert result.diagnostics["control_variates"] is None
    assert "uncontrolled" not in result.diagnostics
    with pytest.raises(ValueError, match="control_variates must be one of"):
        SteppingStone(control_variates="cubic")


def test_rows_keep_their_plain_draws_where_features_do_not_help():
    generator = torch.Generator().manual_seed(4)
    values = torch.randn(2, 4, 30, generator=generator, dtype=torch.float64)
    noise = torch.randn(2, 4, 30, 20, generator=generator, dtype=torch.float64)
    informative = torch.cat([noise[:1], values[1:, ..., None] + 0.01 * noise[1:]], 0)
    draws, ess = controlled_means(values, informative)
    # Pure noise overfits, so row 0 keeps its draws; a near-copy of f removes row 1's variance.
    assert torch.equal(draws[0], values[0])
    assert draws[1].var() < values[1].var() / 100
    assert ess.shape == (2,) and bool((ess >= 1).all())
