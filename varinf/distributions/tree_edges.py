r"""Canonical child tables from edge lists: `from_edges`, `canonicalize`, `random_topologies`.

The encoding is described in `varinf.distributions.trees`, which re-exports everything here;
this module builds it: an undirected edge list (what every tree file parser produces) becomes
the canonical `(n-1, 2)` table by one depth-first walk from the last taxon's edge.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["PhyloFormatError", "all_topologies", "canonicalize", "from_edges", "random_topologies"]


class PhyloFormatError(ValueError):
    """A phylogenetic data file or value is malformed or inconsistent.

    Raised for unreadable alignments and trees, unknown characters, taxa missing from a tree
    or an alignment, duplicated taxa, non-binary trees, negative branch lengths and empty
    alignments. The message names the offending file, taxon and, where known, the line.
    Subclasses `ValueError` so callers that already catch bad values keep working.
    """


def from_edges(
    n: int, edges: Sequence[tuple[int, int]], lengths: Sequence[float] | None = None
) -> tuple[Tensor, Tensor | None]:
    r"""Canonical `(children, lengths)` of an unrooted binary tree given by its edges.

    Args:
        n: number of taxa; leaves are nodes `0 … n-1`, internal nodes any other integers.
        edges: the $2n-3$ undirected edges `(u, v)`.
        lengths: optional edge lengths, aligned with `edges`.

    Returns:
        `children` of shape `(n-1, 2)` and `lengths` of shape `(2n-3,)` (or `None`), both in
        the canonical numbering of `varinf.distributions.trees`.

    Raises:
        PhyloFormatError: not a binary unrooted tree on leaves `0 … n-1`.

    Examples:
        >>> children, lengths = from_edges(3, [(0, 3), (1, 3), (2, 3)], [0.1, 0.2, 0.3])
        >>> children.tolist(), lengths.tolist()
        ([[0, 1], [3, 2]], [0.1, 0.2, 0.3])
    """
    if n < 3:
        raise PhyloFormatError(f"an unrooted binary tree needs at least 3 taxa, got {n}")
    if len(edges) != 2 * n - 3:
        raise PhyloFormatError(
            f"a binary unrooted tree on {n} taxa has {2 * n - 3} edges, "
            f"got {len(edges)} (is it binary?)"
        )
    adj: dict[int, list[tuple[int, float]]] = {}
    for e, (u, v) in enumerate(edges):
        length = float(lengths[e]) if lengths is not None else 0.0
        adj.setdefault(u, []).append((v, length))
        adj.setdefault(v, []).append((u, length))
    for node, nbrs in adj.items():
        want = 1 if 0 <= node < n else 3
        if len(nbrs) != want:
            kind = "leaf" if want == 1 else "internal node"
            raise PhyloFormatError(f"{kind} {node} has {len(nbrs)} neighbours, expected {want}")
    missing = [leaf for leaf in range(n) if leaf not in adj]
    if missing:
        raise PhyloFormatError(f"leaf {missing[0]} is not in the tree")
    return _encode(n, adj, lengths is not None)


def _encode(n: int, adj: dict, with_lengths: bool) -> tuple[Tensor, Tensor | None]:
    top, top_len = adj[n - 1][0]
    # iterative DFS (trees of 1000+ taxa exceed Python's recursion limit)
    parent = {top: (n - 1, top_len)}
    order, stack = [], [top]
    while stack:
        node = stack.pop()
        order.append(node)
        for nbr, length in adj[node]:
            if nbr != parent[node][0]:
                if nbr in parent:
                    raise PhyloFormatError("the edges contain a cycle")
                parent[nbr] = (node, length)
                stack.append(nbr)
    if len(order) != 2 * n - 3:
        raise PhyloFormatError("the edges do not form a connected tree")
    kids: dict[int, list[int]] = {v: [] for v in order}
    for node in order[1:]:
        kids[parent[node][0]].append(node)
    min_leaf = {}
    for node in reversed(order):
        min_leaf[node] = node if node < n else min(min_leaf[c] for c in kids[node])
    for node in order:
        kids[node].sort(key=min_leaf.__getitem__)
    label: dict[int, int] = {}
    rows: list[list[int]] = []
    stack2: list[tuple[int, bool]] = [(top, False)]
    while stack2:
        node, expanded = stack2.pop()
        if node < n:
            label[node] = node
        elif expanded:
            label[node] = n + len(rows)
            rows.append([label[c] for c in kids[node]])
        else:
            stack2.append((node, True))
            stack2.extend((c, False) for c in reversed(kids[node]))
    rows.append([2 * n - 3, n - 1])
    children = torch.tensor(rows, dtype=torch.long)
    if not with_lengths:
        return children, None
    out = torch.zeros(2 * n - 3, dtype=torch.float64)
    for node, (_, length) in parent.items():
        if node != top:
            out[label[node]] = length
    out[n - 1] = top_len
    return children, out


def _edges_of(children: Tensor) -> list[tuple[int, int]]:
    """Undirected edges of a rooted table, with the degree-2 root suppressed."""
    rows = children.tolist()
    m = len(rows) + 1
    edges = [(c, m + j) for j, row in enumerate(rows[:-1]) for c in row]
    edges.append((rows[-1][0], rows[-1][1]))
    return edges


def canonicalize(children: Tensor, lengths: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
    r"""Canonical form of a batch of rooted binary trees, read as unrooted topologies.

    Args:
        children: `(..., n-1, 2)` child table of any rooted binary tree on leaves `0 … n-1`
            with internal nodes `n … 2n-2` numbered children-before-parents (the root, $2n-2$,
            may sit on any edge).
        lengths: optional `(..., 2n-2)` lengths of the edges above nodes `0 … 2n-3` (the two
            root edges are merged into one).

    Returns:
        The canonical `children` (same shape), or the pair `(children, lengths)` with
        `(..., 2n-3)` lengths if lengths were given. Loops over the batch in Python: meant
        for I/O, not for inner loops.

    Examples:
        >>> canonicalize(torch.tensor([[1, 2], [3, 0]])).tolist()
        [[0, 1], [3, 2]]
    """
    n = children.shape[-2] + 1
    flat = children.reshape(-1, n - 1, 2).cpu()
    flat_len = None if lengths is None else lengths.reshape(-1, 2 * n - 2).detach().cpu()
    out_c, out_l = [], []
    for b in range(flat.shape[0]):
        edges = _edges_of(flat[b])
        lens = None
        if flat_len is not None:
            lens = [float(flat_len[b, c]) for c, _ in edges[:-1]]
            r0, r1 = flat[b, -1].tolist()
            lens.append(float(flat_len[b, r0] + flat_len[b, r1]))
        c, ln = from_edges(n, edges, lens)
        out_c.append(c)
        out_l.append(ln)
    canon = torch.stack(out_c).reshape(children.shape).to(children.device)
    if lengths is None:
        return canon
    new_len = torch.stack(out_l).to(lengths).reshape(*lengths.shape[:-1], 2 * n - 3)
    return canon, new_len


def random_topologies(n: int, num: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Draw `num` canonical topologies `(num, n-1, 2)` uniformly from the $(2n-5)!!$ ones.

    Random stepwise addition: taxon $i$ (for $i = 3 \dots n-1$) is attached to one of the
    $2i-3$ edges of the current tree, chosen uniformly; each topology arises from exactly one
    sequence of choices, so the draw is exactly uniform.

    Examples:
        >>> random_topologies(6, 2, torch.Generator().manual_seed(0)).shape
        torch.Size([2, 5, 2])
    """
    if n < 3:
        raise ValueError(f"n must be at least 3, got {n}")
    picks = [torch.randint(0, 2 * i - 3, (num,), generator=generator) for i in range(3, n)]
    picks_t = torch.stack(picks, -1).tolist() if picks else [[] for _ in range(num)]
    return torch.stack([_stepwise_addition(n, choice) for choice in picks_t])


def all_topologies(n: int) -> Tensor:
    r"""Every canonical unrooted topology on `n` taxa, `((2n-5)!!, n-1, 2)`: stepwise
    addition over all sequences of edge choices (for enumeration on small `n`).

    Examples:
        >>> all_topologies(5).shape
        torch.Size([15, 4, 2])
    """
    if n < 3:
        raise ValueError(f"n must be at least 3, got {n}")
    choices = itertools.product(*[range(2 * i - 3) for i in range(3, n)])
    return torch.stack([_stepwise_addition(n, choice) for choice in choices])


def _stepwise_addition(n: int, choice) -> Tensor:
    """The topology made by attaching taxon `i` to edge `choice[i-3]` of the tree so far."""
    edges = [(0, n), (1, n), (2, n)]
    for i, e in zip(range(3, n), choice, strict=True):
        u, v = edges[e]
        w = n + i - 2
        edges[e] = (u, w)
        edges.extend([(w, v), (w, i)])
    return from_edges(n, edges)[0]
