"""The compiled unscaled pass for batches of topologies (`models.phylo.fused`) against the
tensor pass it replaces, and its fallbacks."""

import pytest
import torch

import models.phylo.fused as fused
import models.phylo.repeats as repeats
import models.phylo.scaled as scaled
import models.phylo.waves as waves
from models.phylo import JC69, LikelihoodCache, pruning_log_likelihood, random_topologies
from models.phylo.tree_plan import plan_for
from tests.phylo.test_likelihood import _random_alignment
from tests.phylo.test_waves import _inputs, _loglik

needs_kernel = pytest.mark.skipif(fused.library() is None, reason="no C compiler")


def _spy(monkeypatch):
    """Record whether each call of the kernel ran it (`True`) or declined (`False`)."""
    ran, original = [], fused.fused_root_partials

    def spy(*args):
        out = original(*args)
        ran.append(out is not None)
        return out

    monkeypatch.setattr(scaled, "fused_root_partials", spy)
    return ran


def _tensor_pass(monkeypatch):
    monkeypatch.setattr(scaled, "fused_root_partials", lambda *args: None)


@needs_kernel
@pytest.mark.parametrize("n_cat", [1, 4])
def test_fused_equals_the_tensor_pass_per_pattern(monkeypatch, n_cat):
    aln = _random_alignment(9, 60, seed=11)  # gaps and IUPAC codes: any tip partials
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(9, 5, torch.Generator().manual_seed(12))
    inputs = _inputs(5, n_cat, 9, seed=13)  # HKY, Gamma categories, a length vector per tree
    results, ran = [], _spy(monkeypatch)
    for _ in range(2):
        cache = LikelihoodCache(tips)
        cache.probe_first = cache.probe_last = 10**6  # no clade repeats: every site pattern
        with torch.no_grad():
            results.append(_loglik(tips, weights, children, *inputs, cache=cache,
                                   per_pattern=True))  # fmt: skip
        _tensor_pass(monkeypatch)
    assert ran == [True]
    assert torch.allclose(results[0], results[1], rtol=1e-12, atol=0)
    assert results[0].shape == (5, weights.shape[0])


@needs_kernel
def test_fused_on_ds1_random_topologies_and_gradients_by_the_tensor_pass(ds1, monkeypatch):
    aln, trees = ds1
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(27, 10, torch.Generator().manual_seed(14))
    lengths = trees[0].lengths.expand(10, -1).clone().requires_grad_()
    freqs = torch.full((4,), 0.25, dtype=torch.float64)
    cache, ran = LikelihoodCache(tips), _spy(monkeypatch)

    def loglik(x):
        trans = JC69().transition_matrices({}, x)[..., None, :, :]
        return pruning_log_likelihood(tips, weights, children, trans, freqs, cache=cache)

    with torch.no_grad():
        fast = loglik(lengths)
    assert ran == [True]
    slow = loglik(lengths)  # a gradient needs the tensor pass's partials
    (grad,) = torch.autograd.grad(slow.sum(), lengths)
    assert ran == [True]  # not called: the pass keeps its partials for the gradient
    assert torch.allclose(fast, slow.detach(), rtol=1e-12, atol=0)
    assert (fast < -5000).all() and torch.isfinite(grad).all()
    _tensor_pass(monkeypatch)
    with torch.no_grad():
        assert torch.allclose(fast, loglik(lengths), rtol=1e-12, atol=0)


@needs_kernel
def test_fused_underflow_falls_back_to_the_rescaled_pass(monkeypatch):
    n = 1200  # likelihoods ~e^-1000 per pattern: the unscaled pass underflows to zero
    aln = _random_alignment(n, 8, seed=3)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(n, 2, torch.Generator().manual_seed(4))
    trans = JC69().transition_matrices({}, torch.full((2, 2 * n - 3), 0.3, dtype=torch.float64))
    freqs, cache = torch.full((4,), 0.25, dtype=torch.float64), LikelihoodCache(tips)
    ran = _spy(monkeypatch)
    with torch.no_grad():
        fast = pruning_log_likelihood(tips, weights, children, trans[:, :, None], freqs,
                                      cache=cache)  # fmt: skip
        safe = pruning_log_likelihood(tips, weights, children, trans[:, :, None], freqs,
                                      rescale_every=1, optimistic=False)  # fmt: skip
    assert ran == [True] and cache.unscaled_underflows
    assert torch.isfinite(fast).all() and torch.allclose(fast, safe, rtol=1e-12)


