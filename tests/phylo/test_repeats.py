import numpy as np
import pytest
import torch

import models.phylo.pruning as pruning
from models.phylo import JC69, LikelihoodCache, pruning_log_likelihood, random_topologies
from models.phylo.batch_layout import BatchPlan, batch_plan_for, tree_layout
from models.phylo.tree_plan import RepeatPlan, plan_for
from tests.phylo.test_likelihood import _random_alignment, _value_and_grad


def _clade_taxa(rows, n):
    """Taxa below every node of a child table, by walking it."""
    taxa = {c: [c] for c in range(n)}
    for j, (a, b) in enumerate(rows):
        taxa[n + j] = taxa[a] + taxa[b]
    return taxa


def test_distinct_clade_patterns_match_numpy_on_ds1(ds1):
    aln, trees = ds1
    tips = aln.partials().mT.contiguous()
    rows = trees[0].children.tolist()
    plan = RepeatPlan(LikelihoodCache(tips), rows)
    # independent count: distinct columns of each clade's full (taxa x 4 x P) tip block
    n, block = tips.shape[0], tips.numpy()
    clade = _clade_taxa(rows, n)
    for j in range(n - 1):
        cols = block[clade[n + j]].reshape(-1, block.shape[-1])
        assert plan.sizes[n + j] == np.unique(cols, axis=1).shape[1]
    assert sum(plan.sizes[n + j] for j in range(n - 1)) == 5118  # vs 26 * 934 = 24284
    assert plan.sizes[2 * n - 2] == tips.shape[-1]  # site patterns are distinct by definition


def test_plan_cache_follows_tip_values(ds1):
    aln, trees = ds1
    tips = aln.partials().mT.contiguous()
    children, lengths = trees[0].children, trees[0].lengths
    trans = JC69().transition_matrices({}, lengths)[:, None]
    pi = torch.full((4,), 0.25, dtype=torch.float64)

    def loglik(t):
        return pruning_log_likelihood(t, aln.weights, children, trans, pi).item()

    reference = loglik(tips)
    cache = LikelihoodCache(tips)
    assert plan_for(cache, children) is plan_for(cache, children)  # the same cache: a hit
    changed = tips.clone()
    changed[0] = 1.0  # taxon 0 becomes missing data everywhere
    unscaled = pruning_log_likelihood(changed, aln.weights, children, trans, pi, optimistic=False)
    assert loglik(changed) == pytest.approx(unscaled.item(), rel=1e-13, abs=0)
    tips[0] = 1.0  # in place: the cached plan of this very tensor must not be reused
    assert loglik(tips) == pytest.approx(unscaled.item(), rel=1e-13, abs=0)
    assert unscaled.item() > reference + 10  # taxon 0 no longer constrains anything


def test_leaf_columns_are_tips_at_parent_patterns(ds1):
    aln, trees = ds1
    tips = aln.partials().mT.contiguous()
    rows = trees[0].children.tolist()
    plan = RepeatPlan(LikelihoodCache(tips), rows)
    n, block = tips.shape[0], tips.numpy()
    clade = _clade_taxa(rows, n)
    for j, (a, b) in enumerate(rows):
        # independent: the parent's distinct clade columns, first occurrence of each
        cols = block[clade[n + j]].reshape(-1, block.shape[-1])
        _, first = np.unique(cols, axis=1, return_index=True)
        for side, c in enumerate((a, b)):
            got = plan.leaf_cols[j][side]
            if c >= n:
                assert got is None
                continue
            # the plan orders patterns by its own ids: compare as sets of (leaf, parent) columns
            expected = {tuple(block[c][:, p]) for p in first}
            assert got.shape[1] == plan.sizes[n + j]
            assert {tuple(col) for col in got.T.tolist()} == expected


def test_batched_topologies_workspace_reused_across_calls(ds1):
    aln, trees = ds1
    tips = aln.partials().mT.contiguous()
    pi = torch.full((4,), 0.25, dtype=torch.float64)

    def batch(k):
        children = torch.stack([t.children for t in trees[:k]])
        lengths = torch.stack([t.lengths for t in trees[:k]])
        trans = JC69().transition_matrices({}, lengths)[..., None, :, :]
        return pruning_log_likelihood(tips, aln.weights, children, trans, pi)

    one_by_one = torch.stack([batch(k)[-1] for k in range(1, 6)])
    first = batch(5)
    second = batch(3)  # another shape: a fresh scratch buffer
    assert torch.equal(batch(5), first)  # the first result is not aliased to the scratch
    assert torch.allclose(first, one_by_one, rtol=1e-13, atol=0)
    assert torch.allclose(second, first[:3], rtol=1e-13, atol=0)


