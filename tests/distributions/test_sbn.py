"""SubsplitBayesianNetwork: enumeration, brute force over rootings, goodness of fit, fitting.

Enumerations use 4, 5 and 6 taxa (3, 15 and 105 unrooted topologies).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.distributions.testing.gof import multinomial_goodness_of_fit

from models.phylo import canonicalize, random_topologies
from varinf.distributions import SBNSupport, SubsplitBayesianNetwork
from varinf.distributions.sbn import ConditionalCladeDistribution, fit_sbn, sample_frequencies
from varinf.distributions.sbn.fitting import unique_trees

sys.path.insert(0, str(Path(__file__).parent))
from sbn_helpers import brute_log_prob, tables_as_sets  # noqa: E402

from varinf.distributions.trees import all_topologies  # noqa: E402

# False-failure rate of each goodness-of-fit test (p-value threshold, fixed seeds).
TEST_FAILURE_RATE = 1e-3


def random_sbn(trees, seed=0, **kwargs):
    sup = SBNSupport.from_trees(trees)
    g = torch.Generator().manual_seed(seed)
    root = 1.5 * torch.randn(sup.num_root_splits, generator=g, dtype=torch.float64)
    pcsp = 1.5 * torch.randn(sup.num_entries, generator=g, dtype=torch.float64)
    return SubsplitBayesianNetwork(sup, root, pcsp, **kwargs)


def frequencies(samples, tops):
    index = {tuple(t.flatten().tolist()): i for i, t in enumerate(tops)}
    counts = torch.zeros(len(tops))
    for t in samples:
        counts[index[tuple(t.flatten().tolist())]] += 1
    return counts


@pytest.mark.parametrize("n", [4, 5, 6])
def test_sums_to_one_and_matches_brute_force(n):
    tops = all_topologies(n)
    assert len(tops) == math.prod(range(1, 2 * n - 4, 2))
    sbn = random_sbn(tops)
    lp = sbn.log_prob(tops)
    assert torch.allclose(lp.logsumexp(0), torch.zeros((), dtype=torch.float64), atol=1e-12)
    root, cond = tables_as_sets(sbn)
    brute = torch.tensor([brute_log_prob(t, n, root, cond) for t in tops], dtype=torch.float64)
    assert torch.allclose(lp, brute, atol=1e-12)
    assert sbn.rooting_log_prob(tops).shape == (len(tops), 2 * n - 3)


@pytest.mark.parametrize("outside", ["zero", "smooth"])
def test_partial_support_is_normalised(outside):
    tops = all_topologies(6)
    sbn = random_sbn(tops[[0, 7, 40, 99]], seed=1, outside=outside, smoothing=0.2)
    lp = sbn.log_prob(tops)
    assert torch.allclose(lp.logsumexp(0), torch.zeros((), dtype=torch.float64), atol=1e-12)
    if outside == "zero":
        assert torch.isinf(lp).any() and torch.isfinite(lp[[0, 7, 40, 99]]).all()
    else:
        assert torch.isfinite(lp).all()


@pytest.mark.parametrize(("n", "outside"), [(5, "strict"), (6, "strict"), (6, "smooth")])
def test_sampling_matches_log_prob(n, outside):
    pyro.set_rng_seed(n)
    tops = all_topologies(n)
    support = tops if outside == "strict" else tops[:5]
    sbn = random_sbn(support, seed=n, outside=outside, smoothing=0.3)
    samples = sbn.sample((4000,))
    assert samples.shape == (4000, n - 1, 2)
    assert torch.equal(canonicalize(samples[:50]), samples[:50])
    probs = sbn.log_prob(tops).exp()
    assert multinomial_goodness_of_fit(probs, frequencies(samples, tops)) > TEST_FAILURE_RATE


def test_batch_shapes_and_gradients():
    tops = all_topologies(5)
    sbn = random_sbn(tops)
    assert sbn.log_prob(tops.reshape(3, 5, 4, 2)).shape == (3, 5)
    assert sbn.expand((2,)).log_prob(tops[:1]).shape == (2,)
    assert sbn.expand((2,)).sample((3,)).shape == (3, 2, 4, 2)
    small = random_sbn(all_topologies(4))
    root = small.root_logits.clone().requires_grad_(True)
    pcsp = small.pcsp_logits.clone().requires_grad_(True)

    def f(r, p):
        return SubsplitBayesianNetwork(small.support_tables, r, p).log_prob(all_topologies(4))

    assert torch.autograd.gradcheck(f, (root, pcsp))


def test_many_taxa_use_several_words():
    torch.manual_seed(0)
    trees = random_topologies(70, 3)
    sbn = SubsplitBayesianNetwork(SBNSupport.from_trees(trees))
    assert torch.isfinite(sbn.log_prob(trees)).all()
    samples = sbn.sample((4,))
    assert torch.equal(canonicalize(samples), samples)
    assert torch.isfinite(sbn.log_prob(samples)).all()


def test_outside_support_strict_raises():
    tops = all_topologies(6)
    sbn = SubsplitBayesianNetwork(SBNSupport.from_trees(tops[:2]))
    with pytest.raises(ValueError, match="outside the SBN's support"):
        sbn.log_prob(tops)
    assert torch.isneginf(
        SubsplitBayesianNetwork(sbn.support_tables, outside="zero").log_prob(tops)
    ).any()


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        SBNSupport.from_trees([])
    with pytest.raises(ValueError, match="shape"):
        SBNSupport.from_trees(torch.zeros(2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="not a valid child table"):
        SBNSupport.from_trees(torch.tensor([[[0, 1], [1, 2], [5, 3], [7, 4]]]))
    sup = SBNSupport.from_trees(all_topologies(5))
    with pytest.raises(ValueError, match="smoothing"):
        SubsplitBayesianNetwork(sup, outside="smooth")
    with pytest.raises(ValueError, match="outside must be"):
        SubsplitBayesianNetwork(sup, outside="floor")
    with pytest.raises(ValueError, match="root_logits"):
        SubsplitBayesianNetwork(sup, root_logits=torch.zeros(2))
    with pytest.raises(TypeError, match="SBNSupport"):
        SubsplitBayesianNetwork(all_topologies(5))


def test_em_increases_likelihood_and_beats_sa():
    tops = all_topologies(6)
    g = torch.Generator().manual_seed(3)
    pick = torch.randperm(105, generator=g)[:25]
    w = torch.rand(25, generator=g, dtype=torch.float64)
    children, p, _ = unique_trees(tops[pick], w)
    sa = fit_sbn(tops[pick], w, method="sa")
    em = fit_sbn(tops[pick], w, method="em", max_iter=200)
    trace = torch.tensor(em.fit_trace)
    assert (trace[1:] >= trace[:-1] - 1e-12).all()  # EM never decreases the likelihood
    ll_sa, ll_em = (p * sa.log_prob(children)).sum(), (p * em.log_prob(children)).sum()
    assert ll_em > ll_sa + 1e-3
    assert math.isclose(float(ll_em), em.fit_trace[-1], abs_tol=1e-4)
    alpha = fit_sbn(tops[pick], w, method="em-alpha", alpha=0.5, max_iter=200, outside="zero")
    assert torch.allclose(alpha.log_prob(tops).logsumexp(0), torch.zeros((), dtype=torch.float64))


def test_sa_is_relative_frequency_of_rootings():
    tops = all_topologies(5)
    sa = fit_sbn(tops[:1], method="sa")
    # one tree: every root split of its 7 edges has probability 1/7, every PCSP 1
    assert torch.allclose(sa.root_log_probs.exp(), torch.full((7,), 1 / 7, dtype=torch.float64))
    assert torch.allclose(sa.pcsp_log_probs, torch.zeros_like(sa.pcsp_log_probs))


def test_ccd_and_srf_are_normalised():
    tops = all_topologies(6)
    g = torch.Generator().manual_seed(4)
    w = torch.rand(30, generator=g, dtype=torch.float64)
    ccd = ConditionalCladeDistribution(tops[:30], w)
    lp = ccd.log_prob(tops)
    assert torch.allclose(lp.logsumexp(0), torch.zeros((), dtype=torch.float64), atol=1e-12)
    srf = sample_frequencies(tops[:30], w)
    assert torch.allclose(srf(tops[:30]).exp(), w / w.sum())
    assert torch.isneginf(srf(tops[30:])).all()


def test_sa_equals_rooting_average():
    # SA counts each PCSP once per tree; averaging over rootings gives the same conditionals
    tops = all_topologies(6)
    g = torch.Generator().manual_seed(5)
    w = torch.rand(12, generator=g, dtype=torch.float64)
    sa = fit_sbn(tops[:12], w, method="sa", outside="zero")
    from varinf.distributions.sbn.fitting import _expected_counts, _index, _log_normalise

    children, p, _ = unique_trees(tops[:12], w)
    sup = sa.support_tables
    indexed = _index(sup, children, p, 512)
    zeros_r = torch.zeros(sup.num_root_splits, dtype=torch.float64)
    zeros_e = torch.zeros(sup.num_entries, dtype=torch.float64)
    root_c, entry_c, _ = _expected_counts(sup, indexed, zeros_r, zeros_e, average=True)
    log_root, log_entry = _log_normalise(sup, root_c, entry_c)
    assert torch.allclose(sa.root_log_probs, log_root)
    assert torch.allclose(sa.pcsp_log_probs, log_entry)
