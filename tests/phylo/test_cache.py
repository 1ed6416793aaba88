"""The per-alignment `LikelihoodCache`: bounded, clearable, and it remembers underflow."""

import numpy as np
import torch

import models.phylo.pruning as pruning
from models.phylo import JC69, LikelihoodCache, pruning_log_likelihood, random_topologies
from models.phylo.cache import LRU
from tests.phylo.test_likelihood import _random_alignment


def _loglik(tips, weights, children, lengths, cache):
    trans = JC69().transition_matrices({}, lengths)[..., None, :, :]
    pi = torch.full((4,), 0.25, dtype=torch.float64)
    return pruning_log_likelihood(tips, weights, children, trans, pi, cache=cache)


def test_lru_is_bounded_in_bytes():
    table = LRU(max_bytes=1000)
    for i in range(50):
        table.put(i, torch.zeros(10, dtype=torch.float64))  # 80 bytes each
        assert table.nbytes <= 1000
    assert len(table) == 12 and 49 in table and 37 not in table
    assert table.get(38) is not None  # now the most recent: survives the next eviction
    table.put(50, torch.zeros(10, dtype=torch.float64))
    assert 38 in table and 39 not in table


def test_cache_is_bounded_and_cleared():
    aln = _random_alignment(12, 300, seed=1)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    cache = LikelihoodCache(tips, max_bytes=1 << 16)
    cache.probe_first = cache.probe_last = 0  # look at every batch: the tables fill up
    g = torch.Generator().manual_seed(0)
    lengths = torch.full((4, 21), 0.1, dtype=torch.float64)
    reference = None
    for _ in range(30):
        topo = random_topologies(12, 4, g)
        out = _loglik(tips, weights, topo, lengths, cache)
        fresh = _loglik(tips, weights, topo, lengths, LikelihoodCache(tips))
        assert torch.allclose(out, fresh, rtol=1e-13)  # eviction never changes a value
        tables = sum(t.nbytes for t in cache.tables.values())
        assert tables <= cache.max_bytes
        reference = out
    assert cache.nbytes > 0 and len(cache.tables["seen"]) > 0
    cache.clear()
    assert cache.nbytes == 0 and all(len(t) == 0 for t in cache.tables.values())
    assert torch.allclose(_loglik(tips, weights, topo, lengths, cache), reference, rtol=1e-13)


def test_cache_refuses_another_alignment():
    tips = _random_alignment(5, 20, seed=2).partials().mT.contiguous()
    other = _random_alignment(6, 20, seed=2).partials().mT.contiguous()
    cache = LikelihoodCache(tips)
    children = random_topologies(6, 1)[0]
    try:
        _loglik(other, torch.ones(other.shape[-1]), children, torch.full((9,), 0.1), cache)
    except ValueError as err:
        assert "one cache per alignment" in str(err)
    else:
        raise AssertionError("a cache of another alignment was accepted")


def test_underflow_is_remembered_on_1200_taxa(monkeypatch):
    n = 1200  # likelihoods ~e^-1000 per pattern: the unscaled pass underflows to zero
    aln = _random_alignment(n, 8, seed=3)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(n, 1, torch.Generator().manual_seed(4))[0]
    lengths = torch.full((2 * n - 3,), 0.3, dtype=torch.float64)
    unscaled = []
    for name in ("forward_waves", "forward_repeats"):  # the one-topology unscaled passes
        original = getattr(pruning, name)

        def spy(*args, _original=original):
            unscaled.append(True)
            return _original(*args)

        monkeypatch.setattr(pruning, name, spy)
    cache = LikelihoodCache(tips)
    first = _loglik(tips, weights, children, lengths, cache)
    assert unscaled == [True] and cache.unscaled_underflows  # tried, underflowed, remembered
    second = _loglik(tips, weights, children, lengths, cache)
    assert unscaled == [True]  # the second call does not try the unscaled pass
    assert torch.isfinite(first) and torch.equal(first, second)
    cache.clear()
    _loglik(tips, weights, children, lengths, cache)
    assert unscaled == [True, True]  # forgotten with the rest


def _address(array) -> int:
    if torch.is_tensor(array):
        return array.untyped_storage().data_ptr()
    return (array.base if array.base is not None else array).__array_interface__["data"][0]


def _held_bytes(value, shared: set) -> int:
    """Bytes of the arrays and tensors reachable from a cached value, each storage once,
    leaving out storages in ``shared`` (the alignment's, which the cache owns apart)."""
    seen, total, stack = set(shared), 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor | np.ndarray):
            key = _address(item)
            if key not in seen:
                seen.add(key)
                total += (
                    item.untyped_storage().nbytes()
                    if torch.is_tensor(item)
                    else ((item.base if item.base is not None else item).nbytes)
                )
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif hasattr(item, "__dict__") and not isinstance(item, LikelihoodCache):
            stack.extend(v for k, v in vars(item).items() if k != "patterns")
    return total


def test_cached_values_count_the_memory_they_hold():
    # a VBPI run meets new topologies every step: if a kept layout or plan under-reports its
    # size, the byte bound holds on paper while the process grows without end
    aln = _random_alignment(12, 300, seed=5)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    cache = LikelihoodCache(tips, max_bytes=1 << 22)
    cache.probe_first = cache.probe_last = 0
    g = torch.Generator().manual_seed(1)
    lengths = torch.full((4, 21), 0.1, dtype=torch.float64)
    topologies = [random_topologies(12, 4, g) for _ in range(6)]
    for topo in topologies * 2:  # the second sighting keeps layouts and plans
        _loglik(tips, weights, topo, lengths, cache)
        _loglik(tips, weights, topo[0], lengths[0], cache)
    patterns = cache.patterns
    owned_apart = [
        patterns.tip_columns,
        patterns.root_ids(tips.device),
        patterns.sites,
        *(a for ids_reps in patterns._leaves for a in ids_reps),
        *(a for value, _ in cache.tables["clades"]._table.values() for a in value),
    ]
    shared = {_address(a) for a in owned_apart}  # counted by the clade tables, or the alignment's
    checked = 0
    for name in ("trees", "plans"):
        for value, declared in cache.tables[name]._table.values():
            if isinstance(value, bool):
                continue
            assert _held_bytes(value, shared) <= declared, (name, type(value).__name__)
            checked += 1
    assert checked >= 6


def test_a_zero_likelihood_is_not_taken_for_underflow():
    # an edge of length 0 under a change of state has likelihood exactly 0 (a leapfrog step far
    # out makes one): no rescaling helps, so it must not switch the alignment to rescaled passes
    aln = _random_alignment(8, 50, seed=6)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = random_topologies(8, 1, torch.Generator().manual_seed(7))[0]
    cache = LikelihoodCache(tips)
    lengths = torch.full((13,), 0.1, dtype=torch.float64)
    lengths[:8] = 0.0  # every leaf edge: differing tips are impossible
    assert _loglik(tips, weights, children, lengths, cache) == -torch.inf
    assert not cache.unscaled_underflows
    lengths[:8] = 0.1
    assert torch.isfinite(_loglik(tips, weights, children, lengths, cache))
    assert not cache.unscaled_underflows