# ------------------------------------------------- batches of topologies over clade repeats


class _Calls(list):
    """The BatchPlans run, and `cache(tips)`: one fresh cache per alignment that tries
    repeats on every batch however few they are."""

    def __init__(self):
        super().__init__()
        self._caches = {}

    def cache(self, tips):
        key = (tips.shape, tips.sum().item())
        if key not in self._caches:
            cache = self._caches[key] = LikelihoodCache(tips)
            cache.worthwhile, cache.probe_first, cache.probe_last = 10.0, 0, 0
        return self._caches[key]


@pytest.fixture
def fresh_patterns(monkeypatch):
    """Empty clade caches, and repeats tried on every batch however few they are."""
    calls = _Calls()
    original = pruning.forward_batched_repeats

    def spy(*args):
        calls.append(args[1])  # the BatchPlan
        return original(*args)

    monkeypatch.setattr(pruning, "forward_batched_repeats", spy)
    return calls


def _clade_columns(block, taxa):
    """Independent: distinct columns of the taxa's tip block, numbered by first occurrence."""
    cols = block[taxa].reshape(-1, block.shape[-1]).T
    _, first, inverse = np.unique(cols, axis=0, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse.ravel()], np.sort(first)


def test_clade_ids_are_canonical_whatever_the_subtree(ds1):
    aln, trees = ds1
    tips = aln.partials().mT.contiguous()
    patterns = LikelihoodCache(tips).patterns
    block, n = tips.numpy(), tips.shape[0]
    seen = 0
    for tree in trees[:6]:  # clades resolved differently below them across trees
        rows = tree.children.tolist()
        taxa = _clade_taxa(rows, n)
        ids = {c: patterns.known(1 << c)[0] for c in range(n)}
        for j, (a, b) in enumerate(rows):
            key = sum(1 << t for t in taxa[n + j])
            hit = patterns.known(key) or patterns.combine(key, ids[a], ids[b], ids[b].max() + 1)
            expected_ids, expected_reps = _clade_columns(block, taxa[n + j])
            np.testing.assert_array_equal(hit[0], expected_ids)
            np.testing.assert_array_equal(hit[1], expected_reps)
            ids[n + j] = hit[0]
            seen += 1
    assert seen == 6 * (n - 1)


def test_a_clade_is_computed_on_its_second_sighting(ds1):
    aln, trees = ds1
    cache = LikelihoodCache(aln.partials().mT.contiguous())
    patterns, rows = cache.patterns, trees[0].children.numpy()
    first = tree_layout(cache, rows)
    assert not first.complete and not patterns._clades  # all new: one column a site
    assert (first.sizes[:-1] == aln.weights.numel()).all()  # ... but the root's
    second = tree_layout(cache, rows)
    assert second.complete and len(patterns._clades) == first.nodes.size - 1  # root apart
    assert second.sizes.sum() == 5118  # as the one-topology plan
    assert tree_layout(cache, rows) is second  # complete layouts are kept


def test_batched_repeats_equal_the_rescaled_pass_on_ds1(ds1, fresh_patterns):
    aln, trees = ds1
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = torch.stack([t.children for t in trees[:10]])
    lengths = torch.stack([t.lengths for t in trees[:10]])
    mixed = torch.cat([children[:5], random_topologies(27, 5, torch.Generator().manual_seed(0))])
    cache = fresh_patterns.cache(tips)
    for topo in (children, children, mixed):  # new clades, then known ones, then a mixture
        fast = _value_and_grad(tips, weights, topo, lengths, cache=cache)
        safe = _value_and_grad(tips, weights, topo, lengths, rescale_every=1, optimistic=False)
        assert torch.allclose(fast[0], safe[0], rtol=1e-13)
        assert torch.allclose(fast[1], safe[1], rtol=1e-11, atol=1e-10)
    plans = fresh_patterns
    assert len(plans) == 3
    columns = [sum(count * width for _, count, width in p.waves) for p in plans]
    assert columns[0] == 25 * 934 + 934  # first sighting: every site, but at the root
    assert columns[1] < 0.3 * 26 * 934  # DS1: 6637 padded columns
    assert columns[1] < columns[2] < columns[0]
    assert any(count > 1 for _, count, _ in plans[1].waves)  # steps merged into waves


