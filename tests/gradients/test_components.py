"""The parts under the estimators: set probabilities against the sum over orders, conditional
Gumbel re-sampling, the categorical view of each family, and bad input."""

import itertools
import math

import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    Normal,
    OneHotCategorical,
)

from varinf.gradients import (
    RELAX,
    GumbelSoftmax,
    ScoreFunction,
    StraightThrough,
    SumAndSample,
    UnorderedSet,
    VIMCOEstimator,
)
from varinf.gradients.base import CategoricalView
from varinf.gradients.relax import conditional_gumbel
from varinf.gradients.unordered_set import log_set_integrals

EULER = 0.5772156649015329


def plackett_luce_set_probability(probs: list[float], members: list[int]) -> float:
    """q(S): the sum over all orders of sampling ``members`` without replacement."""
    total = 0.0
    for order in itertools.permutations(members):
        prob, remaining = 1.0, 1.0
        for s in order:
            prob *= probs[s] / remaining
            remaining -= probs[s]
        total += prob
    return total


def renormalised_without(probs: torch.Tensor, removed: list[int]) -> list[float]:
    kept = probs.clone()
    kept[removed] = 0
    return (kept / kept.sum()).tolist()


@pytest.mark.parametrize("scale", [0.5, 3.0, 8.0])
def test_set_integrals_match_sum_over_orders(scale):
    generator = torch.Generator().manual_seed(int(scale * 10))
    probs = torch.softmax(scale * torch.randn(7, generator=generator, dtype=torch.float64), 0)
    members = [0, 2, 5, 6]
    rest = sum(probs[i] for i in range(7) if i not in members)
    log_all, one_out, two_out = log_set_integrals(probs[members].log(), torch.log(rest))
    assert log_all.exp().item() == pytest.approx(
        plackett_luce_set_probability(probs.tolist(), members), rel=1e-10
    )
    for i, s in enumerate(members):
        others = [m for m in members if m != s]
        expected = plackett_luce_set_probability(renormalised_without(probs, [s]), others)
        assert one_out[i].exp().item() == pytest.approx(expected, rel=1e-10)
        for j, t in enumerate(members):
            if t == s:
                continue
            pair = [m for m in members if m not in (s, t)]
            expected = plackett_luce_set_probability(renormalised_without(probs, [s, t]), pair)
            assert two_out[i, j].exp().item() == pytest.approx(expected, rel=1e-10)


def test_whole_support_set_has_probability_one():
    log_q = torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))
    log_all, _, _ = log_set_integrals(log_q, torch.tensor(float("-inf"), dtype=torch.float64))
    assert log_all.item() == pytest.approx(0.0, abs=1e-12)


