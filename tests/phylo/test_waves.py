"""The level schedule of one topology (`models.phylo.waves`) against the node-by-node pass,
and the cheap probe of batches of new topologies (`models.phylo.probes`)."""

import pytest
import torch

import models.phylo.pruning as pruning
from models.phylo import (
    HKY,
    LikelihoodCache,
    discrete_gamma_rates,
    pruning_log_likelihood,
    random_topologies,
)
from models.phylo.probes import may_pay
from models.phylo.tree_plan import plan_for
from tests.phylo.test_likelihood import _random_alignment


def _inputs(n_batch, n_cat, n, seed):
    """HKY transition matrices of `n_batch` random branch-length vectors with `n_cat` Gamma
    categories, leaves for gradients: lengths, frequencies, category weights."""
    g = torch.Generator().manual_seed(seed)
    lengths = 0.02 + 0.3 * torch.rand(n_batch, 2 * n - 3, generator=g, dtype=torch.float64)
    freqs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    cat_w = torch.softmax(torch.rand(n_cat, generator=g, dtype=torch.float64), 0)
    return [x.requires_grad_() for x in (lengths, freqs, cat_w)]


def _loglik(tips, weights, children, lengths, freqs, cat_w, **kw):
    model = HKY()
    params = {"kappa": torch.tensor(2.5, dtype=torch.float64), "freqs": freqs}
    rates = discrete_gamma_rates(torch.tensor(0.7, dtype=torch.float64), cat_w.shape[0])
    trans = model.transition_matrices(params, lengths[..., None] * rates)  # (N, E, C, 4, 4)
    return pruning_log_likelihood(tips, weights, children, trans, freqs, cat_w, **kw)


def _paths(monkeypatch):
    taken = []
    for name in ("forward_waves", "forward_repeats"):
        original = getattr(pruning, name)

        def spy(*args, _original=original, _name=name):
            taken.append(_name)
            return _original(*args)

        monkeypatch.setattr(pruning, name, spy)
    return taken


@pytest.mark.parametrize("n_batch, n_cat", [(1, 1), (1, 4), (3, 1)])
def test_waves_equal_the_node_by_node_pass_with_gradients(ds1, monkeypatch, n_batch, n_cat):
    aln, trees = ds1
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children, n = trees[0].children, tips.shape[0]
    taken, results = _paths(monkeypatch), []
    for up_to in (4, 0):  # level by level, then node by node
        monkeypatch.setattr(pruning, "_WAVES_UP_TO", up_to)
        inputs = _inputs(n_batch, n_cat, n, seed=n_batch)
        cache = LikelihoodCache(tips)
        out = _loglik(tips, weights, children, *inputs, cache=cache)
        with torch.no_grad():  # forward only: scratch buffers instead of kept tensors
            twice = [_loglik(tips, weights, children, *inputs, cache=cache) for _ in range(2)]
        results.append((out.detach(), torch.autograd.grad(out.sum(), inputs), twice))
    assert taken == ["forward_waves"] * 3 + ["forward_repeats"] * 3
    (waves, waves_grad, waves_fwd), (nodes, nodes_grad, nodes_fwd) = results
    assert torch.allclose(waves, nodes, rtol=1e-12, atol=0)
    for a, b in zip(waves_fwd, nodes_fwd, strict=True):
        assert torch.allclose(a, waves, rtol=1e-13, atol=0)
        assert torch.allclose(b, nodes, rtol=1e-13, atol=0)
    for a, b in zip(waves_grad, nodes_grad, strict=True):
        # |gradients| up to ~1e3, sums of ~1e3 pattern terms in another order
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * b.abs().max().item())


def test_waves_equal_the_rescaled_pass_on_ambiguous_tips(monkeypatch):
    aln = _random_alignment(9, 60, seed=5)  # gaps and IUPAC codes: leaves with many columns
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(9, 1, torch.Generator().manual_seed(6))[0]
    taken = _paths(monkeypatch)
    inputs = _inputs(2, 2, 9, seed=7)
    fast = _loglik(tips, weights, children, *inputs, per_pattern=True)
    grads = torch.autograd.grad(fast.sum(), inputs)
    assert taken == ["forward_waves"]
    safe = _loglik(tips, weights, children, *inputs, per_pattern=True, optimistic=False)
    safe_grads = torch.autograd.grad(safe.sum(), inputs)
    assert torch.allclose(fast, safe, rtol=1e-12, atol=0)
    for a, b in zip(grads, safe_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-11, atol=1e-12 * b.abs().max().item())


def test_waves_gradcheck():
    aln = _random_alignment(6, 12, seed=8)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(6, 1, torch.Generator().manual_seed(9))[0]
    cache = LikelihoodCache(tips)
    assert torch.autograd.gradcheck(
        lambda *x: _loglik(tips, weights, children, *x, cache=cache), _inputs(2, 2, 6, seed=10)
    )


def test_wave_plan_respects_the_post_order_on_ds1(ds1):
    aln, trees = ds1
    tips = aln.partials().mT.contiguous()
    for tree in trees[:5]:
        plan = plan_for(LikelihoodCache(tips), tree.children)
        waves, n = plan.waves, tips.shape[0]
        wave_of = {c: -1 for c in range(n)}
        nodes = waves.nodes.tolist() + [2 * n - 2]  # the root's wave is last
        for w, (first, count, width) in enumerate(waves.waves):
            for v in nodes[first : first + count]:
                wave_of[v] = w
                assert width >= plan.sizes[v]  # padded, never cut
        assert sorted(wave_of) == list(range(2 * n - 1))  # every node once
        for j, (a, b) in enumerate(plan.rows):
            assert wave_of[a] < wave_of[n + j] and wave_of[b] < wave_of[n + j]
        assert len(waves.waves) <= 14  # 26 nodes in about a dozen waves


def test_a_probe_of_new_topologies_builds_nothing_and_learns_their_clades(ds1):
    aln, trees = ds1
    tips = aln.partials().mT.contiguous()
    cache = LikelihoodCache(tips)
    batch = random_topologies(27, 10, torch.Generator().manual_seed(11)).numpy()
    assert not may_pay(cache, batch)  # every clade new: each step is as wide as the sites
    assert len(cache.tables["trees"]) == 0 and len(cache.tables["clades"]) == 0
    assert len(cache.tables["seen"]) > 200  # 10 x 25 non-root clades, a few shared
    credible = torch.stack([t.children for t in trees[:10]]).numpy()
    cache.probe_first = cache.probe_last = 0
    assert not may_pay(cache, credible)  # new at first sight ...
    assert may_pay(cache, credible)  # ... then seen: worth building a plan