def test_batched_repeats_gradcheck(fresh_patterns):
    aln = _random_alignment(7, 40, seed=5)
    g = torch.Generator().manual_seed(3)
    children = random_topologies(7, 3, g)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    trans = torch.rand(3, 11, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pi = torch.rand(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    cat = torch.rand(3, 2, generator=g, dtype=torch.float64, requires_grad=True)

    def f(trans, pi, cat):
        return pruning_log_likelihood(tips, weights, children, trans, pi, cat,
                                      cache=fresh_patterns.cache(tips))  # fmt: skip

    f(trans, pi, cat)  # clades seen once: the second call compresses them
    assert torch.autograd.gradcheck(f, (trans, pi, cat))
    assert len(fresh_patterns) > 1 and fresh_patterns[-1].waves[0][2] < 40


def test_batched_repeats_sum_duplicate_site_columns(ds1, fresh_patterns):
    aln, trees = ds1
    tips, weights = aln.partials().mT.contiguous(), aln.weights.clone()
    # the first 100 patterns again, the weights split between the copies
    doubled = torch.cat([tips, tips[..., :100]], -1)
    split = torch.cat([weights, weights[:100] * 0.25])
    split[:100] *= 0.75
    children = torch.stack([t.children for t in trees[:4]])
    lengths = torch.stack([t.lengths for t in trees[:4]])
    trans = JC69().transition_matrices({}, lengths)[..., None, :, :]
    pi = torch.full((4,), 0.25, dtype=torch.float64)
    expected = pruning_log_likelihood(tips, weights, children, trans, pi, optimistic=False)
    for _ in range(2):
        got = pruning_log_likelihood(doubled, split, children, trans, pi,
                                     cache=fresh_patterns.cache(doubled))  # fmt: skip
        assert torch.allclose(got, expected, rtol=1e-13)
    assert fresh_patterns[-1].root_ids.max() == 933  # duplicates share the root's columns


def test_batches_without_repeats_are_probed_ever_more_rarely(ds1):
    aln, trees = ds1
    tips = aln.partials().mT.contiguous()
    cache = LikelihoodCache(tips)
    credible = torch.stack([t.children for t in trees[:10]])
    g = torch.Generator().manual_seed(1)
    examined, worthwhile = [], []
    for call in range(1, 61):
        topo = random_topologies(27, 10, g) if call <= 16 else credible
        plan = BatchPlan(cache, topo, reuse=True)
        examined += [call] if plan.examined else []
        worthwhile += [call] if plan.worthwhile else []
    # new random topologies never pay: the first batch, then probes 8, 16, 32 apart; the
    # credible set's clades are new at its first probe (25) and compressed at the next
    # (57), from which on every batch is examined
    assert examined == [1, 9, 25, 57, 58, 59, 60]
    assert worthwhile == [57, 58, 59, 60]


def test_a_batch_met_twice_keeps_its_plan(ds1):
    aln, trees = ds1
    tips = aln.partials().mT.contiguous()
    cache = LikelihoodCache(tips)
    cache.probe_first = cache.probe_last = 0
    batch = torch.stack([t.children for t in trees[:5]])
    plans = [batch_plan_for(cache, batch, keep=False) for _ in range(4)]
    assert not plans[0].worthwhile  # clades new: every site
    assert plans[1].worthwhile and plans[2] is plans[1] and plans[3] is plans[1]
    other = batch_plan_for(cache, batch[:4], keep=False)
    assert other is not plans[1] and other.worthwhile  # its clades are known by now


def test_batches_share_the_alignment_layout_as_it_widens(ds1, fresh_patterns):
    aln, trees = ds1
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    every = torch.stack([t.children for t in trees[:20]])
    lengths = torch.stack([t.lengths for t in trees[:20]])
    cache = fresh_patterns.cache(tips)
    patterns = cache.patterns
    for topo in (every, every):  # every clade seen twice: compressed
        pruning_log_likelihood(
            tips,
            weights,
            topo,
            JC69().transition_matrices({}, lengths)[..., None, :, :],
            torch.full((4,), 0.25, dtype=torch.float64),
            cache=cache,
        )
    versions = []
    for first in (0, 5, 10, 3):  # overlapping batches of ten
        topo, x = every[first : first + 10], lengths[first : first + 10]
        fast = _value_and_grad(tips, weights, topo, x, cache=cache)
        safe = _value_and_grad(tips, weights, topo, x, rescale_every=1, optimistic=False)
        assert torch.allclose(fast[0], safe[0], rtol=1e-13)
        assert torch.allclose(fast[1], safe[1], rtol=1e-11, atol=1e-10)
        versions.append(patterns.layout.version)
    assert versions == sorted(versions) and versions[-1] == versions[-2]  # only ever widens
    layout, tree = patterns.layout, tree_layout(cache, every[3].numpy())
    leaf_end = 27 * patterns.leaf_width
    assert tree.row(layout, leaf_end, patterns.leaf_width, cache) is tree._row  # kept
