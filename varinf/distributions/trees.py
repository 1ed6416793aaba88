r"""Unrooted binary tree topologies as tensors, and the uniform distribution over them.

An unrooted binary tree on $n \ge 3$ taxa is stored as a rooted binary tree with $2n-1$ nodes,
rooted the same way for every tree: on the pendant edge of the last taxon $n-1$, right at its
inner end. Nodes are numbered so that children come before parents: leaves $0 \dots n-1$ (taxon
$i$ is leaf $i$), internal nodes $n \dots 2n-3$ in postorder, and the root $2n-2$ whose children
are always $(2n-3, n-1)$. A topology is then the `(n-1, 2)` long tensor `children` whose row
$j$ holds the two children of node $n+j$; a batch of $B$ topologies is `(B, n-1, 2)`. Row
order is a postorder schedule for pruning and reversed row order a preorder schedule.

Branch lengths of the $2n-3$ edges are indexed by the lower node: `lengths[k]` is the edge
above node $k$ for $k = 0 \dots 2n-4$; the edge between $2n-3$ and the root has length zero,
so leaf $n-1$'s pendant edge is `lengths[n-1]` in full.

**Canonical form.** Each internal node lists first its child whose clade holds the smaller
taxon, and internal nodes are numbered in the postorder that this order induces. Two unrooted
topologies are equal if and only if their canonical `children` tensors are equal.

**Clades** have two encodings, each where it is the right tool: boolean `(..., 2n-1, n)`
masks (`clades`), batched tensors for tensor code, and Python-int bitmasks (`clade_keys`),
hashable dictionary keys for per-clade caches and counts (Python ints have no width limit, so
neither encoding limits the number of taxa).

Nothing here imports a likelihood: the subsplit Bayesian network and `models.phylo` both
build on this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from varinf.distributions.tree_edges import (
    PhyloFormatError,
    all_topologies,
    canonicalize,
    from_edges,
    random_topologies,
)

__all__ = [
    "PhyloFormatError",
    "UniformTopology",
    "canonicalize",
    "clade_keys",
    "clades",
    "from_edges",
    "num_topologies_log",
    "parents",
    "all_topologies",
    "random_topologies",
    "to_newick",
    "topology_constraint",
]


def parents(children: Tensor) -> Tensor:
    r"""Parent of every node, shape `(..., 2n-1)`; the root's parent is $-1$.

    Examples:
        >>> parents(torch.tensor([[0, 1], [3, 2]])).tolist()
        [3, 3, 4, 4, -1]
    """
    n = children.shape[-2] + 1
    batch = children.shape[:-2]
    out = torch.full((*batch, 2 * n - 1), -1, dtype=torch.long, device=children.device)
    src = torch.arange(n, 2 * n - 1, device=children.device)
    src = src[:, None].expand(n - 1, 2).expand(*batch, n - 1, 2)
    return out.scatter(-1, children.reshape(*batch, -1), src.reshape(*batch, -1))


def clades(children: Tensor) -> Tensor:
    r"""Boolean clade masks `(..., 2n-1, n)`: `[k, i]` says taxon $i$ is below node $k$.

    The masks of nodes `0 … 2n-4` are the splits of the unrooted tree, each given by the side
    that does not contain taxon $n-1$.

    Examples:
        >>> clades(torch.tensor([[0, 1], [3, 2]]))[3].tolist()
        [True, True, False]
    """
    n = children.shape[-2] + 1
    batch = children.shape[:-2]
    masks = torch.zeros(*batch, 2 * n - 1, n, dtype=torch.bool, device=children.device)
    masks[..., torch.arange(n), torch.arange(n)] = True
    for j in range(n - 1):
        for side in range(2):
            idx = children[..., j, side, None, None].expand(*batch, 1, n)
            masks[..., n + j, :] |= masks.gather(-2, idx)[..., 0, :]
    return masks


def clade_keys(n: int, rows: Sequence[Sequence[int]]) -> list[int]:
    r"""Clades of one topology as Python-int bitmasks: bit $i$ of entry $k$ is taxon $i$.

    Args:
        n: number of taxa.
        rows: the topology's `(n-1, 2)` child table as nested lists (`children.tolist()`).

    Returns:
        $2n-1$ ints, hashable keys for per-clade tables (see the module docstring).

    Examples:
        >>> clade_keys(3, [[0, 1], [3, 2]])
        [1, 2, 4, 3, 7]
    """
    keys = [1 << c for c in range(n)] + [0] * (n - 1)
    for j, (a, b) in enumerate(rows):
        keys[n + j] = keys[a] | keys[b]
    return keys


def to_newick(
    children: Tensor, lengths: Tensor | None = None, taxa: Sequence[str] | None = None
) -> str:
    """Newick string of one topology (unrooted: a trifurcation at node `2n-3`).

    Examples:
        >>> to_newick(torch.tensor([[0, 1], [4, 2], [5, 3]]), taxa="abcd")
        '((a,b),c,d);'
    """
    rows = children.tolist()
    n = len(rows) + 1
    names = list(taxa) if taxa is not None else [str(i) for i in range(n)]
    bl = None if lengths is None else lengths.tolist()
    text = {i: names[i] for i in range(n)}
    for j, (a, b) in enumerate(rows[:-1]):
        text[n + j] = f"({_with_len(text, a, bl)},{_with_len(text, b, bl)})"
    inner = text[2 * n - 3][1:-1]
    return f"({inner},{_with_len(text, n - 1, bl)});"


def _with_len(text: dict, node: int, bl: list | None) -> str:
    return text[node] if bl is None else f"{text[node]}:{bl[node]:.17g}"


def num_topologies_log(n: int) -> float:
    r"""$\log (2n-5)!!$, the log number of unrooted binary topologies on $n$ taxa.

    Examples:
        >>> round(num_topologies_log(5), 6) == round(float(torch.tensor(15.0).log()), 6)
        True
    """
    return float(torch.log(torch.arange(1, 2 * n - 4, 2, dtype=torch.float64)).sum())


class _TopologyConstraint(constraints.Constraint):
    """Valid child tables: each node below the root is a child exactly once, of a later node."""

    is_discrete = True
    event_dim = 2

    def __init__(self, n_taxa: int) -> None:
        self.n_taxa = n_taxa
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        n = self.n_taxa
        if value.shape[-2:] != (n - 1, 2):
            return torch.zeros(value.shape[:-2], dtype=torch.bool, device=value.device)
        later = torch.arange(n, 2 * n - 1, device=value.device)[:, None]
        in_range = ((value >= 0) & (value < later)).all(-1).all(-1)
        counts = torch.zeros(*value.shape[:-2], 2 * n - 1, dtype=torch.long, device=value.device)
        counts.scatter_add_(
            -1, value.clamp(0, 2 * n - 2).flatten(-2), torch.ones_like(value).flatten(-2)
        )
        once = (counts[..., :-1] == 1).all(-1)
        last = (value[..., -1, 0] == 2 * n - 3) & (value[..., -1, 1] == n - 1)
        return in_range & once & last


def topology_constraint(n_taxa: int) -> constraints.Constraint:
    """The support of `UniformTopology`: valid `(n-1, 2)` child tables on `n_taxa` taxa.

    Examples:
        >>> bool(topology_constraint(3).check(torch.tensor([[0, 1], [3, 2]])))
        True
    """
    return _TopologyConstraint(n_taxa)


class UniformTopology(TorchDistribution):
    r"""Uniform distribution over the $(2n-5)!!$ unrooted binary topologies on $n$ taxa.

    Samples are canonical `(n-1, 2)` long child tables (module docstring), drawn by random
    stepwise addition (exactly uniform). $\log p(\tau) = -\log (2n-5)!!$ for every valid
    table; the density is with respect to counting measure on canonical tables.

    Args:
        n_taxa: number of taxa $n \ge 3$.
        batch_shape (tuple[int, ...]): batch shape of independent topologies.
        validate_args (bool | None): check `log_prob`'s values against the support.

    Examples:
        >>> d = UniformTopology(5)
        >>> d.sample((2,)).shape
        torch.Size([2, 4, 2])
        >>> round(float(d.log_prob(d.sample()).exp() * 15), 6)
        1.0
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, n_taxa: int, batch_shape=(), validate_args=None) -> None:
        if int(n_taxa) < 3:
            raise ValueError(f"n_taxa must be at least 3, got {n_taxa}")
        self.n_taxa = int(n_taxa)
        super().__init__(torch.Size(batch_shape), torch.Size([n_taxa - 1, 2]), validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=2)
    def support(self):
        return _TopologyConstraint(self.n_taxa)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(UniformTopology, _instance)
        new.n_taxa = self.n_taxa
        super(UniformTopology, new).__init__(
            torch.Size(batch_shape), self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        trees = random_topologies(self.n_taxa, max(shape.numel(), 1))
        return trees[: shape.numel()].reshape(*shape, *self.event_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape[:-2], self.batch_shape)
        return torch.full(shape, -num_topologies_log(self.n_taxa), device=value.device)
