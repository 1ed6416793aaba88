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


def _compare_batched(monkeypatch, loglik, inputs):
    """`loglik(*inputs)` forward only and with the gradient of a weighted sum, compiled and
    by the tensor pass, to 1e-12 (gradients relative to their largest entry)."""
    ran, results = _spy(monkeypatch), []
    for _ in range(2):  # compiled, then the tensor pass
        with torch.no_grad():
            forward = loglik(*inputs)
        out = loglik(*inputs)
        coef = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view(out.shape)
        results.append((forward, out.detach(), torch.autograd.grad((out * coef).sum(), inputs)))
        _tensor_pass(monkeypatch)
    assert ran == [True, True]  # forward only, then with its backward
    (fast, fast_out, fast_grads), (slow, slow_out, slow_grads) = results
    for a, b in ((fast, slow), (fast_out, slow_out), (fast, fast_out)):
        assert torch.allclose(a, b, rtol=1e-12, atol=0)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        # sums of many pattern terms in another order: relative to the largest entry
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * b.abs().max().item())
    return fast


@needs_kernel
@pytest.mark.parametrize("n_cat", [1, 4])
def test_fused_equals_the_tensor_pass_per_pattern(monkeypatch, n_cat):
    aln = _random_alignment(9, 60, seed=11)  # gaps and IUPAC codes: any tip partials
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(9, 5, torch.Generator().manual_seed(12))
    cache = LikelihoodCache(tips)
    cache.probe_first = cache.probe_last = 10**6  # no clade repeats: every site pattern

    def loglik(*inputs):  # HKY, Gamma categories, a length vector per tree
        return _loglik(tips, weights, children, *inputs, cache=cache, per_pattern=True)

    out = _compare_batched(monkeypatch, loglik, _inputs(5, n_cat, 9, seed=13))
    assert out.shape == (5, weights.shape[0])


@needs_kernel
def test_fused_on_ds1_random_topologies(ds1, monkeypatch):
    aln, trees = ds1
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    g = torch.Generator().manual_seed(14)
    children = random_topologies(27, 10, g)
    lengths = trees[0].lengths * (0.5 + torch.rand(10, 1, generator=g, dtype=torch.float64))
    freqs = torch.full((4,), 0.25, dtype=torch.float64)
    cache = LikelihoodCache(tips)

    def loglik(x):
        trans = JC69().transition_matrices({}, x)[..., None, :, :]
        return pruning_log_likelihood(tips, weights, children, trans, freqs, cache=cache)

    out = _compare_batched(monkeypatch, loglik, (lengths.requires_grad_(),))
    assert (out < -5000).all()


@needs_kernel
def test_fused_gradcheck_batched_topologies(monkeypatch):
    aln = _random_alignment(6, 12, seed=26)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(6, 3, torch.Generator().manual_seed(27))
    cache, ran = LikelihoodCache(tips), _spy(monkeypatch)
    cache.probe_first = cache.probe_last = 10**6  # every site pattern
    assert torch.autograd.gradcheck(
        lambda *x: _loglik(tips, weights, children, *x, cache=cache), _inputs(3, 2, 6, seed=28)
    )
    assert ran and all(ran)


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
@pytest.mark.parametrize("per_pattern", [False, True])
def test_fused_clade_columns_equal_the_tensor_passes(monkeypatch, n_batch, n_cat, per_pattern):
    aln = _random_alignment(9, 60, seed=19)  # gaps and IUPAC codes: leaves with many columns
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(9, 1, torch.Generator().manual_seed(20))[0]
    inputs = _inputs(n_batch, n_cat, 9, seed=21)  # lengths, frequencies, category weights
    results, ran = [], []
    for record in (ran, None):  # compiled, then the tensor passes
        _over_columns(monkeypatch, record)
        cache = LikelihoodCache(tips)
        with torch.no_grad():
            forward = _loglik(tips, weights, children, *inputs, cache=cache,
                              per_pattern=per_pattern)  # fmt: skip
        out = _loglik(tips, weights, children, *inputs, cache=cache, per_pattern=per_pattern)
        coef = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view(out.shape)
        results.append((forward, out.detach(), torch.autograd.grad((out * coef).sum(), inputs)))
    assert ran == [True, True]  # forward only, then with its backward
    (fast, fast_out, fast_grads), (slow, slow_out, slow_grads) = results
    assert torch.allclose(fast, slow, rtol=1e-12, atol=0)
    assert torch.allclose(fast_out, slow_out, rtol=1e-12, atol=0)
    assert torch.allclose(fast, fast_out, rtol=1e-12, atol=0)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        # sums of ~60 pattern terms in another order: relative to the largest entry
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * b.abs().max().item())


@needs_kernel
def test_fused_clade_columns_gradcheck_node_by_node(monkeypatch):
    aln = _random_alignment(6, 12, seed=23)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(6, 1, torch.Generator().manual_seed(24))[0]
    cache, ran = LikelihoodCache(tips), _over_columns(monkeypatch, [])
    assert torch.autograd.gradcheck(  # 3 particles x 2 categories: node by node
        lambda *x: _loglik(tips, weights, children, *x, cache=cache), _inputs(3, 2, 6, seed=25)
    )
    assert ran and all(ran)


@needs_kernel
def test_fused_clade_columns_on_ds1(ds1, monkeypatch):
    aln, trees = ds1
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    freqs = torch.full((4,), 0.25, dtype=torch.float64)
    cache, ran, g = LikelihoodCache(tips), [], torch.Generator()
    for tree, n_batch in zip(trees[:3], (1, 4, 10), strict=True):  # waves, then node by node
        lengths = tree.lengths * (0.5 + torch.rand(n_batch, 1, generator=g.manual_seed(22)))
        trans = JC69().transition_matrices({}, lengths)[..., None, :, :]
        x = lengths.clone().requires_grad_()
        results = []
        for record in (ran, None):  # the kernel, then the tensor pass
            _over_columns(monkeypatch, record)
            with torch.no_grad():
                forward = pruning_log_likelihood(tips, weights, tree.children, trans, freqs,
                                                 cache=cache)  # fmt: skip
            trans_x = JC69().transition_matrices({}, x)[..., None, :, :]
            out = pruning_log_likelihood(tips, weights, tree.children, trans_x, freqs,
                                         cache=cache)  # fmt: skip
            results.append((forward, torch.autograd.grad(out.sum(), x)[0]))
        (fast, fast_grad), (slow, slow_grad) = results
        assert torch.allclose(fast, slow, rtol=1e-12, atol=0) and (fast < -6000).all()
        # |gradients| up to ~1e3, sums of ~1e3 pattern terms in another order
        assert torch.allclose(fast_grad, slow_grad, rtol=1e-12,
                              atol=1e-12 * slow_grad.abs().max().item())  # fmt: skip
    assert ran == [True] * 6
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
