r"""Tree topologies as tensors.

An unrooted binary tree on :math:`n \ge 3` taxa is stored as a rooted binary tree with
:math:`2n-1` nodes, rooted the same way for every tree: on the pendant edge of the last taxon
:math:`n-1`, right at its inner end. Nodes are numbered so that children come before parents:
leaves ``0 … n-1`` (taxon ``i`` is leaf ``i``), internal nodes ``n … 2n-3`` in postorder, and
the root ``2n-2`` whose children are always ``(2n-3, n-1)``. A topology is then the
``(n-1, 2)`` long tensor ``children`` whose row ``j`` holds the two children of node ``n+j``;
a batch of ``B`` topologies is ``(B, n-1, 2)``. Row order is a postorder schedule for pruning
and reversed row order a preorder schedule.

Branch lengths of the :math:`2n-3` edges are indexed by the lower node: ``lengths[k]`` is the
edge above node ``k`` for ``k = 0 … 2n-4``; the edge between ``2n-3`` and the root has length
zero, so leaf ``n-1``'s pendant edge is ``lengths[n-1]`` in full.

**Canonical form.** Each internal node lists its child whose clade holds the smaller taxon
first, and internal nodes are numbered in the postorder that this order induces. Two unrooted
topologies are equal if and only if their canonical ``children`` tensors are equal. Clades are
boolean ``(…, 2n-1, n)`` masks (no integer bitmasks, so any number of taxa works).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import PhyloFormatError

__all__ = [
    "from_edges",
    "canonicalize",
    "clades",
    "parents",
    "to_newick",
    "random_topologies",
    "num_topologies_log",
]


def from_edges(
    n: int, edges: Sequence[tuple[int, int]], lengths: Sequence[float] | None = None
) -> tuple[Tensor, Tensor | None]:
    r"""Canonical ``(children, lengths)`` of an unrooted binary tree given by its edges.

    Args:
        n: number of taxa; leaves are nodes ``0 … n-1``, internal nodes any other integers.
        edges: the :math:`2n-3` undirected edges ``(u, v)``.
        lengths: optional edge lengths, aligned with ``edges``.

    Returns:
        ``children`` of shape ``(n-1, 2)`` and ``lengths`` of shape ``(2n-3,)`` (or ``None``),
        both in the canonical numbering described in the module docstring.

    Raises:
        PhyloFormatError: not a binary unrooted tree on leaves ``0 … n-1``.
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
    if any(leaf not in adj for leaf in range(n)):
        missing = next(leaf for leaf in range(n) if leaf not in adj)
        raise PhyloFormatError(f"leaf {missing} is not in the tree")
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
    root_kids = rows[-1]
    edges = [(c, m + j) for j, row in enumerate(rows[:-1]) for c in row]
    edges.append((root_kids[0], root_kids[1]))
    return edges


def canonicalize(children: Tensor, lengths: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
    r"""Canonical form of a batch of rooted binary trees, read as unrooted topologies.

    Args:
        children: ``(..., n-1, 2)`` child table of any rooted binary tree on leaves
            ``0 … n-1`` with internal nodes ``n … 2n-2`` numbered children-before-parents
            (the root, ``2n-2``, may sit on any edge).
        lengths: optional ``(..., 2n-2)`` lengths of the edges above nodes ``0 … 2n-3``
            (the two root edges are merged into one).

    Returns:
        The canonical ``children`` (same shape), or the pair ``(children, lengths)`` with
        ``(..., 2n-3)`` lengths if lengths were given. Loops over the batch in Python: meant
        for I/O, not for inner loops.
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


def parents(children: Tensor) -> Tensor:
    """Parent of every node, shape ``(..., 2n-1)``; the root's parent is ``-1``."""
    n = children.shape[-2] + 1
    batch = children.shape[:-2]
    out = torch.full((*batch, 2 * n - 1), -1, dtype=torch.long, device=children.device)
    src = torch.arange(n, 2 * n - 1, device=children.device)
    src = src[:, None].expand(n - 1, 2).expand(*batch, n - 1, 2)
    return out.scatter(-1, children.reshape(*batch, -1), src.reshape(*batch, -1))


def clades(children: Tensor) -> Tensor:
    r"""Boolean clade masks ``(..., 2n-1, n)``: ``[k, i]`` says taxon ``i`` is below node ``k``.

    The masks of nodes ``0 … 2n-4`` are the splits of the unrooted tree, each given by the side
    that does not contain taxon ``n-1``.
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


def to_newick(
    children: Tensor, lengths: Tensor | None = None, taxa: Sequence[str] | None = None
) -> str:
    """Newick string of one topology (unrooted: a trifurcation at node ``2n-3``)."""
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


def random_topologies(n: int, num: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Draw ``num`` topologies uniformly from the :math:`(2n-5)!!` unrooted ones.

    Random stepwise addition: taxon :math:`i` (for :math:`i = 3 … n-1`) is attached to one of
    the :math:`2i-3` edges of the current tree, chosen uniformly; each topology arises from
    exactly one sequence of choices, so the draw is exactly uniform. Returns ``(num, n-1, 2)``.
    """
    if n < 3:
        raise ValueError(f"n must be at least 3, got {n}")
    picks = [torch.randint(0, 2 * i - 3, (num,), generator=generator) for i in range(3, n)]
    picks_t = torch.stack(picks, -1).tolist() if picks else [[] for _ in range(num)]
    out = []
    for choice in picks_t:
        edges = [(0, n), (1, n), (2, n)]
        for i, e in zip(range(3, n), choice, strict=True):
            u, v = edges[e]
            w = n + i - 2
            edges[e] = (u, w)
            edges.extend([(w, v), (w, i)])
        out.append(from_edges(n, edges)[0])
    return torch.stack(out)


def num_topologies_log(n: int) -> float:
    r""":math:`\log (2n-5)!!`, the log number of unrooted binary topologies on ``n`` taxa."""
    return float(torch.log(torch.arange(1, 2 * n - 4, 2, dtype=torch.float64)).sum())