def _over_columns(monkeypatch, ran: list | None) -> list | None:
    """Make the kernel over clade columns record in `ran` whether it ran, or decline
    (`ran=None`: the tensor passes run)."""
    original = fused.fused_repeats_root

    def spy(*args):
        out = original(*args)
        ran.append(out is not None)
        return out

    for module in (repeats, waves):
        monkeypatch.setattr(module, "fused_repeats_root", spy if ran is not None else
                            lambda *args: None)  # fmt: skip
    return ran


@needs_kernel
@pytest.mark.parametrize("n_batch, n_cat", [(1, 1), (1, 4), (3, 4)])  # waves; node by node
def test_fused_clade_columns_equal_the_tensor_passes(monkeypatch, n_batch, n_cat):
    aln = _random_alignment(9, 60, seed=19)  # gaps and IUPAC codes: leaves with many columns
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(9, 1, torch.Generator().manual_seed(20))[0]
    inputs = _inputs(n_batch, n_cat, 9, seed=21)
    cache, ran = LikelihoodCache(tips), _over_columns(monkeypatch, [])
    with torch.no_grad():
        fast = _loglik(tips, weights, children, *inputs, cache=cache, per_pattern=True)
        assert ran == [True]
        _over_columns(monkeypatch, None)
        slow = _loglik(tips, weights, children, *inputs, cache=cache, per_pattern=True)
    assert torch.allclose(fast, slow, rtol=1e-12, atol=0)
    assert fast.shape == (n_batch, weights.shape[0])
    with_grad = _loglik(tips, weights, children, *inputs, cache=cache)
    assert torch.allclose(fast.sum(-1), with_grad.detach(), rtol=1e-12, atol=0)


@needs_kernel
def test_fused_clade_columns_on_ds1(ds1, monkeypatch):
    aln, trees = ds1
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    freqs = torch.full((4,), 0.25, dtype=torch.float64)
    cache, ran, g = LikelihoodCache(tips), [], torch.Generator()
    for tree, n_batch in zip(trees[:3], (1, 4, 10), strict=True):  # waves, then node by node
        lengths = tree.lengths * (0.5 + torch.rand(n_batch, 1, generator=g.manual_seed(22)))
        trans = JC69().transition_matrices({}, lengths)[..., None, :, :]
        results = []
        for record in (ran, None):  # the kernel, then the tensor pass
            _over_columns(monkeypatch, record)
            results.append(pruning_log_likelihood(tips, weights, tree.children, trans, freqs,
                                                  cache=cache))  # fmt: skip
        assert torch.allclose(*results, rtol=1e-12, atol=0) and (results[0] < -6000).all()
    assert ran == [True] * 3
    plan = plan_for(cache, trees[0].children)
    assert plan.packed.index.numel() == 2 * sum(plan.sizes[v] for v in range(27, 53))
    assert plan.nbytes > plan.packed.nbytes > 0  # counted in the cache's bound


def test_fused_declines_what_it_does_not_handle():
    aln = _random_alignment(5, 10, seed=15)
    tips = aln.partials().mT.contiguous()
    children = random_topologies(5, 2, torch.Generator().manual_seed(16))
    trans_n = torch.eye(4, dtype=torch.float64).expand(8, 2, 1, 4, 4).contiguous()
    cache = LikelihoodCache(tips)
    assert fused.fused_root_partials(trans_n.float(), tips.float(), children, cache) is None
    assert fused.fused_root_partials(trans_n, tips, children[0], cache) is None  # one tree
    bad = children.clone()
    bad[:, 0, 0] = 7  # row 0 reads node 7 before it is computed
    assert fused.fused_root_partials(trans_n, tips, bad, cache) is None
    packed = plan_for(cache, children[0]).packed
    assert fused.fused_repeats_root(trans_n.float(), packed, cache) is None


def test_without_a_compiler_the_tensor_pass_runs(monkeypatch):
    for env, value in (("VARINF_FUSED", "0"), ("CC", "false")):  # disabled; a failing build
        with monkeypatch.context() as m:
            m.setenv(env, value)
            assert fused.library.__wrapped__() is None
    monkeypatch.setattr(fused.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    assert fused.library.__wrapped__() is None
    monkeypatch.setattr(fused, "library", lambda: None)
    aln = _random_alignment(6, 20, seed=17)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(6, 3, torch.Generator().manual_seed(18))
    trans = JC69().transition_matrices({}, torch.full((3, 9), 0.1, dtype=torch.float64))
    freqs = torch.full((4,), 0.25, dtype=torch.float64)
    with torch.no_grad():
        out = pruning_log_likelihood(tips, weights, children, trans[:, :, None], freqs)
        safe = pruning_log_likelihood(tips, weights, children, trans[:, :, None], freqs,
                                      optimistic=False)  # fmt: skip
    assert torch.allclose(out, safe, rtol=1e-12)