def test_conditional_gumbel_matches_unconditional_marginal():
    # b ~ q and z~ ~ p(z | b) must be distributed as z = log q + Gumbel: mean log q + γ
    log_probs = torch.log(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    num = 100000
    hard = Categorical(logits=log_probs).sample((num,))
    z = conditional_gumbel(log_probs, hard, generator)
    assert (z.argmax(-1) == hard).all()
    stderr = math.pi / math.sqrt(6) / math.sqrt(num)  # Gumbel standard deviation π/√6
    assert ((z.mean(0) - (log_probs + EULER)).abs() < 3 * stderr).all()


@pytest.mark.parametrize(
    "dist, sample_shape",
    [
        (Categorical(logits=torch.randn(5, 4)), (6, 5)),
        (OneHotCategorical(logits=torch.randn(5, 4)), (6, 5, 4)),
        (Bernoulli(logits=torch.randn(5)), (6, 5)),
        (Independent(Bernoulli(logits=torch.randn(5, 2, 3)), 2), (6, 5, 2, 3)),
        (Independent(OneHotCategorical(logits=torch.randn(2, 3, 4)), 1), (6, 2, 3, 4)),
    ],
)
def test_view_decodes_in_the_sample_format(dist, sample_shape):
    view = CategoricalView(dist)
    samples = view.decode(view.sample(6, None))
    assert samples.shape == sample_shape == (6, *dist.batch_shape, *dist.event_shape)
    torch.testing.assert_close(view.log_prob(view.sample(6, None)).shape, (6, *dist.batch_shape))
    indices = view.sample(6, None)
    torch.testing.assert_close(view.log_prob(indices), dist.log_prob(view.decode(indices)))


def test_joint_enumeration_is_normalised_and_decodes():
    dist = Independent(OneHotCategorical(logits=torch.randn(2, 3, 4, dtype=torch.float64)), 1)
    view = CategoricalView(dist)
    joint = view.joint_log_probs()
    assert joint.shape == (2, 4**3)
    torch.testing.assert_close(joint.logsumexp(-1), torch.zeros(2, dtype=torch.float64))
    states = torch.arange(64).expand(2, 64).T  # (64, 2)
    decoded = view.decode(view.joint_to_indices(states))
    torch.testing.assert_close(dist.log_prob(decoded), joint.T)


@pytest.mark.parametrize(
    "estimator",
    [
        ScoreFunction(),
        ScoreFunction("leave-one-out"),
        SumAndSample(),
        UnorderedSet(),
        GumbelSoftmax(),
        StraightThrough(),
        RELAX(),
    ],
    ids=lambda e: e.name,
)
def test_batched_one_hot_categorical(estimator):
    logits = torch.randn(5, 2, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.arange(4, dtype=torch.float64)
    dist = Independent(OneHotCategorical(logits=logits), 1)

    def f(y):
        return (y @ weights).sum(-1)

    out = estimator.surrogate(dist, f, 3)
    assert out.value.shape == out.surrogate.shape == (5,)
    out.surrogate.sum().backward()
    assert logits.grad.shape == logits.shape and torch.isfinite(logits.grad).all()


def test_bad_input():
    q = Categorical(logits=torch.zeros(3))
    with pytest.raises(TypeError, match="dist"):
        ScoreFunction().surrogate(Normal(0.0, 1.0), lambda z: z, 2)
    with pytest.raises(ValueError, match="num_particles"):
        ScoreFunction("leave-one-out").surrogate(q, lambda z: z.float(), 1)
    with pytest.raises(ValueError, match="num_particles"):
        VIMCOEstimator().surrogate(q, lambda z: z.float(), 1)
    with pytest.raises(TypeError, match="num_particles"):
        ScoreFunction().surrogate(q, lambda z: z.float(), 2.0)
    with pytest.raises(TypeError, match="f must be"):
        ScoreFunction().surrogate(q, None, 2)
    with pytest.raises(ValueError, match="baseline"):
        ScoreFunction("average")
    with pytest.raises(ValueError, match="temperature"):
        GumbelSoftmax(0.0)
    with pytest.raises(ValueError, match="OneHotCategorical"):
        GumbelSoftmax().surrogate(q, lambda z: z.float(), 2)
    with pytest.raises(ValueError, match="joint states"):
        big = Independent(Bernoulli(logits=torch.zeros(20)), 1)
        UnorderedSet(method="enumerate").surrogate(big, lambda b: b.sum(-1), 2)
    with pytest.raises(ValueError, match="joint states"):
        SumAndSample().surrogate(big, lambda b: b.sum(-1), 2)
    with pytest.raises(ValueError, match="method"):
        UnorderedSet(method="beams")
    with pytest.raises(ValueError, match="control variate"):
        RELAX(scale=None)


ALL = [
    ScoreFunction(),
    ScoreFunction("leave-one-out"),
    SumAndSample(),
    UnorderedSet(),
    VIMCOEstimator(),
    GumbelSoftmax(),
    StraightThrough(),
    RELAX(),
]


@pytest.mark.parametrize("estimator", ALL, ids=lambda e: e.name)
def test_contract_same_seed_same_number(estimator):
    logits = torch.tensor([[0.3, -0.1, 0.5], [1.0, 0.0, -1.0]], dtype=torch.float64)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    runs = []
    for _ in range(2):
        leaf = logits.clone().requires_grad_(True)
        generator = torch.Generator().manual_seed(7)
        q = OneHotCategorical(logits=leaf)
        out = estimator.surrogate(q, lambda y: y @ weights, 3, generator)
        assert out.value.shape == out.surrogate.shape == (2,)
        assert 1 <= out.num_evaluations <= 3
        (grad,) = torch.autograd.grad(out.surrogate.sum(), leaf)
        runs.append((out.value, grad))
    torch.testing.assert_close(runs[0], runs[1])
    # the surrogate's value is the estimate itself (the gradient terms add zero)
    torch.testing.assert_close(out.surrogate.detach(), out.value)


@pytest.mark.parametrize("method", ["enumerate", "beam"])
def test_sampled_sets_follow_the_set_probability(method):
    # every unordered pair of the 8 toy states appears with probability q(S) (the integral)
    from varinf.gradients.unordered_set import gumbel_top_k, stochastic_beam_search

    logits = torch.tensor([0.7, -0.3, 1.2], dtype=torch.float64)
    view = CategoricalView(Independent(Bernoulli(logits=logits), 1))
    joint = view.joint_log_probs()
    num = 20000
    generator = torch.Generator().manual_seed(0)
    if method == "enumerate":
        states = gumbel_top_k(joint.expand(num, 8), 2, generator)
    else:
        indices = stochastic_beam_search(view.log_probs.expand(num, 3, 2), 2, generator)
        states = (indices * torch.tensor([4, 2, 1])).sum(-1)  # joint state, base 2
    states = states.sort(-1).values
    for a, b in itertools.combinations(range(8), 2):
        rest = joint[[i for i in range(8) if i not in (a, b)]].logsumexp(0)
        prob = log_set_integrals(joint[[a, b]], rest)[0].exp().item()
        frequency = ((states[:, 0] == a) & (states[:, 1] == b)).double().mean().item()
        assert abs(frequency - prob) < 4 * math.sqrt(prob * (1 - prob) / num), (a, b)


def test_beam_search_on_a_large_product_is_unbiased():
    # 30 Bernoullis (2^30 states, no enumeration): exact gradient sigma'(eta) sum(1 - 2 c)
    c = torch.linspace(0.1, 0.9, 30, dtype=torch.float64) ** 2
    repeats, eta = 4000, -0.5
    etas = torch.full((repeats,), eta, dtype=torch.float64, requires_grad=True)
    q = Independent(Bernoulli(logits=etas.unsqueeze(-1).expand(repeats, 30)), 1)
    generator = torch.Generator().manual_seed(1)
    out = UnorderedSet().surrogate(q, lambda b: ((b - c) ** 2).sum(-1), 4, generator)
    (grads,) = torch.autograd.grad(out.surrogate.sum(), etas)
    p = 1 / (1 + math.exp(-eta))
    truth = p * (1 - p) * (1 - 2 * c).sum().item()
    stderr = grads.std().item() / math.sqrt(repeats)
    assert abs(grads.mean().item() - truth) < 3 * stderr, (grads.mean().item(), truth, stderr)
