import numpy as np
import pytest
import torch

from models.phylo import JC69, pruning_log_likelihood
from models.phylo.repeats import RepeatPlan, plan_for


def test_distinct_clade_patterns_match_numpy_on_ds1(ds1):
    aln, trees = ds1
    tips = aln.partials().mT.contiguous()
    rows = trees[0].children.tolist()
    plan = RepeatPlan(tips, rows)
    # independent count: distinct columns of each clade's full (taxa x 4 x P) tip block
    n, block = tips.shape[0], tips.numpy()
    clade = {c: [c] for c in range(n)}
    for j, (a, b) in enumerate(rows):
        clade[n + j] = clade[a] + clade[b]
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
    rows = children.tolist()
    assert plan_for(tips.clone(), rows) is plan_for(tips, rows)  # equal values: cache hit
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
    plan = RepeatPlan(tips, rows)
    n, block = tips.shape[0], tips.numpy()
    clade = {c: [c] for c in range(n)}
    for j, (a, b) in enumerate(rows):
        clade[n + j] = clade[a] + clade[b]
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
