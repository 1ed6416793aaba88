import itertools
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

import models.phylo.pruning as pruning
from models.phylo import (
    GTR,
    HKY,
    JC69,
    K80,
    Alignment,
    LikelihoodCache,
    discrete_gamma_rates,
    log_likelihood,
    pruning_log_likelihood,
    random_topologies,
    read_alignment,
)

# ---------------------------------------------------------------- brute-force reference


def _edges(children, lengths):
    """Unrooted edges (u, v, length) of a canonical table."""
    rows = children.tolist()
    n = len(rows) + 1
    edges = [(c, n + j, float(lengths[c])) for j, row in enumerate(rows[:-1]) for c in row]
    edges.append((2 * n - 3, n - 1, float(lengths[n - 1])))
    return edges


def _rooted_on(edges, which, frac):
    """Parent map {node: (parent, length)} with a root 'R' splitting edge ``which``."""
    u, v, t = edges[which]
    adj = {}
    for a, b, ln in edges:
        adj.setdefault(a, []).append((b, ln))
        adj.setdefault(b, []).append((a, ln))
    parent = {u: ("R", frac * t), v: ("R", (1 - frac) * t)}
    stack = [u, v]
    while stack:
        x = stack.pop()
        for y, ln in adj[x]:
            if y not in parent and y not in (u, v):
                parent[y] = (x, ln)
                stack.append(y)
    return parent


def _brute_force(tips, weights, parent, q, pi, rates):
    """Sum over every assignment of states to the internal nodes (numpy, scipy.linalg.expm)."""
    n = tips.shape[0]
    internal = ["R"] + sorted({p for p, _ in parent.values()} - {"R"})
    total = np.zeros(tips.shape[1])
    for r in rates:
        mats = {k: scipy.linalg.expm(q * t * r) for k, (_, t) in parent.items()}
        lik = np.zeros(tips.shape[1])
        for states in itertools.product(range(4), repeat=len(internal)):
            s = dict(zip(internal, states, strict=True))
            term = np.full(tips.shape[1], pi[s["R"]])
            for k, (p, _) in parent.items():
                if k < n:
                    term = term * (tips[k] @ mats[k][s[p]])
                else:
                    term = term * mats[k][s[p], s[k]]
            lik += term
        total += lik / len(rates)
    return float((np.log(total) * weights).sum())


def _q(exch, pi):
    r = np.zeros((4, 4))
    r[np.triu_indices(4, 1)] = exch
    q = (r + r.T) * pi[None, :]
    q -= np.diag(q.sum(1))
    return q / -(pi * np.diag(q)).sum()


FREQS = [0.1, 0.2, 0.3, 0.4]
MODELS = [
    (JC69(), [1.0] * 6, [0.25] * 4),
    (K80(3.0), [1, 3, 1, 1, 3, 1], [0.25] * 4),
    (HKY(3.0, FREQS), [1, 3, 1, 1, 3, 1], FREQS),
    (GTR([1.0, 2.0, 0.5, 0.7, 4.0, 1.5], FREQS), [1.0, 2.0, 0.5, 0.7, 4.0, 1.5], FREQS),
]


def _random_alignment(n, sites, seed):
    g = torch.Generator().manual_seed(seed)
    alphabet = "ACGTACGTACGTRYN-"
    seqs = [
        "".join(alphabet[i] for i in torch.randint(0, 16, (sites,), generator=g)) for _ in range(n)
    ]
    return Alignment.from_sequences([f"t{i}" for i in range(n)], seqs)


@pytest.mark.parametrize("n", [4, 5])
@pytest.mark.parametrize("model, exch, pi", MODELS, ids=lambda m: getattr(m, "name", ""))
@pytest.mark.parametrize("gamma", [None, 0.6])
def test_pruning_equals_brute_force_at_every_root(n, model, exch, pi, gamma):
    aln = _random_alignment(n, 25, seed=n)
    g = torch.Generator().manual_seed(10 * n)
    children = random_topologies(n, 1, g)[0]
    lengths = 0.05 + 0.5 * torch.rand(2 * n - 3, generator=g, dtype=torch.float64)
    rates = None if gamma is None else discrete_gamma_rates(gamma, 4)
    ours = log_likelihood(aln, children, lengths, model, rates=rates).item()
    q = _q(np.array(exch, dtype=float), np.array(pi))
    tips, weights = aln.partials().numpy(), aln.weights.numpy()
    edges = _edges(children, lengths)
    rate_list = [1.0] if rates is None else rates.tolist()
    # root on every edge (three of them with Gamma, for time): reversibility makes it irrelevant
    for which in range(0, len(edges), 1 if gamma is None else 3):
        parent = _rooted_on(edges, which, frac=0.3)
        ref = _brute_force(tips, weights, parent, q, np.array(pi), rate_list)
        assert ours == pytest.approx(ref, abs=1e-9, rel=1e-12)


