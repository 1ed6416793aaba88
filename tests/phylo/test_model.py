import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from models.phylo import (
    GTR,
    PhyloFormatError,
    UniformTopology,
    log_likelihood,
    phylo_model,
    random_topologies,
    read_trees,
)
from models.phylo.topology import num_topologies_log


def test_fixed_topology_model_vectorised(ds1):
    aln, trees = ds1
    model = phylo_model(aln, topology=trees[0], substitution="JC69",
                        branch_prior=dist.Exponential(10.0))  # fmt: skip
    with pyro.plate("particles", 5, dim=-1):
        trace = pyro.poutine.trace(model).get_trace()
    lengths = trace.nodes["branch_lengths"]["value"]
    assert lengths.shape == (5, 51)
    trace.compute_log_prob()
    factor = trace.nodes["alignment"]["log_prob"]
    assert factor.shape == (5,)
    expected = log_likelihood(aln, trees[0].children, lengths.double())
    assert torch.allclose(factor.double(), expected)
    # at the file's branch lengths: the DS1 reference value
    conditioned = pyro.condition(model, data={"branch_lengths": trees[0].lengths})
    assert conditioned().item() == pytest.approx(-6884.9702, abs=1e-4)


def test_latent_topology_and_nested_plates(ds1):
    aln, _ = ds1
    model = phylo_model(aln)
    with pyro.plate("outer", 2, dim=-2), pyro.plate("particles", 3, dim=-1):
        trace = pyro.poutine.trace(model).get_trace()
    trace.compute_log_prob()
    topo = trace.nodes["topology"]
    assert topo["value"].shape == (2, 3, 26, 2)
    assert torch.allclose(topo["log_prob"], torch.full((2, 3), -num_topologies_log(27)))
    loglik = trace.nodes["_RETURN"]["value"]
    assert loglik.shape == (2, 3)
    expected = log_likelihood(aln, topo["value"][1, 2],
                              trace.nodes["branch_lengths"]["value"][1, 2].double())  # fmt: skip
    assert loglik[1, 2].item() == pytest.approx(expected.item(), rel=1e-12)


def test_uniform_topology_normalised_and_validated():
    d = UniformTopology(5)
    all_trees = torch.unique(random_topologies(5, 2000, torch.Generator().manual_seed(0)), dim=0)
    assert len(all_trees) == 15
    assert torch.logsumexp(d.log_prob(all_trees), 0).abs() < 1e-6
    assert d.expand((4,)).sample().shape == (4, 4, 2)
    bad = all_trees[0].clone()
    bad[0, 0] = 7
    assert not d.support.check(bad)
    with pytest.raises(ValueError):
        UniformTopology(5, validate_args=True).log_prob(bad)


def test_latent_gtr_parameters_train_with_svi():
    from models.phylo import Alignment

    aln = Alignment.from_sequences(["a", "b", "c", "d"], ["ACGTAC", "ACGAAC", "TCGAAT", "TCGGAT"])
    tree = read_trees_string("((a,b),c,d);", aln.taxa)
    gtr = GTR(rates=dist.Dirichlet(torch.ones(6, dtype=torch.float64)),
              freqs=dist.Dirichlet(torch.ones(4, dtype=torch.float64)))  # fmt: skip
    model = phylo_model(aln, topology=tree, substitution=gtr,
                        gamma_shape=dist.LogNormal(0.0, 1.0))  # fmt: skip
    guide = AutoNormal(model)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=0)
    loss = elbo.differentiable_loss(model, guide)
    loss.backward()
    store = pyro.get_param_store()
    grads = [store[name].unconstrained().grad for name in store.keys()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def read_trees_string(newick, taxa):
    from models.phylo import parse_newick

    return parse_newick(newick, taxa)


def test_bad_topology_arguments(ds1, data_dir):
    aln, trees = ds1
    other = read_trees(data_dir / "bito_ds1" / "DS1.100_topologies.nwk")[0]
    with pytest.raises(PhyloFormatError, match="taxa differ"):
        phylo_model(aln, topology=other)
    with pytest.raises(ValueError, match="valid \\(26, 2\\) child table"):
        phylo_model(aln, topology=torch.zeros(26, 2, dtype=torch.long))
