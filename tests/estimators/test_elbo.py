"""ELBO and IWAE against analytic log evidence."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from models.conjugate import BayesianLinearRegression, ConjugateGaussian, LocalGaussian
from models.energies import SumoMixture
from tests.estimators.problems import perturbed_conjugate, perturbed_local
from varinf import ELBO, IWAE, NaiveMonteCarlo
from varinf.estimators.elbo import elbo, iwae, iwae_stderr
from varinf.weights import trace_log_weights

EXACT_PROBLEMS = [
    ConjugateGaussian.example(),
    LocalGaussian.example(),
    BayesianLinearRegression.diabetes(),
]


@pytest.mark.parametrize("problem", EXACT_PROBLEMS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("estimator", [ELBO(7), IWAE(50)], ids=["elbo", "iwae"])
def test_exact_posterior_guide_gives_exact_evidence_with_zero_variance(problem, estimator):
    result = estimator.estimate(problem.model, problem.exact_guide)
    assert result.value == pytest.approx(problem.log_evidence, abs=1e-8)
    assert result.log_weights.std(0).max() < 1e-8
    assert result.stderr < 1e-8


@pytest.mark.parametrize("make", [perturbed_conjugate, perturbed_local])
def test_large_k_iwae_within_five_stderr_of_truth(make):
    problem, guide = make()
    result = IWAE(num_particles=20000, seed=3).estimate(problem.model, guide)
    assert result.stderr > 0
    assert abs(result.value - problem.log_evidence) < 5 * result.stderr
    assert result.diagnostics["khat"] < 0.7


def test_naive_monte_carlo_within_five_stderr_of_truth():
    problem = ConjugateGaussian.example(num_data=3, dim=1)
    result = NaiveMonteCarlo(num_particles=50000, seed=0).estimate(problem.model)
    assert abs(result.value - problem.log_evidence) < 5 * result.stderr


def test_bounds_are_ordered_in_expectation():
    """E[ELBO] <= E[IWAE_5] <= E[IWAE_10] <= log Z on the SUMO toy, each gap > 4 joint sem."""
    toy = SumoMixture()
    repeats = 20000
    with torch.random.fork_rng():
        torch.manual_seed(0)
        log_w = trace_log_weights(toy.model, toy.guide, (), {}, num_particles=repeats * 10)
    log_w = log_w.log_weights.reshape(repeats, 10)
    draws = {
        "elbo": log_w[:, :5].mean(1),
        "iwae5": log_w[:, :5].logsumexp(1) - math.log(5),
        "iwae10": log_w.logsumexp(1) - math.log(10),
    }
    names = list(draws)
    for low, high in zip(names, names[1:], strict=False):
        gap = draws[high] - draws[low]  # paired: same samples, so the gap's sem is small
        assert gap.mean() > 4 * gap.std() / math.sqrt(repeats)
    truth = toy.log_evidence
    sem = draws["iwae10"].std() / math.sqrt(repeats)
    assert draws["iwae10"].mean() + 4 * sem < truth  # still a bound: the gap is ~0.04 here


def test_sumo_note_elbo_matches_quadrature_and_iwae5_matches_note():
    """E_q[-U - log q] by 2-D quadrature is the exact ELBO; the note reports IWAE_5 = 1.7616
    (var 0.1544 over 10^4 draws).

    The trapezoidal rule on a 0.05 grid over [-30, 30]^2 is accurate far below the Monte Carlo
    error here: the integrand is smooth and decays like a Gaussian (spectral convergence).
    """
    from scipy import stats

    toy = SumoMixture()
    grid = torch.arange(-30.0, 30.0 + 1e-9, 0.05, dtype=torch.float64)
    x = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)
    log_q = torch.as_tensor(stats.multivariate_normal([0, 0], 5.0).logpdf(x.numpy()))
    exact_elbo = (log_q.exp() * (-SumoMixture.energy(x) - log_q)).sum().item() * 0.05**2
    repeats = 40000
    with torch.random.fork_rng():
        torch.manual_seed(1)
        log_w = trace_log_weights(toy.model, toy.guide, (), {}, num_particles=repeats * 5)
    log_w = log_w.log_weights.reshape(repeats, 5).double()
    elbo_draws = log_w.reshape(-1)
    sem = elbo_draws.std() / math.sqrt(len(elbo_draws))
    assert abs(elbo_draws.mean() - exact_elbo) < 4 * sem
    iwae5 = log_w.logsumexp(1) - math.log(5)
    joint_sem = math.sqrt(iwae5.var() / repeats + 0.1544 / 10000)
    assert abs(iwae5.mean() - 1.7616) < 3 * joint_sem
    assert abs(exact_elbo - 1.4595) < 3 * math.sqrt(0.9921 / 50000)


def test_functional_cores_on_synthetic_weights():
    log_w = torch.tensor([[0.0, 1.0], [math.log(3.0), -1.0]])
    assert elbo(log_w) == pytest.approx((math.log(3.0) / 2) + 0.0)
    expected = math.log((1 + 3) / 2) + math.log((math.e + math.exp(-1)) / 2)
    assert iwae(log_w) == pytest.approx(expected)
    # relative weights (0.5, 1.5): var = 0.5 (unbiased), / K = 0.25
    assert iwae_stderr(log_w[:, :1]) ** 2 == pytest.approx(0.25)


def test_vectorised_log_weights_equal_looped_ones():
    problem, guide = perturbed_local()
    weights = trace_log_weights(problem.model, guide, (), {}, num_particles=6)
    samples = weights.guide_trace.nodes["z"]["value"]  # (6, N)
    for k in range(6):
        conditioned = poutine.condition(problem.model, {"z": samples[k]})
        model_lp = poutine.trace(conditioned).get_trace().log_prob_sum()
        guide_lp = poutine.trace(poutine.condition(guide, {"z": samples[k]})).get_trace()
        expected = model_lp - guide_lp.log_prob_sum()
        assert weights.log_weights[k].sum().item() == pytest.approx(expected.item(), rel=1e-12)


def test_per_datum_iwae_differs_from_joint_iwae():
    """With a datum plate, IWAE averages particles per datum (Burda et al.)."""
    problem, guide = perturbed_local()
    weights = trace_log_weights(problem.model, guide, (), {}, num_particles=4)
    joint = trace_log_weights(problem.model, guide, (), {}, num_particles=4, per_datum=False)
    assert weights.log_weights.shape == (4, len(problem.data))
    assert joint.log_weights.shape == (4,)
    assert weights.datum_plate == "data"


def test_subsampled_plate_scales_per_datum_bound():
    data = torch.randn(10, dtype=torch.float64)

    def model(subsample_size):
        with pyro.plate("data", 10, subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(len(idx), dtype=torch.float64), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[idx])

    def guide(subsample_size):
        with pyro.plate("data", 10, subsample_size=subsample_size) as idx:
            pyro.sample("z", dist.Normal(data[idx] / 2, 0.5**0.5))

    marginal = dist.Normal(
        torch.tensor(0.0, dtype=torch.float64), torch.tensor(2.0).double().sqrt()
    )
    full = IWAE(5, seed=0).estimate(model, guide, 10)
    assert full.value == pytest.approx(marginal.log_prob(data).sum().item(), abs=1e-8)
    half = trace_log_weights(model, guide, (5,), {}, num_particles=5)
    assert half.datum_scale == 2.0
    observed = half.model_trace.nodes["x"]["value"]  # the subsampled data
    expected = 2.0 * marginal.log_prob(observed).sum().item()
    assert half.datum_scale * iwae(half.log_weights).item() == pytest.approx(expected, abs=1e-8)


def test_boolean_masks_as_pyro_handles_them():
    problem = LocalGaussian.example()
    kept = IWAE(10).estimate(pyro.poutine.mask(problem.model, mask=True), problem.exact_guide)
    assert kept.value == pytest.approx(problem.log_evidence, abs=1e-8)
    # Masked out, the model contributes nothing: log w = -log q(z), whose mean is q's entropy
    # sum_i log(2 pi e s^2) / 2 with s^2 = sigma^2 / (1 + sigma^2).
    dropped = ELBO(4000, seed=0).estimate(
        pyro.poutine.mask(problem.model, mask=False), problem.exact_guide
    )
    variance = problem.noise_scale**2 / (1 + problem.noise_scale**2)
    entropy = len(problem.data) * 0.5 * math.log(2 * math.pi * math.e * variance)
    assert abs(dropped.value - entropy) < 5 * dropped.stderr


def test_float32_models_are_accumulated_in_float64():
    """200,000 float32 terms: summed in float32 the particles differ by rounding noise
    (~0.03); in float64 the weights keep their true spread."""
    data = torch.linspace(-1, 1, 200000)

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=data)

    def guide():
        pyro.sample("mu", dist.Normal(0.0, 1e-4))

    weights = trace_log_weights(model, guide, (), {}, num_particles=4, per_datum=False)
    assert weights.log_weights.dtype == torch.float64
    mu = weights.guide_trace.nodes["mu"]["value"].double().reshape(-1)
    exact = (
        dist.Normal(0.0, 1.0).log_prob(mu)
        + dist.Normal(mu[:, None], 1.0).log_prob(data.double()).sum(-1)
        - dist.Normal(0.0, 1e-4).log_prob(mu)
    )
    error = weights.log_weights - exact
    # Each float32 datum term rounds its constant -log(2 pi)/2 the same way (~2.4e-8 x 2e5
    # terms = 5e-3 in all), but what separates the particles survives to ~2e-5 (float32
    # accumulation garbles it at the 3e-2 level).
    assert error.abs().max() < 5e-3
    assert (error - error.mean()).abs().max() < 1e-4