def test_discrete_gamma_matches_yang_1994():
    # Yang (1994), J. Mol. Evol. 39:306, mean rates for alpha = 0.5, K = 4
    expected = torch.tensor([0.0334, 0.2519, 0.8203, 2.8944], dtype=torch.float64)
    assert torch.allclose(discrete_gamma_rates(0.5, 4), expected, atol=1e-4)
    # IQ-TREE 2.0.7 printed these category rates for alpha = 0.37 (see test_iqtree_references)
    iqtree = torch.tensor([0.01263, 0.159, 0.6967, 3.132], dtype=torch.float64)
    assert torch.allclose(discrete_gamma_rates(0.37, 4), iqtree, rtol=5e-4)


@pytest.mark.parametrize("model", [K80(2.0), HKY(2.0, FREQS), GTR([1, 2, 3, 4, 5, 6], FREQS)])
def test_transition_matrices_match_matrix_exp(model):
    p = model.sample()
    t = torch.tensor([1e-6, 0.1, 1.0, 10.0], dtype=torch.float64)
    expected = torch.linalg.matrix_exp(model.rate_matrix(p) * t[:, None, None])
    assert torch.allclose(model.transition_matrices(p, t), expected, atol=1e-13)


# ---------------------------------------------------------------- published references


def test_ds1_jc69_reference(ds1):
    # IQ-TREE 2.0.7 with fixed branch lengths, torchtree, vbpi-torch and phyloinfer agree
    aln, trees = ds1
    value = log_likelihood(aln, trees[0].children, trees[0].lengths, "JC69")
    assert value.item() == pytest.approx(-6884.9702, abs=1e-4)


def test_iqtree_references(ds1, data_dir):
    aln, trees = ds1
    # iqtree2 (Debian 2.0.7) -s ds1.fasta -te tree1.nwk -blfix -nt 1
    #   -m "GTR{1.2,3.4,0.8,1.1,4.5}+F{0.3,0.2,0.22,0.28}+G4{0.37}"
    # with tree1.nwk the first line of bito_ds1/ds1.credible.with-branches.nwk:
    # "Log-likelihood of the tree: -6715.4789"
    gtr = GTR([1.2, 3.4, 0.8, 1.1, 4.5, 1.0], [0.3, 0.2, 0.22, 0.28])
    rates = discrete_gamma_rates(0.37, 4)
    value = log_likelihood(aln, trees[0].children, trees[0].lengths, gtr, rates=rates)
    assert value.item() == pytest.approx(-6715.4789, abs=1e-4)
    # DS4 (41 taxa): iqtree2 -s alignments_fasta/DS4.fasta -te ds4top.nwk -nt 1
    #   -m "HKY{2.5}+F{0.27,0.23,0.24,0.26}+G4{0.8}" with ds4top.nwk the first topology of
    # credible_sets_19dubious/JC_no_gamma_credible_set_ds4; IQ-TREE fitted the branch lengths,
    # then `-te hky.treefile -blfix` on its output tree (DS4_HKY_TREE below) gave
    # "Log-likelihood of the tree: -12073.6814"; with -m "K80{2.5}+G4{0.8}": -12093.6666
    ds4 = read_alignment(data_dir / "alignments_fasta" / "DS4.fasta")
    tree = read_trees_from_string(DS4_HKY_TREE, ds4.taxa)
    rates = discrete_gamma_rates(0.8, 4)
    hky = HKY(2.5, [0.27, 0.23, 0.24, 0.26])
    value = log_likelihood(ds4, tree.children, tree.lengths, hky, rates=rates)
    assert value.item() == pytest.approx(-12073.6814, abs=1e-4)
    value = log_likelihood(ds4, tree.children, tree.lengths, K80(2.5), rates=rates)
    assert value.item() == pytest.approx(-12093.6666, abs=1e-4)


def read_trees_from_string(newick, taxa):
    from models.phylo import parse_newick

    return parse_newick(newick, taxa)


# ---------------------------------------------------------------- batching and scaling


def test_batched_topologies_and_particles_equal_a_loop(ds1):
    aln, trees = ds1
    children = torch.stack([t.children for t in trees[:4]])  # (4, n-1, 2)
    g = torch.Generator().manual_seed(0)
    lengths = 0.001 + 0.05 * torch.rand(3, 4, 51, generator=g, dtype=torch.float64)
    rates = discrete_gamma_rates(0.5, 2)
    batched = log_likelihood(aln, children, lengths, "HKY", rates=rates)
    assert batched.shape == (3, 4)
    for k in range(3):
        for b in range(4):
            one = log_likelihood(aln, children[b], lengths[k, b], "HKY", rates=rates)
            assert batched[k, b].item() == pytest.approx(one.item(), abs=1e-9)


