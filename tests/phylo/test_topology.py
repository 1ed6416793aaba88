import math
from collections import Counter

import pytest
import torch

from models.phylo import (
    PhyloFormatError,
    canonicalize,
    clades,
    from_edges,
    parents,
    random_topologies,
    to_newick,
)
from models.phylo.topology import num_topologies_log


def _relabel_internal(children: torch.Tensor, generator) -> torch.Tensor:
    """The same rooted tree with its children swapped at random (a non-canonical table)."""
    swap = torch.rand(children.shape[:-1], generator=generator) < 0.5
    return torch.where(swap[..., None], children.flip(-1), children)


def test_canonical_form_is_invariant():
    g = torch.Generator().manual_seed(0)
    trees = random_topologies(9, 50, g)
    assert torch.equal(canonicalize(_relabel_internal(trees, g)), trees)
    assert torch.equal(canonicalize(trees), trees)
    assert (trees[..., -1, :] == torch.tensor([15, 8])).all()
    # children precede parents
    assert (trees < torch.arange(9, 17)[:, None]).all()


def test_reroot_anywhere_gives_same_canonical_form():
    # ((0,1),(2,3),4) rooted on the edge above leaf 2 instead of at leaf 4
    edges = [(0, 5), (1, 5), (5, 6), (2, 7), (3, 7), (7, 6), (4, 6)]
    lengths = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    canon, canon_len = from_edges(5, edges, lengths)
    # the same tree rooted on leaf 2's edge (0.4 = 0.1 + 0.3): 5=(0,1) 6=(4,5) 7=(3,6) 8=(2,7)
    rooted = torch.tensor([[0, 1], [4, 5], [3, 6], [2, 7]])
    rooted_len = torch.tensor([0.1, 0.2, 0.1, 0.5, 0.7, 0.3, 0.6, 0.3], dtype=torch.float64)
    got, got_len = canonicalize(rooted, rooted_len)
    assert torch.equal(got, canon)
    assert torch.allclose(got_len, canon_len)


def test_newick_and_clades():
    children, lengths = from_edges(4, [(0, 4), (1, 4), (4, 5), (2, 5), (3, 5)], [1, 2, 3, 4, 5])
    assert to_newick(children) == "((0,1),2,3);"
    assert to_newick(children, lengths, "abcd") == "((a:1,b:2):3,c:4,d:5);"
    masks = clades(children)
    assert masks[4].tolist() == [True, True, False, False]
    assert masks[6].all()
    assert parents(children).tolist() == [4, 4, 5, 6, 5, 6, -1]


@pytest.mark.parametrize("n", [3, 4, 5])
def test_uniform_topologies_chi_square(n):
    count = math.exp(num_topologies_log(n))
    draws = 300 * round(count)
    trees = random_topologies(n, draws, torch.Generator().manual_seed(n))
    freq = Counter(tuple(t.flatten().tolist()) for t in trees)
    assert len(freq) == round(count)
    expected = draws / count
    chi2 = sum((f - expected) ** 2 / expected for f in freq.values())
    # 99.9% quantile of chi-square with 14 dof is 36.1 (false failure rate 1e-3)
    assert chi2 < {3: 1e-9, 4: 13.8, 5: 36.1}[n]


def test_many_taxa_no_bitmask_limit():
    trees = random_topologies(130, 2, torch.Generator().manual_seed(1))
    masks = clades(trees)
    assert masks.shape == (2, 259, 130)
    assert masks[:, -1].all() and masks[:, -2].sum(-1).tolist() == [129, 129]
    assert torch.equal(canonicalize(_relabel_internal(trees, torch.Generator())), trees)


def test_bad_edges():
    with pytest.raises(PhyloFormatError, match="is it binary"):
        from_edges(4, [(0, 4), (1, 4), (2, 4), (3, 4)])
    with pytest.raises(PhyloFormatError, match="internal node 5 has 2 neighbours"):
        from_edges(4, [(0, 4), (1, 4), (4, 5), (5, 6), (2, 6)])
