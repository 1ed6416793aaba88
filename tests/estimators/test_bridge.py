"""Bridge sampling against the analytic evidence, from exact posterior draws."""

import math

import pytest
import torch

from tests.estimators.exact_draws import (
    GaussianLinearModel,
    fit_gaussian,
    reference_power_posterior_log_ratios,
)
from varinf.estimators.bridge import bridge_sampling
from varinf.estimators.temperatures import beta_quantile_temperatures
from varinf.estimators.thermodynamic import stepping_stone


@pytest.fixture(scope="module")
def regression():
    return GaussianLinearModel.regression()


def bridge_once(model, num_draws, seed):
    generator = torch.Generator().manual_seed(seed)
    draws = model.sample(1.0, (2, num_draws), generator)
    fit, used = draws[:, : num_draws // 2], draws[:, num_draws // 2 :]  # halves of each chain
    proposal = fit_gaussian(fit.reshape(-1, draws.shape[-1]))

    def log_ratio(w):
        log_q = model.log_likelihood_per_datum(w).sum(-1) + model.log_prior(w)
        return log_q - proposal.log_prob(w)

    # A generator of its own: one seeded like the posterior draws' would repeat their noise.
    noise = torch.randn(used.shape[:-1].numel(), draws.shape[-1], dtype=torch.float64,
                        generator=torch.Generator().manual_seed(10_000 + seed))  # fmt: skip
    proposal_draws = proposal.loc + noise @ proposal.scale_tril.T
    return bridge_sampling(log_ratio(used), log_ratio(proposal_draws))


def test_bridge_sampling_within_five_standard_errors(regression):
    result = bridge_once(regression, 1000, seed=0)
    assert abs(result.value - regression.log_evidence) < 5 * result.stderr
    assert result.stderr < 0.05
    assert result.iterations < 50


def test_bridge_standard_error_is_calibrated(regression):
    results = [bridge_once(regression, 200, seed) for seed in range(12)]
    values = torch.stack([r.value for r in results])
    ratio = values.std() / torch.stack([r.stderr for r in results]).mean()
    assert 0.5 < ratio < 2.0
    assert abs(values.mean() - regression.log_evidence) < 5 * values.std() / math.sqrt(12)


def test_generalized_stepping_stone_beats_stepping_stone(regression):
    # Fan et al. (2011): a reference fitted to the posterior makes every stone's ratio nearly
    # constant, so at the same cost the error falls by an order of magnitude.
    generator = torch.Generator().manual_seed(5)
    reference = fit_gaussian(regression.sample(1.0, (500,), generator))
    betas = beta_quantile_temperatures(10, alpha=0.3)
    ratios = reference_power_posterior_log_ratios(regression, reference, betas, 200, seed=6)
    generalized = stepping_stone(ratios, betas)
    plain = stepping_stone(regression.power_posterior_log_likelihoods(betas, 1, 200, 7), betas)
    assert abs(generalized.value - regression.log_evidence) < 5 * generalized.stderr
    assert generalized.stderr < plain.stderr / 10


def test_bad_proposal_draws():
    with pytest.raises(ValueError, match="none NaN or \\+inf"):
        bridge_sampling(torch.zeros(10), torch.tensor([0.0, float("nan")]))


def test_posterior_run_feeds_bridge_and_harmonic_means():
    from models.conjugate import ConjugateGaussian
    from varinf import BridgeSampling, HarmonicMean, PosteriorRun, StabilizedHarmonicMean

    problem = ConjugateGaussian.example()  # 2 latents, 10 data: short HMC trajectories
    run = PosteriorRun.sample(problem.model, num_chains=8, num_warmup=60, num_draws=100, seed=0)
    bridge = BridgeSampling(run=run).estimate(problem.model)
    assert abs(bridge.value - problem.log_evidence) < 5 * bridge.stderr
    assert bridge.num_evaluations == run.num_evaluations + 400  # the proposal's draws
    for cls in (HarmonicMean, StabilizedHarmonicMean):
        result = cls(run=run).estimate(problem.model)
        assert result.value > problem.log_evidence  # the harmonic means' overestimate
        assert result.num_evaluations == run.num_evaluations


def test_bridge_needs_enough_draws():
    from varinf import BridgeSampling

    with pytest.raises(ValueError, match="num_draws must be an integer >= 4"):
        BridgeSampling(num_draws=2)
    with pytest.raises(ValueError, match="more than 10 of them"):
        from varinf.estimators.bridge import fit_proposal

        fit_proposal(torch.zeros(8, 10))