def test_rescaling_prevents_underflow_on_many_taxa():
    n = 1200
    aln = _random_alignment(n, 8, seed=3)
    children = random_topologies(n, 1, torch.Generator().manual_seed(4))[0]
    lengths = torch.full((2 * n - 3,), 0.3, dtype=torch.float64)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    trans = JC69().transition_matrices({}, lengths)[:, None]
    pi = torch.full((4,), 0.25, dtype=torch.float64)
    every_node = pruning_log_likelihood(tips, weights, children, trans, pi, rescale_every=1)
    sparse = pruning_log_likelihood(tips, weights, children, trans, pi, rescale_every=4)
    never = pruning_log_likelihood(tips, weights, children, trans, pi, rescale_every=10**6)
    assert torch.isfinite(every_node) and every_node < -5000  # far below float64's 1e-308
    assert sparse.item() == pytest.approx(every_node.item(), rel=1e-12)
    assert never.item() == pytest.approx(every_node.item(), rel=1e-12)  # detected and redone
    # gradients on the deep tree: sparse rescaling (with its fallback) equals full rescaling
    grads = []
    for every in (1, 4):
        x = lengths.clone().requires_grad_()
        p = JC69().transition_matrices({}, x)[:, None]
        pruning_log_likelihood(tips, weights, children, p, pi, rescale_every=every).backward()
        grads.append(x.grad)
    assert torch.isfinite(grads[0]).all()
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-10)
    batched = pruning_log_likelihood(tips, weights, children.expand(2, -1, -1), trans, pi,
                                     rescale_every=10**6)  # fmt: skip
    assert torch.allclose(batched, every_node.expand(2), rtol=1e-12)


def _count_passes(monkeypatch):
    """Record the rescaling period of every pruning pass run."""
    periods = []
    for name in ("_forward_shared", "_forward_batched"):
        original = getattr(pruning, name)

        def spy(*args, _original=original):
            periods.append(args[6])
            return _original(*args)

        monkeypatch.setattr(pruning, name, spy)
    for name in ("forward_waves", "forward_repeats", "forward_batched_repeats"):
        original = getattr(pruning, name)

        def spy_repeats(*args, _original=original):
            periods.append("repeats")  # unscaled, over distinct clade patterns
            return _original(*args)

        monkeypatch.setattr(pruning, name, spy_repeats)
    return periods


def _eager_cache(tips):
    """A fresh cache (no clades known yet) that examines every batch (test_repeats checks
    the probing schedule)."""
    cache = LikelihoodCache(tips)
    cache.probe_first = cache.probe_last = 0
    return cache


def _value_and_grad(tips, weights, children, lengths, **kw):
    x = lengths.clone().requires_grad_()
    trans = JC69().transition_matrices({}, x)[..., None, :, :]
    pi = torch.full((4,), 0.25, dtype=torch.float64)
    out = pruning_log_likelihood(tips, weights, children, trans, pi, **kw)
    out.sum().backward()
    return out.detach(), x.grad


def test_optimistic_unscaled_pass_is_kept_on_ds1(ds1, monkeypatch):
    aln, trees = ds1
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    children = torch.stack([t.children for t in trees[:3]])
    lengths = torch.stack([t.lengths for t in trees[:3]])
    periods, cache = _count_passes(monkeypatch), _eager_cache(tips)
    # a batch of new topologies: unscaled over every pattern; seen again: over clade repeats
    for topo, first in ((children, 0), (children, "repeats"), (children[0], "repeats")):
        periods.clear()
        fast = _value_and_grad(tips, weights, topo, lengths, cache=cache)
        assert periods == [first]  # unscaled, accepted
        safe = _value_and_grad(tips, weights, topo, lengths, rescale_every=1, optimistic=False)
        assert periods == [first, 1]
        assert torch.allclose(fast[0], safe[0], rtol=1e-13)
        # each gradient sums ~1e3 pattern terms of size up to ~1e2 in another order: rounding
        # ~1e-16 * 1e5; |gradients| range from 1e-5 to 1e3, so the bound is absolute
        assert torch.allclose(fast[1], safe[1], rtol=1e-11, atol=1e-10)


