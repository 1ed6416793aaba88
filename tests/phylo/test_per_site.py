"""Per-pattern terms: `pruning_log_likelihood(per_pattern=True)`, `phylo_model(per_site=True)`."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from models.phylo import (
    GTR,
    JC69,
    phylo_model,
    pruning_log_likelihood,
    random_topologies,
)
from tests.phylo.test_likelihood import _brute_force, _edges, _q, _random_alignment, _rooted_on


def test_per_pattern_terms_equal_brute_force_per_pattern():
    aln = _random_alignment(5, 8, seed=3)
    g = torch.Generator().manual_seed(4)
    children = random_topologies(5, 1, g)[0]
    lengths = 0.05 + 0.5 * torch.rand(7, generator=g, dtype=torch.float64)
    pi, exch = [0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 0.5, 0.7, 4.0, 1.5]
    gtr = GTR(exch, pi)
    t = lengths[:, None]
    trans = gtr.transition_matrices(gtr.params, t.flatten()).unflatten(0, (7, 1))
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    args = (tips, weights, children, trans, gtr.frequencies(gtr.params))
    terms = pruning_log_likelihood(*args, per_pattern=True)
    assert terms.shape == (aln.n_patterns,)
    parent = _rooted_on(_edges(children, lengths), 2, frac=0.4)
    q, tips_np = _q(np.array(exch), np.array(pi)), aln.partials().numpy()
    for p in range(aln.n_patterns):
        one_hot = np.zeros(aln.n_patterns)
        one_hot[p] = weights[p].item()
        ref = _brute_force(tips_np, one_hot, parent, q, np.array(pi), [1.0])
        assert terms[p].item() == pytest.approx(ref, rel=1e-12, abs=1e-12)
    assert terms.sum().item() == pytest.approx(pruning_log_likelihood(*args).item(), rel=1e-13)


@pytest.mark.parametrize("optimistic", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_per_pattern_gradcheck_on_every_path(optimistic, shared):
    aln = _random_alignment(6, 12, seed=7)
    g = torch.Generator().manual_seed(1)
    children = random_topologies(6, 2, g)
    topo = children[0] if shared else children
    tips, weights = aln.partials().mT.contiguous(), aln.weights
    trans = torch.rand(2, 9, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pi = torch.rand(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    cat = torch.rand(2, generator=g, dtype=torch.float64, requires_grad=True)

    def f(trans, pi, cat):
        return pruning_log_likelihood(tips, weights, topo, trans, pi, cat, rescale_every=3,
                                      optimistic=optimistic, per_pattern=True)  # fmt: skip

    assert f(trans, pi, cat).shape == (2, aln.n_patterns)
    assert torch.autograd.gradcheck(f, (trans, pi, cat))


def test_phylo_model_per_site_terms_sum_to_the_total(ds1):
    aln, trees = ds1
    kw = dict(topology=trees[0], branch_prior=dist.Exponential(10.0))
    per_site, total = phylo_model(aln, per_site=True, **kw), phylo_model(aln, **kw)
    assert torch.equal(per_site.site_weights, aln.weights)
    with pyro.plate("particles", 3, dim=-2):
        trace = pyro.poutine.trace(per_site).get_trace()
    trace.compute_log_prob()
    node = trace.nodes["alignment"]
    assert node["log_prob"].shape == (3, aln.n_patterns)
    assert sorted(f.name for f in node["cond_indep_stack"]) == ["particles", "patterns"]
    lengths = trace.nodes["branch_lengths"]["value"]  # (3, 1, 51)
    with pyro.plate("particles", 3, dim=-1):
        reference = pyro.condition(total, data={"branch_lengths": lengths[:, 0]})()
    summed = node["log_prob"].sum(-1)
    assert torch.allclose(summed, reference, rtol=1e-12, atol=0)
    assert torch.allclose(trace.nodes["_RETURN"]["value"][:, 0], reference, rtol=1e-12)
    # per-site log-likelihoods: the terms divided by the counts, each a log-probability
    per_pattern = node["log_prob"] / per_site.site_weights
    assert (per_pattern < 0).all()


def test_phylo_model_per_site_latent_topology_and_gradient():
    aln = _random_alignment(6, 40, seed=2)
    model = phylo_model(aln, substitution=JC69(), per_site=True)
    with pyro.plate("particles", 4, dim=-2):
        trace = pyro.poutine.trace(model).get_trace()
    assert trace.nodes["topology"]["value"].shape == (4, 1, 5, 2)
    trace.compute_log_prob()
    terms = trace.nodes["alignment"]["log_prob"]
    assert terms.shape == (4, aln.n_patterns)
    lengths = trace.nodes["branch_lengths"]["value"].detach().requires_grad_()
    conditioned = pyro.condition(
        model, data={"branch_lengths": lengths, "topology": trace.nodes["topology"]["value"]}
    )
    with pyro.plate("particles", 4, dim=-2):
        loglik = conditioned()
    assert torch.allclose(loglik[:, 0], terms.sum(-1), rtol=1e-12)
    loglik.sum().backward()
    assert torch.isfinite(lengths.grad).all() and lengths.grad.abs().sum() > 0


def test_phylo_model_per_site_refuses_a_particle_plate_at_the_patterns_dim():
    aln = _random_alignment(4, 10, seed=1)
    model = phylo_model(aln, per_site=True)
    with pytest.raises(ValueError, match="dim=-2 or further left"), pyro.plate("p", 3, dim=-1):
        model()
