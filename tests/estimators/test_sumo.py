"""SUMO: the roulette distribution, the estimator against a direct loop, unbiasedness."""

import math

import pytest
import torch

from models.energies import SumoMixture
from tests.estimators.problems import perturbed_conjugate, perturbed_local
from varinf import IWAE, SUMO
from varinf.estimators.sumo import expected_num_terms, sample_num_terms, sumo, survival


def test_num_terms_follow_the_survival_function():
    """Empirical P(J >= j) against 1/j (head) and the geometric tail, within 4 binomial sd."""
    n, cutoff, tail = 400000, 10, 0.8
    with torch.random.fork_rng():
        torch.manual_seed(0)
        terms = sample_num_terms(n, cutoff, tail)
    assert terms.min() == 1
    for j in [1, 2, 3, 5, 10, 11, 15, 20]:
        p = survival(torch.tensor(j), cutoff, tail).item()
        empirical = (terms >= j).double().mean().item()
        assert abs(empirical - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-12, j
    mean_sem = terms.double().std().item() / math.sqrt(n)
    assert abs(terms.double().mean().item() - expected_num_terms(cutoff, tail)) < 4 * mean_sem


def direct_sumo(log_w, m, cutoff, tail):
    """SUMO of one sequence, term by term from the formula."""

    def iwae_k(k):
        return (torch.logsumexp(log_w[:k], 0) - math.log(k)).item()

    value = iwae_k(m)
    for j in range(1, len(log_w) - m + 1):
        delta = iwae_k(m + j) - iwae_k(m + j - 1)
        value += delta / survival(torch.tensor(j), cutoff, tail).item()
    return value


@pytest.mark.parametrize("m", [1, 3])
def test_vectorised_sumo_equals_direct_formula(m):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([m + 1, m + 4, m + 2, m + 12])
    log_w = torch.randn(int(lengths.sum()), generator=generator, dtype=torch.float64) * 2
    got = sumo(log_w, lengths, m, cutoff=5, tail=0.7)
    start = 0
    for r, length in enumerate(lengths.tolist()):
        expected = direct_sumo(log_w[start : start + length], m, cutoff=5, tail=0.7)
        assert got[r].item() == pytest.approx(expected, rel=1e-12)
        start += length


def test_exact_roulette_expectation_telescopes_to_iwae_limit():
    """Sum over J of P(J = j) SUMO(j) = IWAE_L exactly when the sequence is truncated at L
    (P(J = L - m) taken as P(J >= L - m))."""
    m, cutoff, tail = 2, 4, 0.6
    log_w = torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    longest = len(log_w) - m
    expectation = 0.0
    for j in range(1, longest + 1):
        p_ge = survival(torch.tensor(j), cutoff, tail).item()
        p_next = survival(torch.tensor(j + 1), cutoff, tail).item() if j < longest else 0.0
        expectation += (p_ge - p_next) * direct_sumo(log_w[: m + j], m, cutoff, tail)
    assert expectation == pytest.approx((log_w.logsumexp(0) - math.log(12)).item(), rel=1e-12)


@pytest.mark.parametrize("make", [perturbed_conjugate, perturbed_local])
def test_sumo_within_five_stderr_of_truth(make):
    """A sanity check at fixed seeds, not a calibrated test: with the geometric tail SUMO's
    variance is infinite, so its sample stderr is only indicative. Unbiasedness itself is
    established exactly above (roulette law, formula, telescoping expectation)."""
    problem, guide = make()
    result = SUMO(num_particles=20000, seed=0).estimate(problem.model, guide)
    assert abs(result.value - problem.log_evidence) < 5 * result.stderr


@pytest.mark.slow
def test_sumo_unbiased_on_the_note_toy_where_iwae5_is_not():
    """Note: SUMO 1.8359 vs log 2pi = 1.8379, IWAE_5 1.7616 (var 0.154)."""
    toy = SumoMixture()
    result = SUMO(num_particles=200000, seed=0).estimate(toy.model, toy.guide)
    assert abs(result.value - toy.log_evidence) < 3 * result.stderr
    iwae5 = torch.tensor(
        [IWAE(5, seed=s).estimate(toy.model, toy.guide).value for s in range(4000)]
    )
    sem = iwae5.std().item() / math.sqrt(len(iwae5))
    assert iwae5.mean().item() < toy.log_evidence - 8 * sem  # visibly below the truth


def test_one_draw_has_no_stderr_and_says_why():
    toy = SumoMixture()
    result = SUMO(seed=0).estimate(toy.model, toy.guide)
    assert math.isnan(result.stderr)
    assert "num_particles" in result.diagnostics["stderr"]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"min_terms": 0}, "min_terms"),
        ({"tail": 1.0}, "tail"),
        ({"num_particles": 0}, "num_particles"),
        ({"guide_objective": "x"}, "guide_objective"),
        ({"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_bad_options_are_named(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SUMO(**kwargs)


def test_the_unreliable_stderr_warning_is_in_diagnostics_and_repr():
    toy = SumoMixture()
    result = SUMO(20, seed=0).estimate(toy.model, toy.guide)
    assert "unreliable" in result.diagnostics["warning"]
    assert "warning: SUMO's standard error is unreliable" in repr(result)
    assert "warning" not in repr(IWAE(20, seed=0).estimate(toy.model, toy.guide))


def test_roulette_lengths_are_shared_across_data_points():
    """Two data points with identical weights get identical estimates in every draw: one J per
    draw for the whole batch (a separate J per datum would make them differ)."""
    weights = torch.randn(40, 1).expand(40, 2).contiguous()
    lengths = torch.tensor([1, 4, 12, 23])
    estimates = sumo(weights, lengths, min_terms=1, cutoff=80, tail=0.9)
    assert estimates.shape == (4, 2)
    assert torch.equal(estimates[:, 0], estimates[:, 1])
    problem, guide = perturbed_local()
    sumo_loss = SUMO(5, seed=0)
    weights = sumo_loss.log_weights(problem.model, guide, (), {})
    assert weights.log_weights.shape == (int(sumo_loss._lengths.sum()), len(problem.data))


def test_warmup_steps_train_on_the_elbo_first():
    """During warm-up the loss is minus the ELBO of the drawn particles (a loss with no
    roulette corrections), then SUMO takes over."""
    problem, guide = perturbed_local()
    loss = SUMO(2, warmup_steps=2)
    elbo_like = []
    for _ in range(3):
        torch.manual_seed(0)
        weights = loss.log_weights(problem.model, guide, (), {})
        torch.manual_seed(0)
        elbo_like.append(-weights.log_weights.mean(0).sum().item())
        value = loss.loss_and_grads(problem.model, guide)
        elbo_like[-1] = (elbo_like[-1], value)
    (expected0, got0), (expected1, got1), (expected2, got2) = elbo_like
    assert got0 == pytest.approx(expected0) and got1 == pytest.approx(expected1)
    assert got2 != pytest.approx(expected2)  # SUMO's corrections from the third step on