def test_optimistic_pass_falls_back_when_it_underflows(monkeypatch):
    n = 1200  # likelihoods ~e^-1000 per pattern: the unscaled pass underflows to zero
    aln = _random_alignment(n, 8, seed=3)
    children = random_topologies(n, 2, torch.Generator().manual_seed(4))
    lengths = torch.full((2, 2 * n - 3), 0.3, dtype=torch.float64)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    periods = _count_passes(monkeypatch)
    for topo, first in ((children, 0), (children[0], "repeats")):
        periods.clear()
        fast = _value_and_grad(tips, weights, topo, lengths)
        assert periods == [first, 4]  # rejected, then rescaled every 4 nodes
        safe = _value_and_grad(tips, weights, topo, lengths, rescale_every=1, optimistic=False)
        assert torch.isfinite(fast[0]).all() and (fast[0] < -5000).all()
        assert torch.allclose(fast[0], safe[0], rtol=1e-12)
        assert torch.isfinite(fast[1]).all()
        assert torch.allclose(fast[1], safe[1], rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- gradients


def test_gradcheck_batched_topologies():
    aln = _random_alignment(6, 12, seed=7)
    g = torch.Generator().manual_seed(1)
    children = random_topologies(6, 2, g)
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    trans = torch.rand(2, 9, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pi = torch.rand(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    cat = torch.rand(2, generator=g, dtype=torch.float64, requires_grad=True)
    # optimistic=True takes the unscaled pass here; False covers the rescaled ones
    for every, optimistic in ((1, False), (3, False), (3, True)):
        for topo in (children, children[0]):

            def f(trans, pi, cat, topo=topo, every=every, opt=optimistic):
                return pruning_log_likelihood(tips, weights, topo, trans, pi, cat, every, opt)

            assert torch.autograd.gradcheck(f, (trans, pi, cat))


def test_ds1_branch_gradient_matches_finite_differences(ds1):
    aln, trees = ds1
    children, lengths = trees[0].children, trees[0].lengths.clone().requires_grad_()
    log_likelihood(aln, children, lengths).backward()
    h = 1e-6
    for k in [0, 13, 26, 30, 50]:
        e = torch.zeros_like(lengths)
        e[k] = h
        with torch.no_grad():
            up = log_likelihood(aln, children, lengths + e)
            down = log_likelihood(aln, children, lengths - e)
        fd = ((up - down) / (2 * h)).item()
        # central differences: O(h^2 f''') + O(eps |f| / h) ~ 1e-6 absolute here
        assert lengths.grad[k].item() == pytest.approx(fd, abs=1e-4, rel=1e-7)


def test_substitution_parameter_gradients_match_finite_differences():
    aln = _random_alignment(5, 30, seed=11)
    children = random_topologies(5, 1, torch.Generator().manual_seed(2))[0]
    lengths = torch.linspace(0.05, 0.4, 7, dtype=torch.float64)
    rates0 = torch.tensor([1.0, 2.0, 0.5, 0.7, 4.0, 1.5], dtype=torch.float64)
    freqs0 = torch.tensor(FREQS, dtype=torch.float64)

    def f(rates, freqs, shape):
        model = GTR(rates, freqs)
        params = {"rates": rates, "freqs": freqs}
        gamma = discrete_gamma_rates(shape, 4)
        return log_likelihood(aln, children, lengths, model, params=params, rates=gamma)

    x = (rates0.clone().requires_grad_(), freqs0.clone().requires_grad_(),
         torch.tensor(0.7, dtype=torch.float64, requires_grad=True))  # fmt: skip
    f(*x).backward()
    h = 1e-6
    for i, arg in enumerate(x):
        for j in range(arg.numel()):
            e = torch.zeros_like(arg).flatten()
            e[j] = h
            e = e.reshape(arg.shape)
            plus = [a.detach() + (e if m == i else 0) for m, a in enumerate(x)]
            minus = [a.detach() - (e if m == i else 0) for m, a in enumerate(x)]
            fd = ((f(*plus) - f(*minus)) / (2 * h)).item()
            assert arg.grad.flatten()[j].item() == pytest.approx(fd, abs=1e-5, rel=1e-5)


DS4_HKY_TREE = (Path(__file__).parent / "ds4_hky_iqtree.nwk").read_text()


def test_many_topologies_in_chunks_equal_one_at_a_time():
    aln = _random_alignment(7, 15, seed=5)
    g = torch.Generator().manual_seed(6)
    children = random_topologies(7, 37, g)  # more than one chunk of 16
    lengths = (0.05 + torch.rand(37, 11, generator=g, dtype=torch.float64)).requires_grad_()
    batched = log_likelihood(aln, children, lengths, "K80")
    batched.sum().backward()
    for b in (0, 16, 36):
        x = lengths[b].detach().clone().requires_grad_()
        one = log_likelihood(aln, children[b], x, "K80")
        one.backward()
        assert one.item() == pytest.approx(batched[b].item(), abs=1e-10)
        assert torch.allclose(x.grad, lengths.grad[b], atol=1e-10)
